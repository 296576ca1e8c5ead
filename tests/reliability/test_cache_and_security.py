"""Cache integrity across models, corrupt values, Redis AUTH and TLS, and what responses never reveal."""

import socket
from pathlib import Path
import subprocess
import time

import httpx
import pytest
import redis as redis_client

from sentiment.model.export import export
from sentiment.model.export_options import ExportOptions
from tests.support.tiny import build_tiny_checkpoint
from sentiment.stack.processes import ManagedProcess, free_port
from sentiment.stack.redis_server import redis_ping, redis_server_binary
from tests.conftest import RedisServer, TransformerServer, TritonServer, wait_until

pytestmark = pytest.mark.usefixtures("require_redis_server")


def unique(prefix: str) -> str:
    return f"{prefix} {time.monotonic_ns()}"


@pytest.fixture(scope="module")
def second_model(tmp_path_factory) -> Path:
    """Another tiny BERT (other weights, so another fingerprint) exported like the first."""
    root = tmp_path_factory.mktemp("second-model")
    checkpoint = build_tiny_checkpoint("bert", root / "checkpoint", seed=2)
    export(checkpoint, root / "repository", ExportOptions(variant="fp32"))
    return root / "repository"


def test_a_new_model_never_serves_an_old_models_cached_result(tiny_repositories, second_model, logs_dir):
    redis = RedisServer(logs_dir / "integrity-redis").start()
    triton_a = TritonServer(tiny_repositories["bert"], logs_dir / "integrity-a").start()
    triton_b = TritonServer(second_model, logs_dir / "integrity-b").start()
    a = TransformerServer(triton_a, logs_dir, extra_args=["--redis_url", redis.url]).start()
    b = TransformerServer(triton_b, logs_dir, extra_args=["--redis_url", redis.url]).start()
    try:
        text = unique("shared text")
        first = httpx.post(a.url + "/project/bulk-predict", json={"text": [text]}).json()["predictions"][0]
        before = triton_b.settled_inference_count()
        second = httpx.post(b.url + "/project/bulk-predict", json={"text": [text]}).json()["predictions"][0]
        assert triton_b.settled_inference_count() == before + 1  # B computed it: A's entry was not used
        assert first != second  # and the models really differ
        connection = redis_client.Redis(port=redis.port)
        wait_until(lambda: len(connection.keys("sentiment:*")) == 2, 2, 0.02, message="both entries written")
        keys = connection.keys("sentiment:*")
        fingerprints = {key.decode().split(":")[1] for key in keys}
        assert len(fingerprints) == 2  # one key space per model: keys cannot collide
    finally:
        for process in (a, b, triton_a, triton_b, redis):
            process.stop()


def test_a_corrupt_redis_value_is_a_miss_and_gets_repaired(tiny_repositories, logs_dir):
    redis = RedisServer(logs_dir / "corrupt-redis").start()
    triton = TritonServer(tiny_repositories["bert"], logs_dir / "corrupt-triton").start()
    server = TransformerServer(triton, logs_dir, extra_args=["--redis_url", redis.url, "--hot_cache_size", "0"]).start()
    try:
        text = unique("will be corrupted")
        good = httpx.post(server.url + "/project/bulk-predict", json={"text": [text]}).json()
        connection = redis_client.Redis(port=redis.port)
        wait_until(lambda: connection.keys("sentiment:*"), 2, 0.02, message="entry written")
        (key,) = connection.keys("sentiment:*")
        for garbage in (b"", b"\x01not floats", b"\xff" * 9, b"{\"json\": true}"):
            connection.set(key, garbage)
            before = triton.settled_inference_count()
            response = httpx.post(server.url + "/project/bulk-predict", json={"text": [text]})
            assert response.status_code == 200
            assert response.json() == good
            assert triton.settled_inference_count() == before + 1  # recomputed ...
            wait_until(lambda key=key, garbage=garbage: connection.get(key) != garbage, 2, 0.02,
                       message="entry repaired")  # ... and repaired
        assert server.metric("sentiment_cache_corrupt_values_total") == 4
    finally:
        for process in (server, triton, redis):
            process.stop()


def _redis_hits(server) -> float:
    return server.metric("sentiment_cache_lookups_total", tier="redis", result="hit")


def wait_for_a_redis_hit(server, text: str, message: str) -> None:
    """Repeat one text until Redis answers it (the first answer is written behind, asynchronously)."""
    def hit_through_redis():
        assert httpx.post(server.url + "/project/bulk-predict", json={"text": [text]}).status_code == 200
        return _redis_hits(server) >= 1

    wait_until(hit_through_redis, 3, 0.05, message=message)


