"""API keys on the real stack: a transformer started with API_KEYS in front of the tiny model on a
real Triton. curl, httpx, tritonclient (HTTP and gRPC) and KServe's own clients with a key, without
one and with a wrong one; probes without a key; rotation on a live process by SIGHUP and by a file
change; the counter by outcome; no key in the log."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import TransformerServer, wait_until
from tests.support.sockets import listening_addresses

GRPC_SCRIPT = Path(__file__).resolve().parent.parent / "support_grpc_client.py"
FIRST_KEY = "first-key-0123456789abcdef"
SECOND_KEY = "second-key-0123456789abcde"  # as long as FIRST_KEY: the file keeps its size
THIRD_KEY = "third-key-rotated-by-file-change"


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("api-keys") / "keys"
    path.write_text(f"# API keys\n{FIRST_KEY}\n")
    return path


@pytest.fixture(scope="module")
def keyed(tiny_triton, logs_dir, keys_file):
    server = TransformerServer(tiny_triton, logs_dir / "api-keys", extra_args=["--api_keys", str(keys_file)]).start()
    yield server
    server.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def bulk(server, headers=None, texts=("i love this",)) -> httpx.Response:
    return httpx.post(f"{server.url}/project/bulk-predict", json={"text": list(texts)}, headers=headers or {},
                      timeout=15)


def grpc_calls(server, calls: list[dict]) -> list[dict]:
    result = subprocess.run([sys.executable, str(GRPC_SCRIPT), f"127.0.0.1:{server.grpc_port}"],
                            input=json.dumps(calls), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_401(response: httpx.Response, fragment: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert body["code"] == "unauthorized" and fragment in body["error"]


def test_curl_with_the_key_is_served_and_without_it_is_401(keyed):
    def curl(*headers: str) -> tuple[int, dict]:
        args = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", f"{keyed.url}/project/bulk-predict",
                "-H", "Content-Type: application/json", "-d", '{"text": ["i love this"]}']
        for header in headers:
            args += ["-H", header]
        result = subprocess.run(args, capture_output=True, text=True, timeout=30)
        body, _, status = result.stdout.rpartition("\n")
        return int(status), json.loads(body)

    status, body = curl(f"Authorization: Bearer {FIRST_KEY}")
    assert status == 200 and body["predictions"][0][0]["label"] in ("NEGATIVE", "POSITIVE")
    assert curl() == (401, {"error": "this server needs an API key: send 'Authorization: Bearer <key>'",
                            "code": "unauthorized"})
    status, body = curl("Authorization: Bearer nope")
    assert status == 401 and body["code"] == "unauthorized"


def test_every_inference_and_metadata_route_needs_the_key(keyed):
    v2_body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["great"]}]}
    calls = [("POST", "/project/bulk-predict", {"text": ["great"]}), ("POST", "/v1/models/sentiment:predict",
             {"instances": ["great"]}), ("POST", "/v2/models/sentiment/infer", v2_body),
             ("POST", "/v2/models/sentiment/versions/1/infer", v2_body), ("GET", "/v2/models/sentiment", None),
             ("GET", "/v1/models/sentiment", None), ("GET", "/v2", None)]
    with httpx.Client(base_url=keyed.url, timeout=15) as client:
        for method, path, body in calls:
            assert_401(client.request(method, path, json=body), "needs an API key")
            assert_401(client.request(method, path, json=body, headers=bearer("wrong")), "not valid")
            answer = client.request(method, path, json=body, headers=bearer(FIRST_KEY))
            assert answer.status_code == 200, (path, answer.text)


def test_probes_and_metrics_need_no_key(keyed):
    with httpx.Client(base_url=keyed.url, timeout=15) as client:
        for path in ("/project/health", "/project/live", "/v2/health/ready", "/v2/health/live",
                     "/v2/models/sentiment/ready", "/metrics", "/openapi.json"):
            assert client.get(path).status_code == 200, path
    [live, ready, model_ready, infer, metadata] = grpc_calls(keyed, [
        {"op": "server_live"}, {"op": "server_ready"}, {"op": "ready"},
        {"op": "infer", "texts": ["great"]}, {"op": "metadata"}])
    assert live["value"] and ready["value"] and model_ready["value"]
    for refused in (infer, metadata):
        assert refused["status"] == "UNAUTHENTICATED", refused
        assert refused["metadata"]["sentiment-error-code"] == "unauthorized"


def test_tritonclient_http_and_grpc_send_the_key_as_a_header(keyed):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(keyed.url.removeprefix("http://"))
    tensor = httpclient.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"a fine film"], dtype=object))
    result = client.infer("sentiment", [tensor], headers=bearer(FIRST_KEY))
    assert result.as_numpy("label").shape == (1,)
    with pytest.raises(InferenceServerException, match="needs an API key"):
        client.infer("sentiment", [tensor])
    with_key, without, wrong = grpc_calls(keyed, [
        {"op": "infer", "texts": ["a fine film"], "headers": {"authorization": f"Bearer {FIRST_KEY}"}},
        {"op": "infer", "texts": ["a fine film"]},
        {"op": "infer", "texts": ["a fine film"], "headers": {"authorization": "Bearer wrong"}}])
    assert with_key["ok"] and with_key["outputs"]["label"]["data"] == [result.as_numpy("label")[0].decode()]
    assert (without["status"], without["metadata"]["sentiment-error-code"]) == ("UNAUTHENTICATED", "unauthorized")
    assert "needs an API key" in without["message"] and "not valid" in wrong["message"]


def test_kserve_clients_send_the_key(keyed):
    import grpc
    from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

    def request() -> InferRequest:
        tensor = InferInput("text", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([b"superb"], dtype=object))
        return InferRequest(model_name="sentiment", infer_inputs=[tensor])

    async def calls():
        rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        grpc_client = InferenceGRPCClient(f"127.0.0.1:{keyed.grpc_port}", retries=0)
        try:
            answers = [await rest.infer(keyed.url, request(), model_name="sentiment", headers=bearer(FIRST_KEY)),
                       await grpc_client.infer(request(), headers=(("authorization", f"Bearer {FIRST_KEY}"),))]
            refusals = []
            try:
                await rest.infer(keyed.url, request(), model_name="sentiment")
            except httpx.HTTPStatusError as error:
                refusals.append(error.response.status_code)
            try:
                await grpc_client.infer(request(), headers=(("authorization", "Bearer wrong"),))
            except grpc.aio.AioRpcError as error:
                refusals.append(error.code())
            return answers, refusals
        finally:
            await rest.close()
            await grpc_client.close()

    answers, refusals = asyncio.run(calls())
    labels = [[label.decode() if isinstance(label, bytes) else label
               for label in answer.get_output_by_name("label").as_numpy().tolist()] for answer in answers]
    assert labels[0] == labels[1] and labels[0][0] in ("NEGATIVE", "POSITIVE")
    assert refusals == [401, grpc.StatusCode.UNAUTHENTICATED]


def test_keys_rotate_on_sighup_and_on_a_file_change_without_a_restart(keyed, keys_file):
    pid = keyed.process.pid
    assert bulk(keyed, bearer(FIRST_KEY)).status_code == 200
    # SIGHUP: the new file has the old size and modification time, so only the signal can tell.
    stamp = os.stat(keys_file)
    keys_file.write_text(f"# API keys\n{SECOND_KEY}\n")
    os.utime(keys_file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert os.stat(keys_file).st_size == stamp.st_size
    time.sleep(1.5)  # past the once-a-second look at the file: it must still see no change
    assert bulk(keyed, bearer(FIRST_KEY)).status_code == 200, "the file looked unchanged, yet the keys were re-read"
    keyed.process.signal(signal.SIGHUP)
    wait_until(lambda: bulk(keyed, bearer(SECOND_KEY)).status_code == 200, 10, message="SIGHUP loads the new key")
    assert bulk(keyed, bearer(FIRST_KEY)).status_code == 401
    # A file change alone (a Secret update rewrites the mounted file): picked up within a second or two.
    keys_file.write_text(f"{THIRD_KEY}\n")
    wait_until(lambda: bulk(keyed, bearer(THIRD_KEY)).status_code == 200, 10, message="a changed file is re-read")
    assert bulk(keyed, bearer(SECOND_KEY)).status_code == 401
    assert keyed.process.pid == pid and bulk(keyed).status_code == 401
    assert keyed.metric("sentiment_api_key_reloads_total", result="loaded") >= 2
    assert keyed.metric("sentiment_api_keys_loaded") == 1


def test_checks_are_counted_by_outcome_and_no_key_is_logged(keyed, keys_file):
    key = keys_file.read_text().split()[-1]
    before = {outcome: keyed.metric("sentiment_api_key_checks_total", outcome=outcome)
              for outcome in ("accepted", "missing", "wrong")}
    assert bulk(keyed, bearer(key)).status_code == 200
    assert bulk(keyed).status_code == 401
    assert bulk(keyed, bearer("wrong-key-in-log-check")).status_code == 401
    after = {outcome: keyed.metric("sentiment_api_key_checks_total", outcome=outcome) for outcome in before}
    moved = {outcome: after[outcome] - before[outcome] for outcome in before}
    assert moved == {"accepted": 1, "missing": 1, "wrong": 1}
    assert keyed.metric("sentiment_requests_total", protocol="rest", route="/project/bulk-predict", status="401") >= 2
    log = keyed.process.log_file.read_text()
    assert "unauthorized" in log  # error answers are logged ...
    for secret in (FIRST_KEY, SECOND_KEY, THIRD_KEY, "wrong-key-in-log-check"):
        assert secret not in log  # ... never the key


def test_the_bind_address_is_honoured_by_http_and_grpc(keyed, tiny_triton, logs_dir):
    """The test stack (like `sentiment up`) binds 127.0.0.1; BIND_ADDRESS 0.0.0.0 is every interface
    (gRPC as [::], dual-stack, like KServe's own)."""
    assert listening_addresses(keyed.port) == {"127.0.0.1"}
    assert listening_addresses(keyed.grpc_port) == {"127.0.0.1"}
    exposed = TransformerServer(tiny_triton, logs_dir / "api-keys-exposed", extra_args=["--bind_address", "0.0.0.0"])
    exposed.start()
    try:
        assert listening_addresses(exposed.port) == {"0.0.0.0"}
        assert listening_addresses(exposed.grpc_port) == {"::"}
        assert bulk(exposed).status_code == 200  # no API_KEYS: open
    finally:
        exposed.stop()
