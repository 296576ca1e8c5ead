"""How the answers of a long text's windows become one answer, and how the caller chooses.

Each candidate takes the logits of one text's windows ([windows, labels], in text order) and the
number of new tokens each window adds, and returns probabilities over the labels. The served
default was chosen by measurement on long documents built from training-side data only
(`sentiment model eval-long`, table in the README).
"""

from __future__ import annotations

from enum import Enum
from typing import Callable, Mapping

import numpy as np


class Truncation(str, Enum):
    """What happens to a text longer than the model's window (request option `truncation`)."""

    CHUNK = "chunk"   # every window is classified and the answers are aggregated (default)
    HEAD = "head"     # only the first window is classified (what most servers do silently)
    ERROR = "error"   # the request is refused (422) naming the text and its token count


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float64)
    return exp / exp.sum(axis=-1, keepdims=True)


def mean_probabilities(logits: np.ndarray, new_tokens: np.ndarray) -> np.ndarray:
    return softmax(logits).mean(axis=0)


def mean_logits(logits: np.ndarray, new_tokens: np.ndarray) -> np.ndarray:
    return softmax(logits.mean(axis=0))


def length_weighted_probabilities(logits: np.ndarray, new_tokens: np.ndarray) -> np.ndarray:
    """Each window counts by the text it adds: a short tail window cannot outvote a full one."""
    weights = np.maximum(new_tokens.astype(np.float64), 1.0)
    return (softmax(logits) * weights[:, None]).sum(axis=0) / weights.sum()


def confidence_weighted_probabilities(logits: np.ndarray, new_tokens: np.ndarray) -> np.ndarray:
    """Each window counts by how sure it is (top probability above chance): neutral stretches of a
    review carry little weight, a clear verdict carries much."""
    probabilities = softmax(logits)
    chance = 1.0 / probabilities.shape[1]
    weights = np.maximum(probabilities.max(axis=1) - chance, 1e-6)
    return (probabilities * weights[:, None]).sum(axis=0) / weights.sum()


def most_confident_window(logits: np.ndarray, new_tokens: np.ndarray) -> np.ndarray:
    probabilities = softmax(logits)
    return probabilities[int(probabilities.max(axis=1).argmax())]


def first_window(logits: np.ndarray, new_tokens: np.ndarray) -> np.ndarray:
    """What `head` answers: the baseline every candidate is measured against."""
    return softmax(logits[0])


Aggregation = Callable[[np.ndarray, np.ndarray], np.ndarray]

AGGREGATIONS: Mapping[str, Aggregation] = {
    "mean_probabilities": mean_probabilities,
    "mean_logits": mean_logits,
    "length_weighted": length_weighted_probabilities,
    "confidence_weighted": confidence_weighted_probabilities,
    "most_confident": most_confident_window,
    "first_window": first_window,
}
DEFAULT_AGGREGATION = "mean_logits"


def aggregate(name: str, logits: np.ndarray, new_tokens: np.ndarray) -> np.ndarray:
    """Probabilities (float32, summing to 1) of one text from its windows' logits."""
    if logits.shape[0] == 1:
        return softmax(logits[0]).astype(np.float32)
    return AGGREGATIONS[name](logits, new_tokens).astype(np.float32)
