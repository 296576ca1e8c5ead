"""Calibrated scores: expected calibration error, and the temperature that minimises dev log-loss.

Temperature scaling (Guo et al. 2017) divides the logits by one number T fitted on held-out data:
it leaves every argmax (so every accuracy) unchanged and makes a 0.9 score mean about 90 % right.
"""

from __future__ import annotations

import numpy as np

from transformer.core.windows import softmax

ECE_BINS = 15


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins of the top score, weighted by
    the share of rows in each bin."""
    probabilities = softmax(np.asarray(logits))
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray) -> float:
    probabilities = softmax(np.asarray(logits))
    return float(-np.log(np.maximum(probabilities[np.arange(len(labels)), labels], 1e-12)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The T in [low, high] minimising the log-loss of logits / T (golden-section search on log T:
    the loss is unimodal in T)."""
    labels = np.asarray(labels)
    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if negative_log_likelihood(logits / np.exp(c), labels) < negative_log_likelihood(logits / np.exp(d), labels):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))
