"""The export's offline copy of the service's chunk-mode answers, and the document temperatures."""

import numpy as np

from sentiment.model.answers import WindowAnswers, fit_document_temperatures
from transformer.core.windows import AGGREGATIONS, aggregate


def answers_of(logits: list[np.ndarray]) -> WindowAnswers:
    return WindowAnswers([np.asarray(rows, dtype=np.float32) for rows in logits],
                         [np.full(len(rows), 10) for rows in logits])


def test_log_scores_are_the_services_aggregate_and_dividing_divides_every_window():
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(n, 2)) for n in (1, 3, 1, 5)]
    answers = answers_of(logits)
    assert answers.documents.tolist() == [False, True, False, True]
    for name in AGGREGATIONS:
        expected = [aggregate(name, rows.astype(np.float32), np.full(len(rows), 10), "softmax", 0.8) for rows in logits]
        np.testing.assert_allclose(np.exp(answers.log_scores(name, 0.8)), expected, rtol=1e-5)
    np.testing.assert_allclose(answers.divided(2.0).logits[1], logits[1] / 2.0, rtol=1e-6)
    np.testing.assert_allclose(answers.divided(2.0).log_scores_before(2.0), answers.log_scores(), rtol=1e-5)
    assert answers.log_scores_before(None) is None
    assert len(answers.only(answers.documents).logits) == 2


def test_the_fit_recovers_how_much_too_unsure_documents_are():
    """Documents whose true confidence is their mean logits x 2: the fitted temperature is about 0.5,
    for every aggregation a temperature is fitted; short texts do not enter the fit."""
    rng = np.random.default_rng(1)
    documents = [rng.normal(scale=1.0, size=(3, 2)) for _ in range(4000)]
    truth = [rng.random() < 1 / (1 + np.exp(-2 * (rows.mean(0)[1] - rows.mean(0)[0]))) for rows in documents]
    short = [rng.normal(scale=5.0, size=(1, 2)) for _ in range(500)]  # labels at random: would pull T far up
    labels = np.array([int(t) for t in truth] + [int(rng.random() < 0.5) for _ in short])
    fitted = fit_document_temperatures(answers_of(documents + short), labels)
    assert set(fitted) == set(AGGREGATIONS)
    assert abs(fitted["mean_logits"] - 0.5) < 0.05
    assert fitted["mean_logits"] == round(fitted["mean_logits"], 4)


def test_too_few_documents_fit_nothing():
    answers = answers_of([np.zeros((2, 2))] * 10 + [np.zeros((1, 2))] * 100)
    assert fit_document_temperatures(answers, np.zeros(110, dtype=int)) == {}
