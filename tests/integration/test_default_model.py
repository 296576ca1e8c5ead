"""The default model (MiniLM fine-tuned on the packaged corpora) as built by `make model`: its splits
are disjoint per source, the served ONNX file answers as the export report says, the scores are
calibrated, the served int8 model is within one point of fp32, and a text's answer does not depend
on the texts batched with it (in ONNX Runtime and in the real Triton)."""

import json

import numpy as np
import pytest

from sentiment.model.card import ECE_TARGET
from sentiment.model.data import read_split, text_key
from sentiment.model.export import OnnxClassifier
from tests.conftest import TritonServer, started
from transformer.bundle import ModelBundle
from transformer.core.tokenization import TextEncoder
from transformer.core.windows import AGGREGATIONS, DEFAULT_AGGREGATION

pytestmark = [pytest.mark.slow, pytest.mark.model]

SOURCES = ("movies", "tweets", "uci", "imdb")


@pytest.fixture(scope="module")
def splits(default_build):
    return {name: read_split(default_build.checkpoint / "splits" / f"{name}.tsv") for name in ("train", "dev", "test")}


@pytest.fixture(scope="module")
def report(default_build):
    return json.loads((default_build.repository / "sentiment" / "1" / "bundle" / "export_report.json").read_text())


@pytest.fixture(scope="module")
def served(default_build):
    model_dir = default_build.repository / "sentiment"
    bundle = ModelBundle.load(model_dir / "1" / "bundle")
    encoder = TextEncoder(model_dir / "1" / "bundle" / "tokenizer.json", bundle.max_length, bundle.uses_token_type_ids)
    return OnnxClassifier(model_dir / "1" / "model.onnx", encoder)


def test_splits_are_disjoint_per_text_and_sized_per_source(default_build, splits):
    keys = {name: {text_key(e.text) for e in part} for name, part in splits.items()}
    assert not keys["test"] & keys["train"] and not keys["test"] & keys["dev"] and not keys["dev"] & keys["train"]
    metrics = json.loads((default_build.checkpoint / "metrics.json").read_text())
    for source in SOURCES:
        sizes = {name: sum(e.source == source for e in part) for name, part in splits.items()}
        assert sizes == metrics["data"]["by_source"][source], source
        assert sizes["test"] >= 500 and sizes["dev"] >= 250 and sizes["train"] >= 1000, (source, sizes)


