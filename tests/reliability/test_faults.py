"""Faults with real processes: Redis and Triton die under load, the transformer gets SIGTERM.
Each test prints what it measured (run with -s); RELIABILITY.md quotes those numbers."""

import os
import signal
import threading
import time

import httpx
import pytest

from sentiment.measure.k6 import run_k6
from tests.conftest import RedisServer, TransformerServer, TritonServer, wait_until
from tests.support.load import closed_loop_clients
from transformer.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("require_redis_server")]


# The shipped defaults, besides the faster settings that keep the other cases short.
SHIPPED = Settings.model_fields


@pytest.mark.parametrize("breaker_reset", [0.5, SHIPPED["breaker_reset_s"].default], ids=["fast", "shipped"])
def test_redis_killed_during_a_k6_run(tiny_repositories, logs_dir, tmp_path, breaker_reset):
    """Zero failed requests while Redis is SIGKILLed and restarted; Redis hits resume within 5 s (the
    circuit's reset time is part of it: the shipped one too)."""
    triton = TritonServer(tiny_repositories["bert"], logs_dir / "rel-redis-triton").start()
    redis = RedisServer(logs_dir / "rel-redis").start()
    server = TransformerServer(triton, logs_dir, extra_args=["--redis_url", redis.url, "--hot_cache_size", "0",
                                                             "--breaker_reset", str(breaker_reset)]).start()
    outcome = {}

    def load():
        outcome["result"] = run_k6(
            tmp_path / "k6",
            "redis killed",
            {
                "BASE_URL": server.url,
                "SCENARIO": "closed",
                "VUS": 4,
                "RAMP_UP": "1s",
                "HOLD": "16s",
                "RAMP_DOWN": "1s",
                "CACHE_HIT_RATE": 0.7,
                "HIT_GRANULARITY": "text",
                "WARM_POOL_SIZE": 20,
                "HEALTH_RATE": 0,
            },
            html_report=False,
        )

    runner = threading.Thread(target=load)
    try:
        runner.start()
        time.sleep(5)
        redis.process.signal(signal.SIGKILL)
        time.sleep(4)
        errors_during_outage = server.metric("sentiment_cache_errors_total")
        hits_before = server.metric("sentiment_cache_lookups_total", tier="redis", result="hit")
        restarted = time.monotonic()
        redis.start()
        wait_until(
            lambda: server.metric("sentiment_cache_lookups_total", tier="redis", result="hit") > hits_before + 10,
            timeout=5,
            interval=0.1,
            message="Redis cache hits after the restart",
        )
        resumed = time.monotonic() - restarted  # the restart itself included
        assert resumed < 5
        runner.join(timeout=60)
        result = outcome["result"]
        print(
            f"\n[redis killed] {result.requests} requests, failed {result.failed_rate:.4f}, "
            f"p99 {result.p99_ms:.1f} ms, "
            f"cache errors during the outage {errors_during_outage:.0f}, Redis hits resumed {resumed:.2f} s after "
            "the restart command"
        )
        assert result.requests > 100
        assert result.failed_rate == 0, result.unexpected
        assert errors_during_outage > 0  # the outage really happened
    finally:
        runner.join(timeout=60)
        server.stop()
        redis.stop()
        triton.stop()


@pytest.mark.parametrize("check_interval", [0.25, SHIPPED["predictor_check_interval_s"].default],
                         ids=["fast", "shipped"])
