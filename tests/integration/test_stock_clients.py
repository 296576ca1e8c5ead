"""Every stock client a user has, against the real stack (Triton binary, redis-server, the transformer
process on real sockets): curl, tritonclient.http (binary, JSON, gzip, deflate, versions, requested
outputs), tritonclient.grpc (in a subprocess: its protobufs clash with kserve's), kserve's REST (V1,
V2) and gRPC clients. Each returns the same labels and scores as `/project/bulk-predict` for the
same texts, the metadata and error answers agree across transports, and every request is counted
in `sentiment_requests_total` with its protocol."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import TransformerServer
from tests.support.metrics import request_counts

pytestmark = pytest.mark.usefixtures("require_redis_server")

LABELS = ("NEGATIVE", "POSITIVE")  # the tiny models' id2label
TOLERANCE = 1e-5
GRPC_SCRIPT = Path(__file__).resolve().parent.parent / "support_grpc_client.py"
INFER = "/v2/models/{name}/infer"


# ---- the stack ----------------------------------------------------------------------------------
# What the service counted before the first test: the fixture's readiness polls of /project/health,
# one of which can land in the few milliseconds between the server's start and its first predictor
# check and get a correct 503 (not ready yet). The last test judges only what the tests sent.
_counted_at_start: Counter = Counter()


@pytest.fixture(scope="module")
def transformer(tiny_service):
    _counted_at_start.update(request_counts(tiny_service))
    return tiny_service


@pytest.fixture(scope="module")
def http(transformer):
    with httpx.Client(base_url=transformer.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def address(transformer) -> str:
    return transformer.url.removeprefix("http://")


@pytest.fixture(scope="module")
def grpc_address(transformer) -> str:
    return f"127.0.0.1:{transformer.grpc_port}"


# ---- helpers --------------------------------------------------------------------------------------
_counter = 0


def fresh(tag: str) -> list[str]:
    """Texts no other request sent: the first request that sends them runs the model for them.
    Mixed: plain, unicode, empty, and one longer than the tiny model's 128-token window."""
    global _counter
    _counter += 1
    stamp = f"{tag} {_counter} {time.monotonic_ns()}"
    return [f"i love this {stamp}", f"this is bad {stamp}", f"caf\u00e9 \u2603 \u65e5\u672c {stamp}", "",
            " ".join(f"word{i}" for i in range(200)) + f" {stamp}"]


COMMON = ["i love this film", "this is bad", "meh", "\u00a1incre\u00edble!"]


def reference(http: httpx.Client, texts: list[str]) -> tuple[list[str], np.ndarray]:
    """Top labels and probabilities (id2label order) from /project/bulk-predict."""
    response = http.post("/project/bulk-predict", json={"text": texts})
    assert response.status_code == 200, response.text
    labels, probabilities = [], []
    for ranked in response.json()["predictions"]:
        by_label = {item["label"]: item["score"] for item in ranked}
        labels.append(ranked[0]["label"])
        probabilities.append([by_label[label] for label in LABELS])
    return labels, np.array(probabilities, dtype=np.float64)


def assert_same(http: httpx.Client, texts: list[str], labels, scores, probabilities=None) -> None:
    expected_labels, expected = reference(http, texts)
    labels = [label.decode() if isinstance(label, bytes) else label for label in np.asarray(labels).reshape(-1)]
    assert labels == expected_labels
    np.testing.assert_allclose(np.asarray(scores, dtype=np.float64).reshape(-1), expected.max(axis=1), atol=TOLERANCE)
    if probabilities is not None:
        np.testing.assert_allclose(np.asarray(probabilities, dtype=np.float64).reshape(len(texts), len(LABELS)),
                                   expected, atol=TOLERANCE)


@contextmanager
def counted(server: TransformerServer, *expected: tuple[str, str, str, int]):
    """The block's requests are counted exactly as `(protocol, route, status, times)` say, and nothing else."""
    want = Counter({(protocol, route, status): times for protocol, route, status, times in expected})
    before = request_counts(server)
    yield
    last: dict = {}

    def matches() -> bool:
        delta = request_counts(server) - before
        last["delta"] = dict(delta)
        return delta == want

    if not wait_until_quietly(matches, 5):
        pytest.fail(f"sentiment_requests_total changed by {last.get('delta')}, expected {dict(want)}")


