"""Predict, then score: the one loop that training (PyTorch) and export (ONNX Runtime) both evaluate with."""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from sentiment.model.calibration import expected_calibration_error
from sentiment.model.data import Example

Item = TypeVar("Item")


def logits_in_length_order(items: Sequence[Item], length: Callable[[Item], int],
                           logits: Callable[[list[Item]], Any], batch_size: int = 64) -> np.ndarray:
    """Logits [n, labels] of every item, in input order; batches hold items of similar length (less
    padding). `logits` takes a list of items and returns an array-like [n, labels]."""
    order = sorted(range(len(items)), key=lambda i: length(items[i]))
    rows: list[np.ndarray] = [np.empty(0)] * len(items)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        for i, row in zip(index, np.asarray(logits([items[i] for i in index]))):
            rows[i] = row
    return np.stack(rows) if rows else np.zeros((0, 0))


def predict_in_length_order(items: Sequence[Item], length: Callable[[Item], int],
                            logits: Callable[[list[Item]], Any], batch_size: int = 64) -> list[int]:
    """Argmax label of every item, in input order (see `logits_in_length_order`)."""
    return logits_in_length_order(items, length, logits, batch_size).argmax(-1).tolist()


def accuracy(predictions: Sequence[int], examples: Sequence[Example]) -> float:
    if not examples:
        return float("nan")
    return sum(int(p == e.label) for p, e in zip(predictions, examples)) / len(examples)


def split_report(logits: np.ndarray, examples: Sequence[Example]) -> dict:
    """Accuracy and calibration error per source and their mean over sources (each source counts
    once, however large its split)."""
    labels = np.array([e.label for e in examples])
    sources = np.array([e.source for e in examples])
    by_source = {}
    for source in dict.fromkeys(e.source for e in examples):
        rows = sources == source
        by_source[source] = {
            "rows": int(rows.sum()),
            "accuracy": round(float((logits[rows].argmax(-1) == labels[rows]).mean()), 4),
            "ece": round(expected_calibration_error(logits[rows], labels[rows]), 4),
        }
    return {
        "sources": by_source,
        "mean_accuracy": round(float(np.mean([s["accuracy"] for s in by_source.values()])), 4) if by_source else None,
        "ece": round(expected_calibration_error(logits, labels), 4) if len(examples) else None,
    }