def test_redis_auth_with_a_password(tiny_repositories, logs_dir):
    port = free_port()
    redis = ManagedProcess("redis-auth", [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                                          "--save", "", "--requirepass", "s3cret-pass"],
                           logs_dir / "redis-auth.log").start()
    redis.wait_ready(lambda: redis_ping(port, password="s3cret-pass"), 20)
    triton = TritonServer(tiny_repositories["bert"], logs_dir / "auth-triton").start()
    good = TransformerServer(triton, logs_dir, extra_args=[
        "--redis_url", f"redis://:s3cret-pass@127.0.0.1:{port}/0", "--hot_cache_size", "0"]).start()
    wrong = TransformerServer(triton, logs_dir, extra_args=[
        "--redis_url", f"redis://:wrong@127.0.0.1:{port}/0", "--hot_cache_size", "0"]).start()
    try:
        text = unique("auth")
        wait_for_a_redis_hit(good, text, "a Redis hit with the password")
        # A wrong password fails open: answers still come (from the model), errors are counted.
        assert httpx.post(wrong.url + "/project/bulk-predict", json={"text": [text]}).status_code == 200
        assert wrong.metric("sentiment_cache_errors_total") > 0 and _redis_hits(wrong) == 0
    finally:
        for process in (good, wrong, triton, redis):
            process.stop()


def test_redis_over_tls(tiny_repositories, logs_dir, tmp_path):
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
            "-subj", "/CN=sentiment-test-ca")
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "redis.key", "-out", "redis.csr", "-subj", "/CN=localhost"
    )
    (tmp_path / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "redis.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
            "redis.crt", "-days", "1", "-extfile", "ext.cnf")
    port = free_port()
    redis = ManagedProcess("redis-tls", [redis_server_binary(), "--port", "0", "--tls-port", str(port),
                                         "--bind", "127.0.0.1", "--tls-cert-file", str(tmp_path / "redis.crt"),
                                         "--tls-key-file", str(tmp_path / "redis.key"),
                                         "--tls-ca-cert-file", str(tmp_path / "ca.crt"),
                                         "--tls-auth-clients", "no", "--requirepass", "tls-pass", "--save", ""],
                           logs_dir / "redis-tls.log").start()
    wait_until(
        lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() is None, 20, message="TLS redis"
    )
    triton = TritonServer(tiny_repositories["bert"], logs_dir / "tls-triton").start()
    url = f"rediss://:tls-pass@127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.crt'}&ssl_cert_reqs=required"
    server = TransformerServer(triton, logs_dir, extra_args=["--redis_url", url, "--hot_cache_size", "0",
                                                             "--redis_timeout_ms", "200"]).start()
    try:
        wait_for_a_redis_hit(server, unique("tls"), "a Redis hit over TLS")
        assert server.metric("sentiment_cache_errors_total") == 0
    finally:
        for process in (server, triton, redis):
            process.stop()


def test_responses_reveal_no_stack_traces_or_internal_names(tiny_repositories, logs_dir):
    triton = TritonServer(tiny_repositories["bert"], logs_dir / "reveal-triton").start()
    server = TransformerServer(triton, logs_dir).start()
    try:
        with httpx.Client(base_url=server.url, timeout=15) as http:
            responses = [
                http.post("/project/bulk-predict", content=b"{", headers={"content-type": "application/json"}),
                http.post("/project/bulk-predict", json={"text": ["x"] * 300}),
                http.post("/v1/models/nope:predict", json={"instances": ["x"]}),
                http.post("/v2/models/sentiment/infer", json={"inputs": [{"name": "x"}]}),
                http.get("/no/such/route"),
            ]
            triton.stop()
            responses.append(http.post("/project/bulk-predict", json={"text": [unique("down")]}))
            responses.append(wait_until_response(http, "/project/health", 503))
        forbidden = ["Traceback", 'File "', "127.0.0.1", "localhost", str(triton.ports.grpc), socket.gethostname(),
                     "/work", "site-packages"]
        for response in responses:
            assert response.status_code in (404, 413, 422, 503)
            assert response.headers["content-type"].startswith("application/json")
            for word in forbidden:
                assert word not in response.text, (word, response.text)
        assert server.process.alive()
    finally:
        server.stop()
        triton.stop()


def wait_until_response(http, path, status):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        response = http.get(path)
        if response.status_code == status:
            return response
        time.sleep(0.1)
    return response
