"""The transformer for real: its process, the bundled Triton serving a tiny exported BERT, and a
redis-server, all started on free ports. Faults are real too: processes are stopped and restarted."""

import asyncio
import json
import time

import httpx
import numpy as np
import pytest

from tests.conftest import RedisServer, TransformerServer, TritonServer, wait_until
from transformer.bundle import BUNDLE_FILE

pytestmark = pytest.mark.usefixtures("require_redis_server")


@pytest.fixture(scope="module")
def triton(tiny_triton):
    return tiny_triton


@pytest.fixture(scope="module")
def redis(module_redis):
    return module_redis


@pytest.fixture(scope="module")
def transformer(tiny_service):
    return tiny_service


@pytest.fixture(scope="module")
def client(transformer):
    with httpx.Client(base_url=transformer.url, timeout=15) as client:
        yield client


def bulk(client, texts, **kwargs):
    return client.post("/project/bulk-predict", json={"text": texts}, **kwargs)


def unique(prefix: str) -> str:
    return f"{prefix} {time.monotonic_ns()}"


# ---- the API ---------------------------------------------------------------------------------------
def test_bulk_predict_returns_every_label_ranked_in_input_order(client):
    texts = [unique("i love this"), unique("this is bad"), "", unique("ok")]
    response = bulk(client, texts)
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == len(texts)
    for ranked in predictions:
        assert sorted(item["label"] for item in ranked) == ["NEGATIVE", "POSITIVE"]
        scores = [item["score"] for item in ranked]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    for text, ranked in zip(texts, predictions):  # each text's answer is its own, not its neighbour's
        assert bulk(client, [text]).json()["predictions"][0] == ranked


def test_v1_predict_has_the_same_shape(client):
    texts = [unique("great"), unique("awful")]
    v1 = client.post("/v1/models/sentiment:predict", json={"instances": texts})
    assert v1.status_code == 200
    assert v1.json()["predictions"] == bulk(client, texts).json()["predictions"]


def test_v2_rest_with_tritonclient(transformer, client):
    import tritonclient.http as httpclient

    texts = [unique("wonderful"), unique("terrible")]
    triton_client = httpclient.InferenceServerClient(transformer.url.removeprefix("http://"))
    tensor = httpclient.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    result = triton_client.infer("sentiment", [tensor])
    labels = [label.decode() for label in result.as_numpy("label")]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    expected = bulk(client, texts).json()["predictions"]
    assert labels == [ranked[0]["label"] for ranked in expected]
    np.testing.assert_allclose(result.as_numpy("score"), [ranked[0]["score"] for ranked in expected], atol=1e-6)


def test_v2_grpc_with_kserve_client(transformer, client):
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    texts = [unique("fine"), unique("dreadful"), unique("superb")]

    async def call():
        grpc_client = InferenceGRPCClient(f"127.0.0.1:{transformer.grpc_port}", retries=0)
        tensor = InferInput("text", [len(texts)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
        response = await grpc_client.infer(InferRequest(model_name="sentiment", infer_inputs=[tensor]))
        await grpc_client.close()
        return response

    response = asyncio.run(call())
    probabilities = response.get_output_by_name("probabilities").as_numpy().reshape(len(texts), 2)
    expected = [[item["score"] for item in sorted(ranked, key=lambda i: i["label"])]
                for ranked in bulk(client, texts).json()["predictions"]]
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)  # id2label order: NEGATIVE, POSITIVE


def test_v2_grpc_rejects_bad_input_with_invalid_argument(transformer):
    import grpc
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def call():
        grpc_client = InferenceGRPCClient(f"127.0.0.1:{transformer.grpc_port}", retries=0)
        tensor = InferInput("wrong", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([b"x"], dtype=object))
        try:
            await grpc_client.infer(InferRequest(model_name="sentiment", infer_inputs=[tensor]))
        finally:
            await grpc_client.close()

    with pytest.raises(grpc.RpcError) as raised:
        asyncio.run(call())
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "text" in raised.value.details()


def test_model_metadata_describes_the_tensors(client):
    metadata = client.get("/v2/models/sentiment").json()
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: o["datatype"] for o in metadata["outputs"]} == {
        "label": "BYTES", "score": "FP32", "probabilities": "FP32", "tokens": "INT32", "windows": "INT32",
        "truncated": "BOOL"}
    assert metadata["versions"] == ["1"]
    assert [o for o in metadata["outputs"] if o["name"] == "probabilities"][0]["shape"] == [-1, 2]


