"""Fairness: one request as large as the limits allow (256 texts, the request's token budget) does
not stall the event loop or starve short requests that arrive while it runs."""

import threading
import time

import httpx
import numpy as np
import pytest

from tests.conftest import TransformerServer, TritonServer, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.model]


def maximal_request(texts: int = 256, tokens_per_text: int = 250) -> list[str]:
    """256 texts of about 250 tokens each (two windows): about 64,000 tokens, the request limit."""
    words = "the long review goes on about the plot the cast the music and the ending".split()
    return [f"review {i}: " + " ".join(words[(i + j) % len(words)] for j in range(tokens_per_text - 4))
            for i in range(texts)]


def test_short_requests_and_health_stay_fast_while_a_maximal_request_runs(default_build, logs_dir):
    triton = TritonServer(default_build.repository, logs_dir / "fair-triton").start()
    server = TransformerServer(triton, logs_dir, extra_args=["--request_timeout", "120"]).start()
    short, health, big, refused = [], [], {}, []
    stop = threading.Event()

    def send_big():
        started = time.monotonic()
        with httpx.Client(timeout=120) as client:
            response = client.post(server.url + "/project/bulk-predict",
                                   json={"text": maximal_request(), "details": True})
        big.update(status=response.status_code, seconds=time.monotonic() - started,
                   body=response.json() if response.status_code == 200 else response.text)

    def send_short(worker: int):
        with httpx.Client(base_url=server.url, timeout=30) as client:
            n = 0
            while not stop.is_set():
                n += 1
                started = time.monotonic()
                response = client.post("/project/bulk-predict", json={"text": [f"short {worker} {n} {time.time_ns()}"]})
                short.append((time.monotonic() - started, response.status_code))
                if response.status_code != 200:
                    refused.append(response.text)

    def probe_health():
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while not stop.is_set():
                started = time.monotonic()
                client.get("/project/health")
                health.append(time.monotonic() - started)
                time.sleep(0.05)

    big_thread = threading.Thread(target=send_big)
    try:
        big_thread.start()
        wait_until(lambda: server.metric("sentiment_queued_tokens") > 10_000, 30, 0.02,
                   message="the maximal request queued")
        others = [threading.Thread(target=send_short, args=(i,)) for i in range(2)] + [threading.Thread(target=probe_health)]
        for thread in others:
            thread.start()
        big_thread.join(timeout=120)  # measure for as long as the maximal request runs
        stop.set()
        for thread in others:
            thread.join(timeout=30)
    finally:
        stop.set()
        server.stop()
        triton.stop()
    latencies = np.array([seconds for seconds, _ in short])
    p99, health_p99 = np.percentile(latencies, 99) * 1000, np.percentile(health, 99) * 1000
    tokens = sum(d["tokens"] for d in big["body"]["details"]) if big.get("status") == 200 else None
    print(f"\n[fairness] maximal request: {big.get('status')}, {tokens} tokens in {big.get('seconds', 0):.1f} s; "
          f"{len(short)} short requests meanwhile, p50 {np.percentile(latencies, 50) * 1000:.0f} ms, p99 {p99:.0f} ms; "
          f"health p99 {health_p99:.1f} ms ({len(health)} probes)")
    assert big["status"] == 200 and len(big["body"]["predictions"]) == 256 and tokens > 55_000
    assert big["seconds"] > 2 and len(short) >= 20
    assert not refused, refused[:3]
    assert {status for _, status in short} == {200}
    assert p99 < 500
    assert health_p99 < 50
