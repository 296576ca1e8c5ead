"""Multi-label, three-label and regression checkpoints, served by the real stack (export, Triton,
redis-server, the transformer) and compared on every transport with what `transformers`' own
text-classification pipeline answers for the same checkpoint; `top_k` and `raw_scores` are views
of one cached value."""

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import RedisServer, TransformerServer, TritonServer, started

pytestmark = pytest.mark.usefixtures("require_redis_server")

TOLERANCE = 1e-6  # absolute and relative, for probabilities
# Raw logits of ONNX Runtime fp32 and PyTorch fp32 differ in their 6th significant digit (measured up
# to 1.9e-6 on logits near 1); softmax and sigmoid squash that below 1e-6.
RAW_TOLERANCE = 1e-5
GRPC_SCRIPT = Path(__file__).resolve().parent.parent / "support_grpc_client.py"
# kind -> (id2label, config.json problem_type, the score function the bundle must record)
KINDS = {
    "multi_label": (("admiration", "anger", "joy", "fear", "neutral"), "multi_label_classification", "sigmoid"),
    "three_label": (("NEGATIVE", "NEUTRAL", "POSITIVE"), None, "softmax"),
    "regression": (("STARS",), "regression", "none"),
}
TEXTS = ["i love this film", "the plot was dull and slow", "", "caf\u00e9 \u2603 fine"]


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def checkpoint(kind, tmp_path_factory) -> Path:
    from tests.support.tiny import build_tiny_checkpoint

    labels, problem_type, _function = KINDS[kind]
    return build_tiny_checkpoint("bert", tmp_path_factory.mktemp(f"ckpt-{kind}"), seed=3, label_names=labels,
                                 problem_type=problem_type)


@pytest.fixture(scope="module")
def repository(checkpoint, kind, tmp_path_factory) -> Path:
    from sentiment.model.export import ExportOptions, export

    root = tmp_path_factory.mktemp(f"repo-{kind}")
    export(checkpoint, root, ExportOptions(variant="fp32"))
    return root


@pytest.fixture(scope="module")
def stack(repository, kind, logs_dir, require_redis_server):
    logs = logs_dir / f"label-kinds-{kind}"
    with _running(TritonServer(repository, logs)) as triton, _running(RedisServer(logs)) as redis:
        with _running(TransformerServer(triton, logs, extra_args=["--redis_url", redis.url])) as transformer:
            yield triton, transformer


class _running:
    def __init__(self, server):
        self.generator = started(server)

    def __enter__(self):
        return next(self.generator)

    def __exit__(self, *exc):
        self.generator.close()


