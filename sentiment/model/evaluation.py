"""Predict, then score: the one loop that training (PyTorch) and export (ONNX Runtime) both evaluate with."""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

from sentiment.model.data import Example

Item = TypeVar("Item")


def predict_in_length_order(items: Sequence[Item], length: Callable[[Item], int],
                            logits: Callable[[list[Item]], Any], batch_size: int = 64) -> list[int]:
    """Argmax label of every item, in input order; batches hold items of similar length (less padding).

    `logits` takes a list of items and returns an array-like [n, labels] (numpy or torch).
    """
    order = sorted(range(len(items)), key=lambda i: length(items[i]))
    labels = [0] * len(items)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        for i, label in zip(index, logits([items[i] for i in index]).argmax(-1).tolist()):
            labels[i] = label
    return labels


def accuracy(predictions: Sequence[int], examples: Sequence[Example]) -> float:
    if not examples:
        return float("nan")
    return sum(int(p == e.label) for p, e in zip(predictions, examples)) / len(examples)