def wait_until_quietly(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def tritonclient_grpc(grpc_address: str, calls: list[dict]) -> list[dict]:
    """Run tritonclient.grpc in its own process (see tests/support_grpc_client.py)."""
    result = subprocess.run([sys.executable, str(GRPC_SCRIPT), grpc_address], input=json.dumps(calls),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def curl(*args: str) -> tuple[int, bytes, str]:
    """(HTTP status, body, verbose trace) of one curl call."""
    result = subprocess.run(["curl", "-sS", "-v", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}", *args],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    body, _, status = result.stdout.rpartition(b"\n")
    return int(status), body, result.stderr.decode(errors="replace")


def sent_headers(trace: str) -> str:
    return "\n".join(line[2:] for line in trace.splitlines() if line.startswith("> ")).lower()


def v2_outputs(document: dict) -> dict:
    return {output["name"]: output for output in document["outputs"]}


# ---- curl -----------------------------------------------------------------------------------------
def test_curl_with_and_without_content_type(transformer, http):
    texts = fresh("curl")
    bulk_body = json.dumps({"text": texts})
    with counted(transformer, ("rest", "/project/bulk-predict", "200", 4)):  # 2 by curl, 2 references
        for header in ("Content-Type: application/json", "Content-Type:"):
            status, body, trace = curl("-X", "POST", transformer.url + "/project/bulk-predict", "-H", header,
                                       "--data-binary", bulk_body)
            assert status == 200, body
            if header == "Content-Type:":
                assert "content-type" not in sent_headers(trace)
            predictions = json.loads(body)["predictions"]
            assert_same(http, texts, [p[0]["label"] for p in predictions], [p[0]["score"] for p in predictions])

    texts = fresh("curl-v1")
    instances = [texts[0], {"text": texts[1]}, *texts[2:]]
    with counted(transformer, ("rest", "/v1/models/{name}:predict", "200", 1),
                 ("rest", "/project/bulk-predict", "200", 1)):
        status, body, trace = curl("-X", "POST", transformer.url + "/v1/models/sentiment:predict",
                                   "-H", "Content-Type:", "--data-binary", json.dumps({"instances": instances}))
        assert status == 200, body
        assert "content-type" not in sent_headers(trace)
        predictions = json.loads(body)["predictions"]
        assert_same(http, texts, [p[0]["label"] for p in predictions], [p[0]["score"] for p in predictions])


def test_curl_v2_json_and_binary_without_content_type(transformer, http, tmp_path):
    texts = fresh("curl-v2")
    request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    with counted(transformer, ("rest", INFER, "200", 2), ("rest", "/project/bulk-predict", "200", 2)):
        status, body, trace = curl("-X", "POST", transformer.url + "/v2/models/sentiment/infer", "-H", "Content-Type:",
                                   "--data-binary", json.dumps(request))
        assert status == 200, body
        assert "content-type" not in sent_headers(trace)
        outputs = v2_outputs(json.loads(body))
        assert_same(http, texts, outputs["label"]["data"], outputs["score"]["data"], outputs["probabilities"]["data"])

        # The binary tensor extension by hand: JSON header, then 4-byte little-endian length + bytes per text.
        texts = fresh("curl-v2-binary")
        raw = b"".join(len(t.encode()).to_bytes(4, "little") + t.encode() for t in texts)
        header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)],
                                         "parameters": {"binary_data_size": len(raw)}}],
                             "outputs": [{"name": "label"}, {"name": "score"}]}).encode()
        path = tmp_path / "binary-request"
        path.write_bytes(header + raw)
        status, body, trace = curl("-X", "POST", transformer.url + "/v2/models/sentiment/versions/1/infer",
                                   "-H", "Content-Type:", "-H", f"Inference-Header-Content-Length: {len(header)}",
                                   "--data-binary", f"@{path}")
        assert status == 200, body
        assert "content-type" not in sent_headers(trace)
        outputs = v2_outputs(json.loads(body))
        assert sorted(outputs) == ["label", "score"]
        assert_same(http, texts, outputs["label"]["data"], outputs["score"]["data"])


# ---- tritonclient.http ------------------------------------------------------------------------------
def _http_input(texts: list[str], binary: bool = True):
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
    return tensor


def test_tritonclient_http_binary_default(transformer, http, address):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(address)
    for texts in (COMMON, fresh("tc-binary")):
        with counted(transformer, ("rest", INFER, "200", 1), ("rest", "/project/bulk-predict", "200", 1)):
            result = client.infer("sentiment", [_http_input(texts)])
            assert result.get_response()["model_version"] == "1"
            assert_same(http, texts, result.as_numpy("label"), result.as_numpy("score"),
                        result.as_numpy("probabilities"))
    client.close()


