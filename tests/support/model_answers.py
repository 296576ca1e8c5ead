"""The served model's own answers, computed beside the stack (ONNX Runtime on the files Triton
serves, and the bundle's lexical head): tests pick their "clear" and "unsure" texts from them at
fixture time, so a retrained model
does not break a list of texts chosen by hand for an earlier one."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from sentiment.model.export import OnnxClassifier
from sentiment.model.triton_repository import FIRST_VERSION, bundle_dir
from transformer.bundle import ModelBundle
from transformer.core.tokenization import TextEncoder
from transformer.core.windows import DEFAULT_AGGREGATION


class ModelAnswers:
    """`answers(texts)` -> [(top label, top score)] of the model in `repository` (texts of one window)."""

    def __init__(self, repository: Path):
        bundle_path = bundle_dir(repository, FIRST_VERSION)
        bundle = ModelBundle.load(bundle_path)
        encoder = TextEncoder(bundle_path / bundle.tokenizer_file, bundle.max_length, bundle.uses_token_type_ids)
        self.labels = bundle.labels
        self.classifier = OnnxClassifier(bundle_path.parent / "model.onnx", encoder)
        self.document_temperature = bundle.document_temperature(DEFAULT_AGGREGATION)

    def probabilities(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(as the service answers, as the network alone answers with the same aggregation and document
        temperature) per text: the service's default aggregation and the bundle's lexical head."""
        answers = self.classifier.window_answers(list(texts))
        return (np.exp(answers.log_scores(DEFAULT_AGGREGATION, self.document_temperature)),
                np.exp(answers.with_head(None).log_scores(DEFAULT_AGGREGATION, self.document_temperature)))

    def __call__(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """As the service answers (the lexical head combined, where the model has one)."""
        probabilities = self.probabilities(texts)[0]
        return [(self.labels[int(row.argmax())], float(row.max())) for row in probabilities]

    def clear(self, candidates: Sequence[str], label: str, over: float, count: int) -> list[str]:
        """The first `count` candidates the model answers `label` with a top score over `over`."""
        chosen = [text for text, (top, score) in zip(candidates, self(candidates)) if top == label and score > over]
        assert len(chosen) >= count, f"the model labels only {len(chosen)} of the candidates {label} over {over}"
        return chosen[:count]
