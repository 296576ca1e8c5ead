"""Which function turns a checkpoint's logits into scores: decided from config.json exactly as the
Hugging Face text-classification pipeline decides its default `function_to_apply`, and recorded in
the bundle (bundles from before it was recorded are single-label softmax)."""

import json

import numpy as np
import pytest

from sentiment.model.checkpoint import ExportError, inspect_checkpoint, score_function
from transformer.bundle import ModelBundle
from transformer.core.windows import SCORE_FUNCTIONS


@pytest.mark.parametrize("problem_type, num_labels", [
    (None, 1), (None, 2), (None, 5),
    ("single_label_classification", 3),
    ("multi_label_classification", 1), ("multi_label_classification", 4),
    ("regression", 1), ("regression", 3),
])
def test_the_rule_is_the_pipelines_own(problem_type, num_labels):
    """The pipeline's postprocess, run on the same logits, gives what our function gives."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, TextClassificationPipeline

    config = BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                        intermediate_size=8, num_labels=num_labels, problem_type=problem_type)
    pipeline = TextClassificationPipeline(model=BertForSequenceClassification(config), tokenizer=None)
    logits = np.linspace(-2.0, 1.5, num_labels, dtype=np.float32)
    answer = pipeline.postprocess({"logits": torch.tensor(logits)[None]}, top_k=None, _legacy=False)
    theirs = {item["label"]: item["score"] for item in answer}
    ours = SCORE_FUNCTIONS[score_function(problem_type, num_labels)](logits)
    np.testing.assert_allclose([theirs[config.id2label[i]] for i in range(num_labels)], ours, rtol=1e-6)


def test_the_checkpoint_reader_takes_the_problem_type(tmp_path):
    def config(**fields):
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **fields}))
        return inspect_checkpoint(tmp_path)

    assert config(id2label={"0": "a", "1": "b"}).score_function == "softmax"
    multi = config(id2label={"0": "a", "1": "b", "2": "c"}, problem_type="multi_label_classification")
    assert (multi.problem_type, multi.score_function) == ("multi_label_classification", "sigmoid")
    assert config(id2label={"0": "stars"}, problem_type="regression").score_function == "none"
    with pytest.raises(ExportError, match="problem_type 'ranking'"):
        config(id2label={"0": "a", "1": "b"}, problem_type="ranking")
    with pytest.raises(ExportError, match="no id2label"):
        config()


def test_a_bundle_without_a_recorded_problem_type_is_single_label_softmax():
    old = {"format_version": 1, "labels": ["NEGATIVE", "POSITIVE"], "max_length": 64, "uses_token_type_ids": True,
           "lowercase": True, "fingerprint": "f" * 64, "max_batch_size": 64}
    bundle = ModelBundle.model_validate(old)
    assert (bundle.problem_type, bundle.score_function) == (None, "softmax")


@pytest.mark.parametrize("model_type, positions, pad, longest", [
    ("bert", 512, 0, 512),      # positions counted from 0
    ("mpnet", 514, 1, 512),     # from the padding id + 1: MPNet-base's 514 hold 512 tokens
    ("roberta", 514, 1, 512),
    ("mpnet", 130, 1, 128),     # the tests' tiny MPNet
])
def test_the_longest_window_is_what_the_position_table_holds(tmp_path, model_type, positions, pad, longest):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "id2label": {"0": "a", "1": "b"},
                                                      "max_position_embeddings": positions, "pad_token_id": pad}))
    assert inspect_checkpoint(tmp_path, max_length=4096).max_length == longest
    assert inspect_checkpoint(tmp_path).max_length == min(128, longest)
