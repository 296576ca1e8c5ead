"""What the service answers in chunk mode, computed offline from each window's logits.

The export scores its variants, fits its temperatures and reports the test split from these, so
every figure it writes is of the answers the service gives (`transformer.core.windows.aggregate`,
the function the transformer calls). The window logits are kept, not just the aggregated scores:
dividing the output layer by a temperature divides every window's logits by it, so the answers of
the calibrated file follow without running it again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from sentiment.model.calibration import fit_temperature
from transformer.core.lexical import LexicalHead
from transformer.core.windows import AGGREGATIONS, DEFAULT_AGGREGATION, aggregate

# Fewer multi-window dev texts than this and no document temperature is fitted (too few to fit on).
MIN_DOCUMENTS = 50


@dataclass(frozen=True)
class WindowAnswers:
    """Per text: its windows' logits [windows, labels] and the new tokens each window adds; with a
    lexical head, also its margin per text, combined into the answers once the head has combinations
    (as the transformer combines them)."""

    logits: list[np.ndarray]
    new_tokens: list[np.ndarray]
    margins: np.ndarray | None = None
    head: LexicalHead | None = None

    @property
    def documents(self) -> np.ndarray:
        """Which texts the service reads in several windows: what a document temperature calibrates."""
        return np.array([rows.shape[0] > 1 for rows in self.logits], dtype=bool)

    def divided(self, temperature: float) -> "WindowAnswers":
        """The answers of the same model with its output layer divided by `temperature`."""
        return replace(self, logits=[rows / np.float32(temperature) for rows in self.logits])

    def with_head(self, head: LexicalHead | None) -> "WindowAnswers":
        """The same answers combined with `head` (None: the network's alone)."""
        return replace(self, head=head)

    @property
    def combined(self) -> bool:
        return self.head is not None and self.head.combines and self.margins is not None

    def only(self, rows: np.ndarray) -> "WindowAnswers":
        """The answers of the texts where `rows` is true."""
        return replace(self, logits=[a for a, keep in zip(self.logits, rows) if keep],
                       new_tokens=[t for t, keep in zip(self.new_tokens, rows) if keep],
                       margins=None if self.margins is None else self.margins[np.asarray(rows, dtype=bool)])

    def log_scores_before(self, temperature: float | None) -> np.ndarray | None:
        """The default aggregation's log-scores of the same model before its logits were divided by
        `temperature` (None: no temperature was applied, nothing to undo): the network's, uncombined."""
        return None if temperature is None else self.with_head(None).divided(1.0 / temperature).log_scores()

    def log_scores(self, aggregation: str = DEFAULT_AGGREGATION, document_temperature: float = 1.0) -> np.ndarray:
        """Log-probabilities [texts, labels] as the service answers them with `aggregation` and the
        bundle's `document_temperature` for it (a short text is its one window), combined with the
        lexical head where it has combinations."""
        scores = [aggregate(aggregation, rows, tokens, "softmax", document_temperature)
                  for rows, tokens in zip(self.logits, self.new_tokens)]
        if self.combined:
            scores = [self.head.combine_margin(s, float(m), rows.shape[0] > 1)
                      for s, m, rows in zip(scores, self.margins, self.logits)]
        return np.log(np.maximum(np.stack(scores), 1e-12))


def fit_document_temperatures(answers: WindowAnswers, labels: np.ndarray,
                              min_documents: int = MIN_DOCUMENTS) -> dict[str, float]:
    """Per aggregation, the temperature (minimum log-loss on `labels`) of its answers to the texts
    read in several windows, rounded as the bundle stores it; none with fewer than `min_documents`
    such texts. Windows that disagree pull a mean towards chance, so a document's answer is less
    sure than its accuracy warrants (on recipe 3's dev reviews the fit was T = 0.68 for
    `mean_logits`), which the output layer's one temperature for every text cannot correct."""
    documents = answers.documents
    if int(documents.sum()) < min_documents:
        return {}
    subset, truth = answers.with_head(None).only(documents), np.asarray(labels)[documents]
    return {name: round(fit_temperature(subset.log_scores(name), truth), 4) for name in AGGREGATIONS}
