"""Fairness: one request as large as the limits allow (256 texts, the request's token budget) does
not stall the event loop or starve short requests that arrive while it runs.

The bounds are in units of one full predictor call (`max_batch_tokens` of windows), measured unloaded
in the same run: a short request waits for the calls in flight and then leads the next one, and a
health probe waits for no call at all, on a fast CPU or a slow one."""

import threading
import time

import httpx
import numpy as np
import pytest

from tests.conftest import TransformerServer, TritonServer, wait_until
from tests.support.baselines import median, p99, timed

pytestmark = [pytest.mark.slow, pytest.mark.model]

# A short request waits for the calls in flight (max_concurrent_batches: 3) and its own, sharing the cores
# with them and with the clients. Measured on the 2-core build machine under other users' load: p99 814 ms
# beside a full call of 323 ms unloaded (2.5 calls; the old absolute 500 ms bound failed there).
SHORT_P99_CALLS = 8
# Health never waits for a model call: its p99 under load stays under one call's time (0.12 measured).
HEALTH_P99_CALLS = 1
# The maximal request (64,000 tokens: 125 full calls, 3 at a time) outlasts many calls (71 measured).
MAXIMAL_REQUEST_CALLS = 10


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

    def one_full_call(i: int) -> None:  # two new texts of two windows each: max_batch_tokens (512) of windows
        texts = [f"baseline {i} {time.time_ns()} " + text for text in maximal_request(2)]
        assert httpx.post(server.url + "/project/bulk-predict", json={"text": texts}, timeout=30).status_code == 200

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
        one_full_call(-1)  # warm
        call_s = median(timed(one_full_call, 7))
        big_thread.start()
        wait_until(lambda: server.metric("sentiment_queued_tokens") > 10_000, 30, 0.02,
                   message="the maximal request queued")
        others = [threading.Thread(target=send_short, args=(i,)) for i in range(2)] + [
            threading.Thread(target=probe_health)
        ]
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
    p99_ms, health_p99 = p99(latencies) * 1000, p99(health) * 1000
    tokens = sum(d["tokens"] for d in big["body"]["details"]) if big.get("status") == 200 else None
    print(
        f"\n[fairness] maximal request: {big.get('status')}, {tokens} tokens in {big.get('seconds', 0):.1f} s; "
        f"{len(short)} short requests meanwhile, p50 {median(latencies) * 1000:.0f} ms, p99 {p99_ms:.0f} ms; "
        f"health p99 {health_p99:.1f} ms ({len(health)} probes); one full call unloaded {call_s * 1000:.0f} ms "
        f"(bounds: short p99 {SHORT_P99_CALLS}, health p99 {HEALTH_P99_CALLS} calls)"
    )
    assert big["status"] == 200 and len(big["body"]["predictions"]) == 256 and tokens > 55_000
    assert big["seconds"] > MAXIMAL_REQUEST_CALLS * call_s and len(short) >= 20
    assert not refused, refused[:3]
    assert {status for _, status in short} == {200}
    assert p99_ms < SHORT_P99_CALLS * call_s * 1000
    assert health_p99 < HEALTH_P99_CALLS * call_s * 1000