def test_health_liveness_and_kserve_readiness(client):
    assert client.get("/project/health").json() == {"status": "healthy"}
    assert client.get("/project/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/models/sentiment/ready").status_code == 200


# ---- the cache ---------------------------------------------------------------------------------------
def test_repeated_request_does_not_reach_the_predictor(client, triton):
    texts = [unique("first visit"), unique("second text")]
    assert bulk(client, texts).status_code == 200
    before = triton.settled_inference_count()
    repeated = bulk(client, texts)
    assert repeated.status_code == 200
    assert triton.settled_inference_count() == before


def test_duplicates_inside_a_request_are_computed_once(client, triton):
    a, b = unique("same words"), unique("other words")
    before = triton.settled_inference_count()
    response = bulk(client, [a, b, a, f"  {a.upper()} ", b])
    assert response.status_code == 200
    assert triton.settled_inference_count() - before == 2  # normalization: case and whitespace do not matter
    predictions = response.json()["predictions"]
    assert predictions[0] == predictions[2] == predictions[3]


def test_cache_entries_are_written_to_redis_with_a_ttl(client, redis):
    import redis as redis_client

    text = unique("ttl check")
    before = len(redis_client.Redis(port=redis.port).keys("sentiment:*"))
    bulk(client, [text])
    connection = redis_client.Redis(port=redis.port)
    wait_until(lambda: len(connection.keys("sentiment:*")) > before, 2, 0.02, message="write-behind to Redis")
    keys = connection.keys("sentiment:*")
    ttl = connection.ttl(keys[0])
    assert 0 < ttl <= 86400
    assert len(connection.get(keys[0])) == 25  # format byte, token and window counts, two float32 scores, two logits


# ---- limits and validation -----------------------------------------------------------------------
@pytest.mark.parametrize("body, status, fragment", [
    ({"text": ["x"] * 257}, 413, "limit is 256"),
    ({"text": ["x" * 50_001]}, 413, "50001 characters"),
    ({"text": []}, 422, "empty"),
    ({"texts": ["x"]}, 422, '"text"'),
    ({"text": "just a string"}, 422, "list of strings"),
    ({"text": ["ok", 3]}, 422, "text[1] is int"),
    ({"text": [["nested"]]}, 422, "text[0] is list"),
    (["not", "an", "object"], 422, '"text"'),
])
def test_bad_bulk_requests_get_a_clear_4xx(client, body, status, fragment):
    response = client.post("/project/bulk-predict", json=body)
    assert response.status_code == status
    assert fragment in response.json()["error"]
    assert client.get("/project/health").status_code == 200  # and the server stays up


