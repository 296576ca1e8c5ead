"""A model's lexical head: a linear model over the word-piece n-grams of a whole text, combined with
the network's answer.

The network reads 128-token windows and a long review is the mean of its windows; a linear model
over the n-grams of the whole text sees every word of it at once and is trained, in seconds, on far
more text than the network's budget allows (all 48,000 training reviews rather than the last window
of 1,500). Their combination is fitted by the export on the served variant's dev answers, one for
texts read in one window and one for documents. The head works on the token ids the transformer
already has (no second tokenizer), in numpy; it ships beside `tokenizer.json` (`LEXICAL_FILE`), in
the checkpoint (the n-gram weights, from training) and in the bundle (with the combination).
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Encoding

LEXICAL_FILE = "lexical_head.npz"


def content_ids(windows: Sequence[Encoding], new_tokens: Sequence[int]) -> np.ndarray:
    """A text's token ids once each, without special tokens: each window's last `new_tokens` text
    tokens (a window after the first repeats its predecessor's last `stride` tokens)."""
    parts = []
    for window, new in zip(windows, new_tokens):
        ids = np.asarray(window.ids, dtype=np.int64)
        content = ids[np.asarray(window.special_tokens_mask, dtype=bool) == 0]
        parts.append(content[len(content) - new:] if new else content[:0])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def ngram_features(ids: np.ndarray, vocab_size: int, buckets: int, max_n: int) -> tuple[np.ndarray, np.ndarray]:
    """(feature indices, counts) of `ids`: each token id itself (below `vocab_size`), and every run of
    2..`max_n` consecutive ids hashed into `buckets` features after them."""
    ids = np.asarray(ids, dtype=np.int64)
    grams = [ids]
    code = ids
    for n in range(2, max_n + 1):
        if len(ids) < n:
            break
        code = (code[:-1] * vocab_size + ids[n - 1:]) % buckets  # (a*V^2 + b*V + c) mod H, kept in int64
        grams.append(vocab_size + code)
    return np.unique(np.concatenate(grams), return_counts=True)


def unfit_for(score_function: str, labels: int) -> str | None:
    """Why a lexical head cannot combine with a model's answers (None: it can): it adds to the log-odds
    of two softmax scores."""
    if score_function == "softmax" and labels == 2:
        return None
    return f"a lexical head combines with two softmax scores; this model answers {labels} {score_function} scores"


@dataclass(frozen=True)
class Combination:
    """How the head's margin and the network's answer make one answer, for one kind of text:
    logit(positive) = network * (log-odds of the network's calibrated answer) + lexical * margin + bias."""

    network: float
    lexical: float
    bias: float

    def as_array(self) -> np.ndarray:
        return np.array([self.network, self.lexical, self.bias], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class LexicalHead:
    """Sublinear tf-idf of a text's n-grams, L2-normalized, times `weights`, plus `intercept`: the
    margin of the second label over the first (two-label models only). `texts` and `documents` say
    how it combines with the network's answer to a text read in one window and in several (None: not
    at all; a checkpoint's head has neither, the export fits them)."""

    vocab_size: int
    buckets: int
    max_n: int
    idf: np.ndarray       # float32 [vocab_size + buckets]
    weights: np.ndarray   # float32 [vocab_size + buckets]
    intercept: float
    texts: Combination | None = None
    documents: Combination | None = None

    def __post_init__(self) -> None:
        features = self.vocab_size + self.buckets
        if self.idf.shape != (features,) or self.weights.shape != (features,) or self.max_n < 1:
            raise ValueError(f"a lexical head of {self.vocab_size} ids and {self.buckets} buckets needs idf and "
                             f"weights of {features} values and max_n >= 1")

    def features(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(indices, values) of `ids`' normalized tf-idf vector (values float32)."""
        indices, counts = ngram_features(ids, self.vocab_size, self.buckets, self.max_n)
        values = (1.0 + np.log(counts)) * self.idf[indices]
        norm = float(np.sqrt(np.dot(values, values)))
        return indices, (values / norm if norm > 0 else values).astype(np.float32)

    def margin(self, ids: np.ndarray) -> float:
        """The head's own log-odds of the second label for a text of token `ids`."""
        indices, values = self.features(ids)
        return float(np.dot(values.astype(np.float64), self.weights[indices])) + self.intercept

    def combination(self, documents: bool) -> Combination | None:
        """How the head combines with the answer to a text read in one window, or in several (None:
        the network's answer stands)."""
        return self.documents if documents else self.texts

    @property
    def combines(self) -> bool:
        return self.texts is not None or self.documents is not None

    def combine(self, scores: np.ndarray, ids: np.ndarray, documents: bool) -> np.ndarray:
        """The two softmax scores of the network's answer to a text, combined with the head's margin
        for its `ids` (`documents`: it was read in several windows)."""
        if self.combination(documents) is None:
            return scores
        return self.combine_margin(scores, self.margin(ids), documents)

    def combine_margin(self, scores: np.ndarray, margin: float, documents: bool) -> np.ndarray:
        """`combine` with the head's margin for the text already computed."""
        how = self.combination(documents)
        if how is None:
            return scores
        odds = math.log(max(float(scores[1]), 1e-300)) - math.log(max(float(scores[0]), 1e-300))
        z = how.network * odds + how.lexical * margin + how.bias
        positive = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
        return np.array([1.0 - positive, positive], dtype=np.float32)

    def with_combinations(self, texts: Combination | None, documents: Combination | None) -> "LexicalHead":
        return LexicalHead(self.vocab_size, self.buckets, self.max_n, self.idf, self.weights, self.intercept,
                           texts, documents)

    @property
    def digest(self) -> str:
        """Names the head in cache keys: its weights and combinations."""
        hasher = hashlib.sha256()
        for array in (self.idf, self.weights, np.array([self.vocab_size, self.buckets, self.max_n, self.intercept]),
                      *(c.as_array() for c in (self.texts, self.documents) if c is not None)):
            hasher.update(np.ascontiguousarray(array).tobytes())
        return hasher.hexdigest()[:12]

    def write_beside(self, tokenizer_file: Path) -> Path:
        path = Path(tokenizer_file).with_name(LEXICAL_FILE)
        combinations = {name: c.as_array() for name, c in (("texts", self.texts), ("documents", self.documents))
                        if c is not None}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, shape=np.array([self.vocab_size, self.buckets, self.max_n]), idf=self.idf,
                            weights=self.weights, intercept=np.array([self.intercept]), **combinations)
        path.write_bytes(buffer.getvalue())
        return path

    @classmethod
    def beside(cls, tokenizer_file: Path) -> "LexicalHead | None":
        """The head next to `tokenizer_file`, or None where the model has none."""
        path = Path(tokenizer_file).with_name(LEXICAL_FILE)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as arrays:
                vocab_size, buckets, max_n = (int(v) for v in arrays["shape"])
                combinations = {name: Combination(*(float(v) for v in arrays[name]))
                                for name in ("texts", "documents") if name in arrays}
                return cls(vocab_size, buckets, max_n, arrays["idf"].astype(np.float32),
                           arrays["weights"].astype(np.float32), float(arrays["intercept"][0]), **combinations)
        except (OSError, KeyError, ValueError, TypeError) as error:
            raise ValueError(f"{path} is not a lexical head: {error}") from error
