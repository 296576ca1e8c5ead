"""Fitting a lexical head (`transformer.core.lexical`): its n-gram weights on the training rows, by the
training run, and how it combines with the served network, on the dev split, by the export.

scikit-learn does both fits (liblinear logistic regression on the sparse tf-idf matrix; a two-feature
logistic regression per kind of text), so a head's weights are what a user could reproduce with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from transformer.core.lexical import Combination, LexicalHead, ngram_features

log = logging.getLogger(__name__)

# Fewer dev texts of a kind than this and that kind keeps the network's answer.
MIN_DOCUMENTS = 50
KINDS = ("texts", "documents")


@dataclass(frozen=True)
class LexicalRecipe:
    """What determines a head's n-gram weights (part of the training configuration). Chosen on dev
    (2026-12-06, recipe 4's served int8 network): n-grams up to 3 over n-grams up to 2 (dev mean over
    sources 0.9039 against 0.8988, each combined with the network); C = 16 over 4 (0.8988 against 0.8962)."""

    max_n: int = 3
    buckets: int = 1 << 20
    c: float = 16.0


def tfidf_matrix(ids: Sequence[np.ndarray], head: LexicalHead):
    """The scipy CSR matrix of `head.features` of every text (rows in order)."""
    import scipy.sparse as sparse

    indptr, indices, values = [0], [], []
    for row in ids:
        columns, data = head.features(row)
        indices.append(columns)
        values.append(data)
        indptr.append(indptr[-1] + len(columns))
    return sparse.csr_matrix((np.concatenate(values), np.concatenate(indices), np.array(indptr)),
                             shape=(len(ids), head.vocab_size + head.buckets))


def fit_lexical_head(ids: Sequence[np.ndarray], labels: np.ndarray, vocab_size: int,
                     recipe: LexicalRecipe = LexicalRecipe()) -> LexicalHead:
    """Inverse document frequencies and logistic-regression weights over `ids`' n-gram features."""
    from sklearn.linear_model import LogisticRegression

    features = vocab_size + recipe.buckets
    document_frequency = np.zeros(features, dtype=np.int64)
    for row in ids:
        document_frequency[ngram_features(row, vocab_size, recipe.buckets, recipe.max_n)[0]] += 1
    count = len(ids)
    idf = (np.log((1.0 + count) / (1.0 + document_frequency)) + 1.0).astype(np.float32)
    unweighted = LexicalHead(vocab_size, recipe.buckets, recipe.max_n, idf, np.zeros(features, np.float32), 0.0)
    matrix = tfidf_matrix(ids, unweighted)
    model = LogisticRegression(C=recipe.c, solver="liblinear", max_iter=3000).fit(matrix, np.asarray(labels))
    log.info("lexical head: %d texts, %d n-gram features in use", count, int((document_frequency > 0).sum()))
    return LexicalHead(vocab_size, recipe.buckets, recipe.max_n, idf, model.coef_[0].astype(np.float32),
                       float(model.intercept_[0]))


def fit_combinations(log_odds: np.ndarray, margins: np.ndarray, labels: np.ndarray, documents: np.ndarray,
                     kinds: Sequence[str] = KINDS, min_rows: int = MIN_DOCUMENTS
                     ) -> tuple[Combination | None, Combination | None]:
    """(texts, documents): for each kind of text in `kinds` ("texts": read in one window; "documents":
    in several) with at least `min_rows` dev rows, the logistic regression of the label on the
    network's calibrated log-odds and the head's margin. Its coefficients are the combination, and its
    answers are calibrated on dev by construction. A kind not fitted keeps the network's answer."""
    from sklearn.linear_model import LogisticRegression

    documents = np.asarray(documents, dtype=bool)

    def fit(kind: str, rows: np.ndarray) -> Combination | None:
        if kind not in kinds or rows.sum() < min_rows:
            return None
        features = np.c_[log_odds[rows], margins[rows]]
        model = LogisticRegression(C=1.0).fit(features, np.asarray(labels)[rows])
        return Combination(float(model.coef_[0][0]), float(model.coef_[0][1]), float(model.intercept_[0]))

    return fit("texts", ~documents), fit("documents", documents)