def test_tritonclient_http_json_mode_sends_no_content_type(transformer, http, address):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(address)
    texts = fresh("tc-json")
    outputs = [httpclient.InferRequestedOutput(name, binary_data=False) for name in ("label", "score", "probabilities")]
    with counted(transformer, ("rest", INFER, "200", 1), ("rest", "/project/bulk-predict", "200", 1)):
        result = client.infer("sentiment", [_http_input(texts, binary=False)], outputs=outputs)
        response = result.get_response()
        for output in response["outputs"]:  # JSON data, no binary tail
            assert "data" in output and "binary_data_size" not in output.get("parameters", {})
        assert_same(http, texts, result.as_numpy("label"), result.as_numpy("score"), result.as_numpy("probabilities"))
    client.close()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_http_compressed_request(transformer, http, address, algorithm):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(address)
    texts = fresh(f"tc-{algorithm}")
    with counted(transformer, ("rest", INFER, "200", 1), ("rest", "/project/bulk-predict", "200", 1)):
        result = client.infer("sentiment", [_http_input(texts)], request_compression_algorithm=algorithm)
        assert_same(http, texts, result.as_numpy("label"), result.as_numpy("score"), result.as_numpy("probabilities"))
    client.close()


def test_tritonclient_http_version_and_requested_outputs(transformer, http, address):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(address)
    texts = fresh("tc-version")
    with counted(transformer, ("rest", INFER, "200", 3), ("rest", "/project/bulk-predict", "200", 3)):
        result = client.infer("sentiment", [_http_input(texts)], model_version="1")
        assert result.get_response()["model_version"] == "1"
        assert_same(http, texts, result.as_numpy("label"), result.as_numpy("score"), result.as_numpy("probabilities"))

        # Only what was asked comes back, in binary or JSON as asked.
        result = client.infer("sentiment", [_http_input(texts)], model_version="1",
                              outputs=[httpclient.InferRequestedOutput("score"),
                                       httpclient.InferRequestedOutput("label", binary_data=False)])
        assert sorted(o["name"] for o in result.get_response()["outputs"]) == ["label", "score"]
        assert result.as_numpy("probabilities") is None
        assert_same(http, texts, result.as_numpy("label"), result.as_numpy("score"))

        # The detail outputs, on request only.
        result = client.infer("sentiment", [_http_input(texts)], outputs=[httpclient.InferRequestedOutput("windows"),
                                                                           httpclient.InferRequestedOutput("truncated"),
                                                                           httpclient.InferRequestedOutput("score")])
        assert sorted(o["name"] for o in result.get_response()["outputs"]) == ["score", "truncated", "windows"]
        windows = result.as_numpy("windows")
        assert windows.dtype == np.int32 and windows[-1] > 1 and list(windows[:-1]) == [1] * (len(texts) - 1)
        assert result.as_numpy("truncated").dtype == np.bool_
        _, expected = reference(http, texts)
        np.testing.assert_allclose(result.as_numpy("score"), expected.max(axis=1), atol=TOLERANCE)
    client.close()


def test_tritonclient_http_metadata_ready_and_refusals(transformer, address):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(address)
    route = "/v2/models/{name}"
    with counted(transformer, ("rest", route, "200", 4), ("rest", "/v2/health", "200", 1)):
        for version in ("", "1"):
            metadata = client.get_model_metadata("sentiment", version)
            assert metadata["versions"] == ["1"]
            assert [i["name"] for i in metadata["inputs"]] == ["text"]
            assert {"label", "score", "probabilities"} <= {o["name"] for o in metadata["outputs"]}
            assert client.is_model_ready("sentiment", version) is True
        assert client.is_server_ready() is True

    with counted(transformer, ("rest", INFER, "404", 2), ("rest", route, "404", 3), ("rest", INFER, "422", 1)):
        for model, version in (("other", ""), ("sentiment", "2")):
            with pytest.raises(InferenceServerException) as caught:
                client.infer(model, [_http_input(["x"])], model_version=version)
            assert caught.value.status() == "404"
            assert (model if model == "other" else "version '2'") in caught.value.message()
        with pytest.raises(InferenceServerException) as caught:
            client.get_model_metadata("sentiment", "2")
        assert caught.value.status() == "404"
        assert client.is_model_ready("other") is False
        assert client.is_model_ready("sentiment", "2") is False
        with pytest.raises(InferenceServerException) as caught:
            client.infer("sentiment", [_http_input(["x"])], outputs=[httpclient.InferRequestedOutput("nope")])
        assert caught.value.status() == "422" and "nope" in caught.value.message()
    client.close()


