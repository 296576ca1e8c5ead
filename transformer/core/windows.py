"""How the answers of a long text's windows become one answer, and how the caller chooses.

Each candidate takes the logits of one text's windows ([windows, labels], in text order), the
number of new tokens each window adds and the model's score function (softmax, a sigmoid per label,
or none for regression), and returns scores over the labels. The served default was chosen by
measurement on long documents built from training-side data only (`sentiment model eval-long`,
table in the README).
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


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """A probability per label, each on its own (multi-label; one-label models)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def identity(logits: np.ndarray) -> np.ndarray:
    """Regression: the model's raw value is the score."""
    return np.asarray(logits, dtype=np.float64)


ScoreFunction = Callable[[np.ndarray], np.ndarray]
# `function_to_apply` names, as the Hugging Face text-classification pipeline spells them.
SCORE_FUNCTIONS: Mapping[str, ScoreFunction] = {"softmax": softmax, "sigmoid": sigmoid, "none": identity}


def mean_probabilities(logits: np.ndarray, new_tokens: np.ndarray, score: ScoreFunction = softmax) -> np.ndarray:
    return score(logits).mean(axis=0)


def mean_logits(logits: np.ndarray, new_tokens: np.ndarray, score: ScoreFunction = softmax) -> np.ndarray:
    return score(logits.mean(axis=0))


def length_weighted_probabilities(logits: np.ndarray, new_tokens: np.ndarray,
                                  score: ScoreFunction = softmax) -> np.ndarray:
    """Each window counts by the text it adds: a short tail window cannot outvote a full one."""
    weights = np.maximum(new_tokens.astype(np.float64), 1.0)
    return (score(logits) * weights[:, None]).sum(axis=0) / weights.sum()


def confidence_weighted_probabilities(logits: np.ndarray, new_tokens: np.ndarray,
                                      score: ScoreFunction = softmax) -> np.ndarray:
    """Each window counts by how sure it is (top probability above chance): neutral stretches of a
    review carry little weight, a clear verdict carries much."""
    probabilities = score(logits)
    chance = 1.0 / probabilities.shape[1]
    weights = np.maximum(probabilities.max(axis=1) - chance, 1e-6)
    return (probabilities * weights[:, None]).sum(axis=0) / weights.sum()


def most_confident_window(logits: np.ndarray, new_tokens: np.ndarray, score: ScoreFunction = softmax) -> np.ndarray:
    probabilities = score(logits)
    return probabilities[int(probabilities.max(axis=1).argmax())]


def first_window(logits: np.ndarray, new_tokens: np.ndarray, score: ScoreFunction = softmax) -> np.ndarray:
    """What `head` answers: the baseline every candidate is measured against."""
    return score(logits[0])


Aggregation = Callable[[np.ndarray, np.ndarray, ScoreFunction], np.ndarray]

AGGREGATIONS: Mapping[str, Aggregation] = {
    "mean_probabilities": mean_probabilities,
    "mean_logits": mean_logits,
    "length_weighted": length_weighted_probabilities,
    "confidence_weighted": confidence_weighted_probabilities,
    "most_confident": most_confident_window,
    "first_window": first_window,
}
DEFAULT_AGGREGATION = "mean_logits"


def aggregate(name: str, logits: np.ndarray, new_tokens: np.ndarray, function: str = "softmax",
              temperature: float = 1.0) -> np.ndarray:
    """Scores (float32) of one text from its windows' logits, through the model's score function
    (softmax: probabilities summing to 1; sigmoid: one probability per label; none: raw values).

    `temperature` calibrates what an aggregation answers for a text read in several windows (the
    bundle's `document_temperatures`): softmax scores become softmax(log(scores) / T), which for
    `mean_logits` is exactly softmax(mean logits / T) and keeps every aggregation's ranking. Windows
    that disagree pull a document's answer towards chance, so documents need their own fit. One
    window, or another score function, is left as the model answered."""
    score = SCORE_FUNCTIONS[function]
    if logits.shape[0] == 1:
        return score(logits[0]).astype(np.float32)
    scores = AGGREGATIONS[name](logits, new_tokens, score)
    if temperature != 1.0 and function == "softmax":
        scores = softmax(np.log(np.maximum(scores, 1e-300)) / temperature)
    return scores.astype(np.float32)


def raw_logits(logits: np.ndarray) -> np.ndarray:
    """What `raw_scores` answers for one text: its logits, the mean over windows for a long text."""
    return (logits[0] if logits.shape[0] == 1 else logits.mean(axis=0)).astype(np.float32)
