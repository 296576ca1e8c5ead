"""One text's answer, its cache key and its cache value.

Keys: `prefix:fingerprint:how:sha256(normalized text)`, where `how` names everything besides the
model that changes the answer (window length, and for `chunk` the stride and aggregation), so a
model change or another windowing never reads an old entry. Values: a one-byte format tag, the
text's token and window counts (so `details` and `truncation=error` work on cache hits), then the
probabilities as little-endian float32. Anything else read back is a miss.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import orjson

VALUE_FORMAT = 2
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
    """One text's result, decoded once: probabilities in id2label order, the ranked answer already
    serialized (an orjson Fragment: responses embed it without re-encoding), and its size."""

    probabilities: tuple[float, ...]
    ranked_json: orjson.Fragment
    tokens: int = 0
    windows: int = 1

    @classmethod
    def of(cls, probabilities: Iterable[float], labels: Sequence[str], tokens: int = 0,
           windows: int = 1) -> "Prediction":
        values = tuple(float(p) for p in probabilities)
        order = sorted(range(len(labels)), key=lambda i: -values[i])
        ranked = [{"label": labels[i], "score": values[i]} for i in order]
        # Copied: orjson's own result keeps a ~4 KB allocation alive per object (measured).
        return cls(values, orjson.Fragment(bytes(memoryview(orjson.dumps(ranked)))), tokens, windows)

    @property
    def best(self) -> int:
        return max(range(len(self.probabilities)), key=self.probabilities.__getitem__)


def encode_value(prediction: Prediction) -> bytes:
    return _HEADER.pack(VALUE_FORMAT, prediction.tokens, prediction.windows) + np.asarray(
        prediction.probabilities, dtype="<f4").tobytes()


def decode_value(raw: bytes | None, labels: Sequence[str]) -> Prediction | None:
    """The prediction, or None when the value is absent, foreign or corrupt."""
    if raw is None or len(raw) != _HEADER.size + 4 * len(labels) or raw[0] != VALUE_FORMAT:
        return None
    _format, tokens, windows = _HEADER.unpack_from(raw)
    values = np.frombuffer(raw, dtype="<f4", offset=_HEADER.size)
    if windows < 1 or not np.all(np.isfinite(values)) or np.any(values < 0) or abs(float(values.sum()) - 1.0) > 1e-3:
        return None
    return Prediction.of(values, labels, tokens, windows)