def test_the_served_model_answers_the_test_splits_as_its_report_says(default_build, splits, report, served):
    bundle = ModelBundle.load(default_build.repository / "sentiment" / "1" / "bundle")
    assert report["chosen"] == bundle.variant
    measured = served.report(splits["test"], bundle.document_temperature(DEFAULT_AGGREGATION))
    for source in SOURCES:
        expected = report["variants"][bundle.variant]["test"]["sources"][source]
        assert measured["sources"][source]["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-4), source
        assert measured["sources"][source]["ece"] == pytest.approx(expected["ece"], abs=1e-3), source


def test_int8_is_static_and_within_one_dev_point_of_fp32(report):
    variants = report["variants"]
    assert variants["int8"]["quantization"] == "static"
    loss = variants["fp32"]["dev_accuracy"] - variants["int8"]["dev_accuracy"]
    assert (report["chosen"] == "int8") == (loss <= 0.01), (report["chosen"], loss)


def test_the_scores_are_calibrated(default_build, report):
    """The served scores' calibration error is within the target on the test splits, and the temperature
    fitted on dev did not make dev calibration worse (it minimises dev log-loss, T = 1 included)."""
    served = report["variants"][report["chosen"]]
    assert served["test"]["ece"] <= ECE_TARGET
    for source in SOURCES:  # each source on its own too: whole reviews as well as sentences
        assert served["test"]["sources"][source]["ece"] <= ECE_TARGET, source
    # A text read in several windows has a temperature of its own, for every aggregation the service offers,
    # and the bundle the transformer reads carries the same ones.
    bundle = ModelBundle.load(default_build.repository / "sentiment" / "1" / "bundle")
    assert set(served["document_temperatures"]) == set(AGGREGATIONS)
    assert bundle.document_temperatures == served["document_temperatures"]
    # The served file was calibrated on its own dev answers, and that fit is what its dev ECE reports.
    assert served["serving_temperature"] is not None and served["dev"]["ece"] <= ECE_TARGET
    calibration = json.loads((default_build.checkpoint / "metrics.json").read_text())["calibration"]
    assert calibration["dev_after"]["ece"] <= calibration["dev_before"]["ece"] + 0.005


def test_export_keeps_the_accuracy_pytorch_measured_on_short_texts(default_build, report):
    """fp32 ONNX against the PyTorch checkpoint (its dev pass in training, which the temperature does not
    change the labels of) on the sources whose texts fit one window."""
    metrics = json.loads((default_build.checkpoint / "metrics.json").read_text())
    pytorch_dev = metrics["history"][metrics["best_epoch"] - 1]["dev"]
    for source in ("movies", "tweets", "uci"):
        assert report["variants"]["fp32"]["dev"]["sources"][source]["accuracy"] == pytest.approx(
            pytorch_dev["sources"][source]["accuracy"], abs=0.003), source


def batch_mates(splits, count: int = 20) -> list[str]:
    """`count` different texts of many lengths: short sentences to whole reviews."""
    texts = sorted({e.text for e in splits["test"]}, key=len)
    return [texts[i] for i in np.linspace(0, len(texts) - 1, count).astype(int)]


PROBES = ["i love this", "not bad at all", "the plot was a mess but the acting saved it"]


def test_a_text_scores_the_same_beside_any_batch_mates_in_onnxruntime(splits, served):
    mates = batch_mates(splits)
    for probe in PROBES:
        alone = served.logits([probe])[0]
        for mate in mates:
            beside = served.logits([mate, probe])[1]
            assert np.array_equal(alone, beside), (probe, mate[:60], alone, beside)


def test_a_text_scores_the_same_beside_any_batch_mates_in_triton(default_build, splits, served, logs_dir):
    """The real Triton (dynamic batching on) with tritonclient.http in binary mode: one text alone, then
    in 20 batches with other texts, identical logits every time."""
    import tritonclient.http as httpclient

    mates = batch_mates(splits)

    def infer(client, texts):
        arrays = served.encoder.encode_batch(texts)
        inputs = []
        for name, array in arrays.items():
            tensor = httpclient.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        return client.infer("sentiment", inputs).as_numpy("logits")

    for triton in started(TritonServer(default_build.repository, logs_dir / "batch-mates-triton")):
        client = httpclient.InferenceServerClient(triton.http_address)
        for probe in PROBES:
            alone = infer(client, [probe])[0]
            for index, mate in enumerate(mates):
                batch = [mate, probe] if index % 2 else [probe, mate, mates[-1 - index]]
                row = batch.index(probe)
                assert np.array_equal(infer(client, batch)[row], alone), (probe, mate[:60])



def test_emoji_are_read_as_their_names_and_emoticons_as_they_are(default_build, served):
    """What the README's "Emoji" paragraph says of the built model: the checkpoint's table travels into
    the bundle, the served encoder applies it (no emoji of the table is the unknown token any more),
    and opposite emoji, like opposite emoticons, get opposite answers."""
    checkpoint_table = json.loads((default_build.checkpoint / "text_replacements.json").read_text(encoding="utf-8"))
    assert served.encoder.replacements is not None and served.encoder.replacements.table == checkpoint_table
    unknown = served.encoder.tokenize(["[UNK]"])[0].ids
    emoji = ["\U0001F44D", "\U0001F44E", "\U0001F60D", "\U0001F621", "\U0001F602"]
    assert all(encoding.ids != unknown for encoding in served.encoder.tokenize(emoji))
    assert served.predict(["\U0001F44D", "\U0001F44E", ":)", ":("]) == [1, 0, 1, 0]  # POSITIVE, NEGATIVE


def test_the_lexical_head_reads_documents_and_leaves_short_texts_to_the_network(default_build, served, report):
    """What the README says of recipe 5: the bundle's head answers texts read in several windows only
    (one-window texts get the network's answer, so negation and elongation still read right), and it
    lifts whole reviews over the network alone on the test split, as the card's columns say."""
    from transformer.core.lexical import LexicalHead

    checkpoint_head = LexicalHead.beside(default_build.checkpoint / "tokenizer.json")
    assert checkpoint_head is not None and not checkpoint_head.combines  # training fits weights, the export combines
    assert served.head is not None and served.head.texts is None and served.head.documents is not None
    assert served.head.digest != checkpoint_head.digest
    short = ["not bad at all", "sooo good", "this is bad", "not good at all"]
    answers = served.window_answers(short)
    np.testing.assert_array_equal(answers.log_scores(), answers.with_head(None).log_scores())
    assert [int(row.argmax()) for row in answers.log_scores()] == [1, 1, 0, 0]
    lexical = report["variants"][report["chosen"]]["lexical"]
    alone, combined = lexical["test_network"]["sources"]["imdb"], report["variants"][report["chosen"]]["test"]
    assert combined["sources"]["imdb"]["accuracy"] > alone["accuracy"]
    assert combined["sources"]["imdb"]["ece"] <= ECE_TARGET