def test_triton_killed_during_load(tiny_repositories, logs_dir, check_interval):
    """503 JSON within the request timeout, health 503 within 5 s, liveness 200 throughout,
    full recovery after Triton restarts, the transformer never restarted (with the test's fast
    predictor check, and with the shipped one)."""
    triton = TritonServer(tiny_repositories["bert"], logs_dir / "rel-triton").start()
    server = TransformerServer(triton, logs_dir, extra_args=["--predictor_check_interval", str(check_interval)]).start()
    pid = server.process.pid
    stop, records = threading.Event(), []
    pool = closed_loop_clients(server.url, stop, records)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            time.sleep(2)
            killed = time.monotonic()
            triton.process.signal(signal.SIGKILL)
            unhealthy = wait_until(lambda: http.get("/project/health").status_code == 503, 5, 0.05,
                                   message="health 503 after Triton died")
            liveness = [http.get("/project/live").status_code for _ in range(20)]
            time.sleep(3)
            restarted = time.monotonic()
            triton.start()
            wait_until(lambda: http.get("/project/health").status_code == 200, 15, 0.1, message="health back")

            def serving_again():
                return http.post("/project/bulk-predict", json={"text": [f"after {time.time_ns()}"]}).status_code == 200

            recovered = wait_until(serving_again, 10, 0.1, message="requests served again") + (
                time.monotonic() - restarted
            )
            time.sleep(1)
    finally:
        stop.set()
        pool.shutdown(wait=True)
        server_alive = server.process.alive() and server.process.pid == pid
        server.stop()
        triton.stop()
    during = [r for r in records if r[0] >= killed and r[0] < restarted]
    statuses = {r[2] for r in records}
    failures = [r for r in during if r[2] != 200]
    print(f"\n[triton killed] {len(records)} requests, {len(during)} during the outage ({len(failures)} answered 503), "
          f"health 503 after {unhealthy:.2f} s, slowest outage answer {max(r[1] for r in during) * 1000:.0f} ms, "
          f"serving again {recovered:.1f} s after the restart")
    assert server_alive
    assert statuses <= {200, 503}, statuses
    assert failures, "no request saw the outage"
    assert all('"code":"predictor_unavailable"' in r[3] or '"code":"overloaded"' in r[3] for r in failures)
    assert max(r[1] for r in during) < 10  # the predictor timeout: no hang
    assert unhealthy < 5
    assert set(liveness) == {200}
    assert all(r[2] == 200 for r in records if r[0] > restarted + recovered)


def test_sigterm_drains_in_flight_requests(default_build, logs_dir):
    """In-flight requests complete, new connections are refused, the process exits in the grace period."""
    triton = TritonServer(default_build.repository, logs_dir / "rel-sigterm-triton").start()
    server = TransformerServer(triton, logs_dir).start()
    results = []

    def heavy_request(index: int) -> None:
        texts = [f"request {index} sentence {i}: the plot is thin but the actors are a delight {time.time_ns()}"
                 for i in range(128)]
        with httpx.Client(timeout=30) as client:
            try:
                response = client.post(server.url + "/project/bulk-predict", json={"text": texts})
                results.append((response.status_code, len(response.json().get("predictions", []))))
            except httpx.TransportError as error:  # never admitted before the signal: refused or reset
                results.append((type(error).__name__, 0))

    threads = [threading.Thread(target=heavy_request, args=(i,)) for i in range(6)]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: server.metric("sentiment_inflight_requests") >= 6, 10, 0.01, message="all six in flight")
        in_flight = server.metric("sentiment_inflight_requests")
        signalled = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)

        def refused() -> bool:
            try:
                httpx.get(server.url + "/project/live", timeout=2)
            except httpx.ConnectError:
                return True
            return False

        # the listener closes soon after the signal (while the six requests still run): wait for it
        wait_until(refused, 10, 0.02, message="new connections refused after SIGTERM")
        for thread in threads:
            thread.join(timeout=30)
        server.process.process.wait(timeout=30)
        exited = time.monotonic() - signalled
        print(f"\n[sigterm] {in_flight:.0f} requests in flight at SIGTERM, {len(results)} completed "
              f"({[s for s, _ in results]}), exit {exited:.1f} s after the signal")
        assert in_flight >= 6
        assert results == [(200, 128)] * 6  # every request in flight at the signal completed
        assert exited < 30  # the grace period
    finally:
        server.stop()
        triton.stop()