def test_rest_error_bodies_name_their_code(transformer, http):
    """The codes the stock clients above only see as statuses, read from the raw answers."""
    cases = [
        ("POST", "/v2/models/other/infer", {"inputs": []}, 404, "model_not_found"),
        ("POST", "/v2/models/sentiment/versions/2/infer", {"inputs": []}, 404, "model_not_found"),
        ("GET", "/v2/models/other", None, 404, "model_not_found"),
        ("GET", "/v2/models/sentiment/versions/2", None, 404, "model_not_found"),
        ("GET", "/v2/models/sentiment/versions/2/ready", None, 404, "model_not_found"),
        ("POST", "/v2/models/sentiment/infer", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                                             "data": ["x"]}], "outputs": [{"name": "nope"}]},
         422, "invalid_request"),
    ]
    for method, path, body, status, code in cases:
        response = http.request(method, path, json=body)
        assert response.status_code == status, (path, response.text)
        assert response.json()["code"] == code, (path, response.text)
        assert isinstance(response.json()["error"], str)


# ---- tritonclient.grpc (in a subprocess) ------------------------------------------------------------
def test_tritonclient_grpc(transformer, http, grpc_address):
    texts = fresh("tc-grpc")
    calls = [
        {"op": "infer", "texts": COMMON},
        {"op": "infer", "texts": texts},
        {"op": "infer", "texts": texts, "model_version": "1"},
        {"op": "infer", "texts": texts, "outputs": ["score", "label"]},
        {"op": "infer", "texts": texts, "outputs": ["probabilities"]},
    ]
    with counted(transformer, ("grpc", "ModelInfer", "200", len(calls))):
        results = tritonclient_grpc(grpc_address, calls)
    assert len(results) == len(calls)
    for result in results:
        assert result["ok"], result
        assert result["model_name"] == "sentiment" and result["model_version"] == "1"
    for result, sent in zip(results[:3], (COMMON, texts, texts)):
        outputs = result["outputs"]
        assert sorted(outputs) == ["label", "probabilities", "score"]
        assert outputs["probabilities"]["shape"] == [len(sent), 2] and outputs["probabilities"]["datatype"] == "FP32"
        assert_same(http, sent, outputs["label"]["data"], outputs["score"]["data"], outputs["probabilities"]["data"])
    assert sorted(results[3]["outputs"]) == ["label", "score"]
    assert_same(http, texts, results[3]["outputs"]["label"]["data"], results[3]["outputs"]["score"]["data"])
    assert sorted(results[4]["outputs"]) == ["probabilities"]
    _, expected = reference(http, texts)
    np.testing.assert_allclose(np.reshape(results[4]["outputs"]["probabilities"]["data"], (len(texts), 2)), expected,
                               atol=TOLERANCE)


def test_tritonclient_grpc_metadata_ready_and_refusals(transformer, grpc_address):
    calls = [
        {"op": "metadata"}, {"op": "metadata", "model_version": "1"},
        {"op": "ready"}, {"op": "ready", "model_version": "1"}, {"op": "server_ready"}, {"op": "server_live"},
        {"op": "infer", "texts": ["x"], "model_name": "other"},
        {"op": "infer", "texts": ["x"], "model_version": "2"},
        {"op": "metadata", "model_name": "other"}, {"op": "metadata", "model_version": "2"},
        {"op": "ready", "model_name": "other"}, {"op": "ready", "model_version": "2"},
        {"op": "infer", "texts": ["x"], "outputs": ["score", "nope"]},
    ]
    with counted(transformer, ("grpc", "ModelMetadata", "200", 2), ("grpc", "ModelReady", "200", 2),
                 ("grpc", "ServerReady", "200", 1), ("grpc", "ServerLive", "200", 1),
                 ("grpc", "ModelInfer", "404", 2), ("grpc", "ModelMetadata", "404", 2),
                 ("grpc", "ModelReady", "404", 2), ("grpc", "ModelInfer", "422", 1)):
        results = tritonclient_grpc(grpc_address, calls)
    for result in results[:2]:
        assert result["ok"], result
        assert result["value"]["versions"] == ["1"]
        assert [i["name"] for i in result["value"]["inputs"]] == ["text"]
    assert [r["value"] for r in results[2:6]] == [True, True, True, True]
    for result in results[6:12]:
        assert not result["ok"]
        assert result["status"] == "NOT_FOUND", result
        assert result["metadata"].get("sentiment-error-code") == "model_not_found", result
    assert results[12]["status"] == "INVALID_ARGUMENT" and "nope" in results[12]["message"]
    assert results[12]["metadata"].get("sentiment-error-code") == "invalid_request"