@pytest.fixture(scope="module")
def pipeline(checkpoint):
    """transformers' own text-classification pipeline on the checkpoint, every label, its default
    function_to_apply (what it decides from problem_type and num_labels)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, attn_implementation="eager")
    return pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(checkpoint),
                    device="cpu")


def expected(pipeline, texts, **kwargs) -> list[dict[str, float]]:
    """label -> score per text, as the pipeline answers (ranked lists, `top_k=None`: all labels)."""
    answers = pipeline(texts, top_k=kwargs.pop("top_k", None), **kwargs)
    return [{item["label"]: item["score"] for item in ranked} for ranked in answers]


def as_scores(ranked: list[dict]) -> dict[str, float]:
    return {item["label"]: item["score"] for item in ranked}


def assert_close(got: dict[str, float], want: dict[str, float], tolerance: float = TOLERANCE) -> None:
    assert list(got) == list(want), "labels or their order differ"
    np.testing.assert_allclose(list(got.values()), list(want.values()), rtol=tolerance, atol=tolerance)


def grpc_calls(address: str, calls: list[dict]) -> list[dict]:
    result = subprocess.run([sys.executable, str(GRPC_SCRIPT), address], input=json.dumps(calls),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def v2_json(client: httpx.Client, texts: list[str], parameters: dict | None = None) -> dict:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    if parameters:
        body["parameters"] = parameters
    response = client.post("/v2/models/sentiment/infer", json=body)
    assert response.status_code == 200, response.text
    return {output["name"]: output for output in response.json()["outputs"]}


def test_the_export_records_the_problem_type_and_the_pipelines_function(repository, kind):
    from transformer.bundle import ModelBundle

    labels, problem_type, function = KINDS[kind]
    bundle = ModelBundle.load(repository / "sentiment" / "1" / "bundle")
    assert (bundle.labels, bundle.problem_type, bundle.score_function) == (list(labels), problem_type, function)


def test_every_transport_answers_what_the_pipeline_answers(stack, pipeline, kind):
    _triton, transformer = stack
    labels, _problem_type, function = KINDS[kind]
    tolerance = RAW_TOLERANCE if function == "none" else TOLERANCE  # regression scores are raw values
    want = expected(pipeline, TEXTS)
    with httpx.Client(base_url=transformer.url, timeout=30) as client:
        bulk = client.post("/project/bulk-predict", json={"text": TEXTS})
        assert bulk.status_code == 200, bulk.text
        v1 = client.post("/v1/models/sentiment:predict", json={"instances": TEXTS})
        assert v1.status_code == 200, v1.text
        for answers in (bulk.json()["predictions"], v1.json()["predictions"]):
            for ranked, wanted in zip(answers, want, strict=True):
                assert [item["score"] for item in ranked] == sorted((item["score"] for item in ranked), reverse=True)
                assert_close(as_scores(ranked), {label: wanted[label] for label in as_scores(ranked)}, tolerance)
                assert set(as_scores(ranked)) == set(labels)
        outputs = v2_json(client, TEXTS)
        probabilities = np.array(outputs["probabilities"]["data"]).reshape(len(TEXTS), len(labels))
        [grpc] = grpc_calls(f"127.0.0.1:{transformer.grpc_port}", [{"op": "infer", "texts": TEXTS}])
        assert grpc["ok"], grpc
        grpc_probabilities = np.array(grpc["outputs"]["probabilities"]["data"]).reshape(len(TEXTS), len(labels))
    wanted_rows = np.array([[scores[label] for label in labels] for scores in want])
    np.testing.assert_allclose(probabilities, wanted_rows, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(grpc_probabilities, wanted_rows, rtol=tolerance, atol=tolerance)
    best = [labels[i] for i in wanted_rows.argmax(axis=1)]
    assert outputs["label"]["data"] == best == grpc["outputs"]["label"]["data"]


def test_the_v2_metadata_names_the_score_function(stack, kind):
    _triton, transformer = stack
    function = KINDS[kind][2]
    metadata = httpx.get(f"{transformer.url}/v2/models/sentiment", timeout=10).json()
    assert metadata["platform"] == f"text-classification/{function}"
    [grpc] = grpc_calls(f"127.0.0.1:{transformer.grpc_port}", [{"op": "metadata"}])
    assert grpc["value"]["platform"] == f"text-classification/{function}"


def test_top_k_and_raw_scores_on_every_transport_match_the_pipeline(stack, pipeline, kind):
    _triton, transformer = stack
    labels = KINDS[kind][0]
    texts = [f"{text} {kind} options" for text in TEXTS]
    top_k = 2
    raw = expected(pipeline, texts, function_to_apply="none")
    best = expected(pipeline, texts, top_k=top_k)
    k = min(top_k, len(labels))  # clamped like the pipeline: never more than there are labels
    assert all(len(scores) == k for scores in best)
    with httpx.Client(base_url=transformer.url, timeout=30) as client:
        bulk = client.post("/project/bulk-predict", json={"text": texts, "top_k": top_k}).json()["predictions"]
        v1 = client.post("/v1/models/sentiment:predict",
                         json={"instances": texts, "parameters": {"top_k": top_k}}).json()["predictions"]
        for answers in (bulk, v1):
            for ranked, wanted in zip(answers, best, strict=True):
                assert_close(as_scores(ranked), wanted, RAW_TOLERANCE if KINDS[kind][2] == "none" else TOLERANCE)
        bulk_raw = client.post("/project/bulk-predict", json={"text": texts, "raw_scores": True}).json()["predictions"]
        for ranked, wanted in zip(bulk_raw, raw, strict=True):
            assert_close(as_scores(ranked), wanted, RAW_TOLERANCE)
        outputs = v2_json(client, texts, {"top_k": top_k, "raw_scores": True})
    assert outputs["label"]["shape"] == outputs["score"]["shape"] == [len(texts), k]
    raw_best = expected(pipeline, texts, top_k=top_k, function_to_apply="none")
    assert outputs["label"]["data"] == [label for scores in raw_best for label in scores]
    np.testing.assert_allclose(outputs["score"]["data"], [s for scores in raw_best for s in scores.values()],
                               rtol=RAW_TOLERANCE, atol=RAW_TOLERANCE)
    [grpc] = grpc_calls(f"127.0.0.1:{transformer.grpc_port}",
                        [{"op": "infer", "texts": texts, "parameters": {"top_k": top_k, "raw_scores": True}}])
    assert grpc["ok"], grpc
    assert grpc["outputs"]["label"]["shape"] == [len(texts), k]
    assert grpc["outputs"]["label"]["data"] == outputs["label"]["data"]
    np.testing.assert_allclose(grpc["outputs"]["probabilities"]["data"],
                               [raw_row[label] for raw_row in raw for label in labels], rtol=RAW_TOLERANCE,
                               atol=RAW_TOLERANCE)


def test_a_top_k_or_raw_request_after_a_full_one_is_a_cache_hit(stack, kind):
    triton, transformer = stack
    texts = [f"cache view {kind} {time.monotonic_ns()} {i}" for i in range(3)]
    with httpx.Client(base_url=transformer.url, timeout=30) as client:
        full = client.post("/project/bulk-predict", json={"text": texts})
        assert full.status_code == 200
        runs = triton.settled_inference_count()
        hits = transformer.metric("sentiment_texts_total", source="cache")
        views = [client.post("/project/bulk-predict", json={"text": texts, "top_k": 1}),
                 client.post("/v1/models/sentiment:predict", json={"instances": texts,
                                                                    "parameters": {"raw_scores": True}})]
        assert all(view.status_code == 200 for view in views)
    assert triton.settled_inference_count() == runs, "a view of a cached text ran the model again"
    assert transformer.metric("sentiment_texts_total", source="cache") - hits == 2 * len(texts)
    top = [ranked[0] for ranked in full.json()["predictions"]]
    assert [ranked for ranked in views[0].json()["predictions"]] == [[item] for item in top]


@pytest.mark.parametrize("body, fragment", [
    ({"text": ["a"], "top_k": 0}, "top_k must be an integer >= 1"),
    ({"text": ["a"], "top_k": "all"}, "top_k must be an integer >= 1"),
    ({"text": ["a"], "raw_scores": "yes"}, "raw_scores must be true or false"),
])
def test_bad_options_are_422_that_say_what_to_fix(stack, body, fragment):
    _triton, transformer = stack
    response = httpx.post(f"{transformer.url}/project/bulk-predict", json=body, timeout=10)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request" and fragment in response.json()["error"]
    [grpc] = grpc_calls(f"127.0.0.1:{transformer.grpc_port}",
                        [{"op": "infer", "texts": ["a"], "parameters": {"top_k": 0}}])
    assert grpc["status"] == "INVALID_ARGUMENT" and "top_k must be an integer >= 1" in grpc["message"]
