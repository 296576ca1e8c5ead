"""`sentiment up` keeps serving when its parts crash: a stack started the way `make run` starts it
(the `Stack` class on free ports, Redis included, supervised), under k6 load, loses its redis-server
or its Triton to SIGKILL and gets it back without a hand restart. Each test prints what it measured
(run with -s); RELIABILITY.md quotes those numbers."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from sentiment.measure.k6 import LoadResult, run_k6
from tests.support.stacks import supervised_stack
from tests.conftest import metric_total, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("require_redis_server")]


def k6_in_background(out: Path, url: str, **environment) -> Future[LoadResult]:
    pool = ThreadPoolExecutor(1)
    future = pool.submit(run_k6, out, "supervised", {"BASE_URL": url, "SCENARIO": "closed", "RAMP_UP": "1s",
                                                     "RAMP_DOWN": "1s", "HEALTH_RATE": 0} | environment,
                         html_report=False)
    pool.shutdown(wait=False)
    return future


def test_redis_killed_under_k6_is_restarted_by_the_stack(tiny_repositories, tmp_path):
    """0 failed requests; the supervisor restarts Redis; Redis cache hits resume."""
    # No hot tier: repeated texts must come from Redis, so its hits show that it is back.
    with supervised_stack(tiny_repositories["bert"], tmp_path / "logs",
                          transformer_args=("--hot_cache_size", "0", "--breaker_reset", "0.5")) as (stack, said):
        redis = stack.process("redis")
        hits = lambda: metric_total(stack.url, "sentiment_cache_lookups_total", tier="redis", result="hit")  # noqa: E731
        load = k6_in_background(tmp_path / "k6", stack.url, VUS=4, HOLD="12s", CACHE_HIT_RATE=0.7,
                                HIT_GRANULARITY="text", WARM_POOL_SIZE=20)
        wait_until(lambda: hits() > 50, 15, message="Redis hits before the kill")
        errors_before, killed_pid = metric_total(stack.url, "sentiment_cache_errors_total"), redis.pid
        killed = time.monotonic()
        os.kill(killed_pid, signal.SIGKILL)
        wait_until(lambda: redis.pid != killed_pid and redis.is_ready(), 15, 0.05, message="Redis restarted")
        back = time.monotonic() - killed
        hits_at_restart = hits()
        wait_until(lambda: hits() > hits_at_restart + 10, 10, 0.05, message="Redis hits after the restart")
        resumed = time.monotonic() - killed
        errors = metric_total(stack.url, "sentiment_cache_errors_total") - errors_before
        result = load.result(timeout=120)
        log = redis.log_file.read_text()
    print(f"\n[supervised stack, redis killed] {result.requests} requests, failed {result.failed_rate:.4f}, "
          f"p99 {result.p99_ms:.1f} ms, cache errors during the outage {errors:.0f}, Redis back (restarted and "
          f"answering PING) {back:.2f} s after the kill, Redis hits again {resumed:.2f} s after the kill")
    assert result.requests > 100
    assert result.failed_rate == 0, result.unexpected
    assert any(m.endswith("redis exited (code -9); restarting it in 0.5 s") for m in said), said
    assert any("redis is back" in m for m in said), said
    assert "sentiment up: redis exited (code -9)" in log and "sentiment up: redis restarted" in log
    assert back < 5 and resumed < 10


def _probe_loop(url: str, warm_text: str, stop: threading.Event, records: list) -> threading.Thread:
    """New texts and one cached text, alternately, every 50 ms: (sent at, seconds, status, body, kind)."""
    def run() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            n = 0
            while not stop.is_set():
                n += 1
                kind = "cached" if n % 2 else "new"
                text = warm_text if kind == "cached" else f"probe text {n} {time.time_ns()}"
                started = time.monotonic()
                try:
                    response = client.post("/project/bulk-predict", json={"text": [text]})
                    records.append((started, time.monotonic() - started, response.status_code, response.text, kind))
                except httpx.HTTPError as error:
                    records.append((started, time.monotonic() - started, None, repr(error), kind))
                time.sleep(0.05)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_triton_killed_under_k6_is_restarted_by_the_stack(tiny_repositories, tmp_path):
    """Fast 503 JSON for new texts (200 for cached ones) while Triton is away; then healthy again,
    new texts served, without a hand restart; the transformer itself is never restarted."""
    warm = "a sentence that was classified before the outage"
    with supervised_stack(tiny_repositories["bert"], tmp_path / "logs") as (stack, said):
        transformer, triton = stack.process("transformer"), stack.process("triton")
        transformer_pid, killed_pid = transformer.pid, triton.pid
        with httpx.Client(base_url=stack.url, timeout=10) as http:
            assert http.post("/project/bulk-predict", json={"text": [warm]}).status_code == 200
            load = k6_in_background(tmp_path / "k6", stack.url, VUS=2, HOLD="15s", CACHE_HIT_RATE=0)
            stop, records = threading.Event(), []
            probe = _probe_loop(stack.url, warm, stop, records)
            time.sleep(4)
            killed = time.monotonic()
            os.kill(killed_pid, signal.SIGKILL)
            unhealthy = wait_until(lambda: http.get("/project/health").status_code == 503, 5, 0.05,
                                   message="health 503 after Triton died")
            wait_until(lambda: triton.pid != killed_pid, 15, 0.05, message="Triton restarted by the supervisor")

            def serving_again() -> bool:
                return (http.get("/project/health").status_code == 200 and http.post(
                    "/project/bulk-predict", json={"text": [f"after {time.time_ns()}"]}).status_code == 200)

            wait_until(serving_again, 60, 0.1, message="healthy and serving new texts again")
            recovered = time.monotonic() - killed
            time.sleep(1)
            stop.set()
            probe.join(timeout=30)
            result = load.result(timeout=120)
        assert transformer.alive() and transformer.pid == transformer_pid
    outage = [r for r in records if killed <= r[0] < killed + recovered]
    refused = [r for r in outage if r[2] != 200]
    slowest = max(r[1] for r in outage)
    print(f"\n[supervised stack, triton killed] k6: {result.requests} requests, failed {result.failed_rate:.4f} "
          f"({result.shed} answered 503); probe: {len(outage)} requests during the outage, {len(refused)} answered "
          f"503 (new texts), cached text answered {sum(r[2] == 200 for r in outage if r[4] == 'cached')} times; "
          f"health 503 after {unhealthy:.2f} s, slowest outage answer {slowest * 1000:.0f} ms, healthy and serving "
          f"new texts {recovered:.1f} s after the kill")
    assert refused, "no request saw the outage"
    assert {r[2] for r in outage} <= {200, 503}
    assert all(json.loads(r[3])["code"] in ("predictor_unavailable", "overloaded") for r in refused)
    assert all(r[2] == 200 for r in outage if r[4] == "cached")
    assert slowest < 10  # the predictor timeout: no request hangs
    assert any(m.endswith("triton exited (code -9); restarting it in 0.5 s") for m in said), said
    assert any("triton is back" in m for m in said), said
    assert all(r[2] == 200 for r in records if r[0] > killed + recovered)