def test_not_json_wrong_type_and_oversized_bodies(client, transformer):
    not_json = client.post("/project/bulk-predict", content=b'{"text": [', headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["error"]
    form = client.post(
        "/project/bulk-predict", content=b"text=hello", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert form.status_code == 415 and "application/json" in form.json()["error"]
    huge = client.post(
        "/project/bulk-predict", content=b"x" * (4 * 1024 * 1024 + 1), headers={"content-type": "application/json"}
    )
    assert huge.status_code == 413
    v1 = client.post("/v1/models/sentiment:predict", json={"instances": "nope"})
    assert v1.status_code == 422
    v2 = client.post(
        "/v2/models/sentiment/infer",
        json={"inputs": [{"name": "text", "datatype": "INT64", "shape": [1], "data": [1]}]},
    )
    assert v2.status_code == 422 and "BYTES" in v2.json()["error"]
    for response in (not_json, form, huge, v1, v2):
        assert "Traceback" not in response.text
    assert client.get("/project/health").status_code == 200


def test_metrics_cover_requests_cache_and_predictor(client, transformer):
    bulk(client, [unique("metric")])
    text = client.get("/metrics").text
    for family in ("sentiment_requests_total", "sentiment_request_duration_seconds", "sentiment_cache_lookups_total",
                   "sentiment_texts_per_request", "sentiment_predictor_batch_size",
                   "sentiment_predictor_latency_seconds",
                   "sentiment_tokenize_seconds", "sentiment_predictor_ready"):
        assert family in text
    assert transformer.metric("sentiment_requests_total", route="/project/bulk-predict", status="200") > 0
    assert transformer.metric("sentiment_predictor_ready") == 1


def test_rest_v2_to_the_predictor_gives_the_same_answers(triton, client, logs_dir):
    rest = TransformerServer(triton, logs_dir, protocol="v2").start()
    try:
        texts = [unique("rest path"), unique("another")]
        via_rest = httpx.post(rest.url + "/project/bulk-predict", json={"text": texts}, timeout=10).json()
        via_grpc = bulk(client, texts).json()
        for ranked_rest, ranked_grpc in zip(via_rest["predictions"], via_grpc["predictions"]):
            assert [i["label"] for i in ranked_rest] == [i["label"] for i in ranked_grpc]
            assert ranked_rest[0]["score"] == pytest.approx(ranked_grpc[0]["score"], abs=1e-6)
    finally:
        rest.stop()


# ---- faults ----------------------------------------------------------------------------------------
def test_redis_down_then_back(triton, logs_dir):
    """Redis stops mid-test: requests still 200 (fail open); Redis returns: cache hits resume."""
    redis = RedisServer(logs_dir / "fault-redis").start()
    server = TransformerServer(triton, logs_dir, extra_args=["--redis_url", redis.url, "--hot_cache_size", "0",
                                                             "--breaker_reset", "0.5"]).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            assert bulk(http, [unique("before")]).status_code == 200
            redis.stop()
            started = time.monotonic()
            for i in range(5):
                assert bulk(http, [unique(f"while down {i}")]).status_code == 200
            assert time.monotonic() - started < 5
            assert server.metric("sentiment_cache_errors_total") > 0
            redis.start()  # same port, empty
            text = unique("after")
            hits_before = server.metric("sentiment_cache_lookups_total", tier="redis", result="hit")

            def hit_again():
                bulk(http, [text])
                return server.metric("sentiment_cache_lookups_total", tier="redis", result="hit") > hits_before

            assert wait_until(hit_again, timeout=5, interval=0.2, message="redis cache hits after restart") < 5
    finally:
        server.stop()
        redis.stop()


def test_triton_down_then_back(tiny_repositories, logs_dir):
    """Triton stops: new texts get a 503 JSON quickly, health turns 503 within 5 s, liveness stays 200,
    cached texts are still served; Triton restarts on the same ports: full recovery, no transformer restart."""
    triton = TritonServer(tiny_repositories["bert"], logs_dir / "fault-triton").start()
    server = TransformerServer(triton, logs_dir).start()
    try:
        with httpx.Client(base_url=server.url, timeout=15) as http:
            cached = unique("cached before the outage")
            assert bulk(http, [cached]).status_code == 200
            triton.stop()
            started = time.monotonic()
            response = bulk(http, [unique("needs the model")])
            assert response.status_code == 503
            assert time.monotonic() - started < 10
            assert response.json()["code"] == "predictor_unavailable"
            assert wait_until(lambda: http.get("/project/health").status_code == 503, 5, message="health 503") < 5
            assert "not ready" in http.get("/project/health").json()["reason"]
            assert http.get("/project/live").status_code == 200
            assert bulk(http, [cached]).status_code == 200
            triton.start()
            wait_until(lambda: http.get("/project/health").status_code == 200, 10, message="health back")
            assert bulk(http, [unique("after the outage")]).status_code == 200
            assert server.process.alive()
    finally:
        server.stop()
        triton.stop()


def test_fingerprint_mismatch_keeps_the_transformer_not_ready(triton, logs_dir, copy_tree):
    bundle_dir = copy_tree(triton.repository / "sentiment" / "1" / "bundle", "other-bundle")
    bundle = json.loads((bundle_dir / BUNDLE_FILE).read_text())
    bundle["fingerprint"] = "0" * 64
    (bundle_dir / BUNDLE_FILE).write_text(json.dumps(bundle))
    server = TransformerServer(triton, logs_dir, extra_args=["--model_bundle", str(bundle_dir)]).start(
        wait_healthy=False
    )
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            def mismatch_reported():
                response = http.get("/project/health")
                return response.status_code == 503 and "fingerprint mismatch" in response.json()["reason"]

            wait_until(mismatch_reported, 10, message="fingerprint mismatch in /project/health")
            assert http.get("/v2/models/sentiment/ready").status_code == 503
            assert http.post("/v1/models/sentiment:predict", json={"instances": ["x"]}).status_code == 503
            refused = http.post("/project/bulk-predict", json={"text": [unique("x")]})
            assert refused.status_code == 503 and "fingerprint mismatch" in refused.json()["error"]
        assert "fingerprint mismatch" in server.process.log_file.read_text()
    finally:
        server.stop()
