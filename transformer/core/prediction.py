"""One text's answer, its cache key and its cache value.

Keys: `prefix:fingerprint:how:sha256(normalized text)`, where `how` names everything besides the
model that changes the answer (window length, and for `chunk` the stride and aggregation), so a
model change or another windowing never reads an old entry. Values: a one-byte format tag, the
text's token and window counts (so `details` and `truncation=error` work on cache hits), then the
scores and then the raw logits, each as little-endian float32. The cache holds this one value per
text: `top_k` and `raw_scores` are views of it, so they are not in the key. Anything else read back
is a miss.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import orjson

VALUE_FORMAT = 3
_HEADER = struct.Struct("<BII")


def answer_mode(truncation: str, max_length: int, stride: int, aggregation: str) -> str:
    """The key segment that names how a text was read: its window length, and for `chunk` the
    stride and aggregation. `error` answers exactly what `head` answers, so it shares its entries."""
    if truncation == "chunk":
        return f"c{max_length}.{stride}.{aggregation}"
    return f"h{max_length}"


def cache_key(prefix: str, fingerprint: str, how: str, normalized_text: str) -> str:
    digest = hashlib.sha256(normalized_text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{prefix}:{fingerprint[:16]}:{how}:{digest}"


@dataclass(frozen=True, slots=True)
class Prediction:
    """One text's result, decoded once: scores in id2label order (probabilities after the model's
    score function; raw values for regression), the raw logits they came from, the full ranked
    answer already serialized (an orjson Fragment: responses embed it without re-encoding), and the
    text's size."""

    probabilities: tuple[float, ...]
    ranked_json: orjson.Fragment
    tokens: int = 0
    windows: int = 1
    raw: tuple[float, ...] = ()

    @classmethod
    def of(cls, probabilities: Iterable[float], labels: Sequence[str], tokens: int = 0, windows: int = 1,
           raw: Iterable[float] = ()) -> "Prediction":
        values = tuple(float(p) for p in probabilities)
        # Copied: orjson's own result keeps a ~4 KB allocation alive per object (measured).
        fragment = orjson.Fragment(bytes(memoryview(orjson.dumps(_ranked(values, labels, None)))))
        return cls(values, fragment, tokens, windows, tuple(float(v) for v in raw))

    @property
    def best(self) -> int:
        return max(range(len(self.probabilities)), key=self.probabilities.__getitem__)

    def view(self, labels: Sequence[str], top_k: int | None, raw_scores: bool) -> orjson.Fragment | list[dict]:
        """The ranked answer a request asked for: the best `top_k` (all when None; more than there
        are labels means all, as the Hugging Face pipeline clamps), scored by probability or, with
        `raw_scores`, by the model's raw logit."""
        if top_k is None and not raw_scores:
            return self.ranked_json
        return _ranked(self.scores(raw_scores), labels, top_k)

    def scores(self, raw_scores: bool) -> tuple[float, ...]:
        return self.raw if raw_scores else self.probabilities


def _ranked(values: Sequence[float], labels: Sequence[str], top_k: int | None) -> list[dict]:
    order = sorted(range(len(labels)), key=lambda i: -values[i])
    return [{"label": labels[i], "score": values[i]} for i in order[:top_k]]


def encode_value(prediction: Prediction) -> bytes:
    if len(prediction.raw) != len(prediction.probabilities):
        raise ValueError("a cached prediction needs its raw logits (raw_scores is a view of them)")
    return _HEADER.pack(VALUE_FORMAT, prediction.tokens, prediction.windows) + np.asarray(
        prediction.probabilities + prediction.raw, dtype="<f4").tobytes()


def plausible_scores(values: np.ndarray, function: str) -> bool:
    """Whether `values` can be what `function` produces: softmax sums to 1, sigmoids lie in [0, 1]."""
    if not np.all(np.isfinite(values)):
        return False
    if function == "softmax":
        return bool(np.all(values >= 0)) and abs(float(values.sum()) - 1.0) <= 1e-3
    if function == "sigmoid":
        return bool(np.all((values >= 0) & (values <= 1)))
    return True


def decode_value(raw: bytes | None, labels: Sequence[str], function: str = "softmax") -> Prediction | None:
    """The prediction, or None when the value is absent, foreign or corrupt."""
    count = len(labels)
    if raw is None or len(raw) != _HEADER.size + 8 * count or raw[0] != VALUE_FORMAT:
        return None
    _format, tokens, windows = _HEADER.unpack_from(raw)
    values = np.frombuffer(raw, dtype="<f4", offset=_HEADER.size)
    scores, logits = values[:count], values[count:]
    if windows < 1 or not plausible_scores(scores, function) or not np.all(np.isfinite(logits)):
        return None
    return Prediction.of(scores, labels, tokens, windows, logits)