# ---- kserve's clients -----------------------------------------------------------------------------
def test_kserve_rest_client_v1_and_v2(transformer, http):
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def call(texts_v1, texts_v2):
        v1 = InferenceRESTClient(RESTConfig(protocol="v1", retries=0))
        v2 = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        try:
            first = await v1.infer(transformer.url, {"instances": texts_v1}, model_name="sentiment")
            tensor = InferInput("text", [len(texts_v2)], "BYTES")
            tensor.set_data_from_numpy(np.array([t.encode() for t in texts_v2], dtype=object))
            second = await v2.infer(transformer.url, InferRequest(model_name="sentiment", infer_inputs=[tensor]),
                                    model_name="sentiment")
            return first, second
        finally:
            await v1.close()
            await v2.close()

    texts_v1, texts_v2 = fresh("kserve-v1"), fresh("kserve-v2")
    with counted(transformer, ("rest", "/v1/models/{name}:predict", "200", 1), ("rest", INFER, "200", 1),
                 ("rest", "/project/bulk-predict", "200", 2)):
        first, second = asyncio.run(call(texts_v1, texts_v2))
        predictions = first["predictions"]
        assert_same(http, texts_v1, [p[0]["label"] for p in predictions], [p[0]["score"] for p in predictions])
        assert_same(http, texts_v2, second.get_output_by_name("label").as_numpy(),
                    second.get_output_by_name("score").as_numpy(),
                    second.get_output_by_name("probabilities").as_numpy())


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "typed-contents"])
def test_kserve_grpc_client(transformer, http, grpc_address, binary):
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def call(texts):
        client = InferenceGRPCClient(grpc_address, retries=0)
        try:
            tensor = InferInput("text", [len(texts)], "BYTES")
            tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
            response = await client.infer(InferRequest(model_name="sentiment", infer_inputs=[tensor]))
            ready = (await client.is_server_ready(), await client.is_model_ready("sentiment"))
            return response, ready
        finally:
            await client.close()

    texts = fresh(f"kserve-grpc-{binary}")
    with counted(transformer, ("grpc", "ModelInfer", "200", 1), ("grpc", "ServerReady", "200", 1),
                 ("grpc", "ModelReady", "200", 1), ("rest", "/project/bulk-predict", "200", 1)):
        response, ready = asyncio.run(call(texts))
        assert ready == (True, True)
        assert response.model_name == "sentiment"
        assert_same(http, texts, response.get_output_by_name("label").as_numpy(),
                    response.get_output_by_name("score").as_numpy(),
                    response.get_output_by_name("probabilities").as_numpy())


def test_grpc_refusals_carry_the_code_in_trailing_metadata(transformer, grpc_address):
    """KServe's own stub (the raw protobufs) sees the same refusals as tritonclient.grpc, with the code."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    def infer(model_name="sentiment", version="", outputs=()):
        request = pb.ModelInferRequest(model_name=model_name, model_version=version)
        tensor = request.inputs.add(name="text", datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(b"x")
        for name in outputs:
            request.outputs.add(name=name)
        return request

    cases = [
        ("ModelInfer", infer(model_name="other"), grpc.StatusCode.NOT_FOUND, "model_not_found"),
        ("ModelInfer", infer(version="2"), grpc.StatusCode.NOT_FOUND, "model_not_found"),
        ("ModelInfer", infer(outputs=("nope",)), grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
        ("ModelMetadata", pb.ModelMetadataRequest(name="x" * 10_000), grpc.StatusCode.NOT_FOUND, "model_not_found"),
        ("ModelReady", pb.ModelReadyRequest(name="sentiment", version="2"), grpc.StatusCode.NOT_FOUND,
         "model_not_found"),
    ]
    with grpc.insecure_channel(grpc_address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        for method, request, status, code in cases:
            with pytest.raises(grpc.RpcError) as caught:
                getattr(stub, method)(request, timeout=10)
            assert caught.value.code() == status, (method, caught.value.details())
            assert dict(caught.value.trailing_metadata())["sentiment-error-code"] == code
            assert len(caught.value.details()) < 400  # a 10 KB name is not echoed back
        response = stub.ModelInfer(infer(version="1", outputs=("label",)), timeout=10)
        assert [o.name for o in response.outputs] == ["label"] and response.model_version == "1"


def test_every_request_above_was_counted_by_protocol(transformer):
    """Both protocols appear in the request counter, and nothing the tests sent was a 5xx."""
    counts = request_counts(transformer) - _counted_at_start
    protocols = {protocol for protocol, _route, _status in counts}
    assert protocols == {"rest", "grpc"}
    assert not {key: n for key, n in counts.items() if key[2].startswith("5")}
    assert counts[("grpc", "ModelInfer", "200")] > 0 and counts[("rest", INFER, "200")] > 0
