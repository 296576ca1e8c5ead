"""Overload: 200 closed-loop users against the real default model. The excess is shed quickly with
503 + Retry-After from a bounded queue; what is admitted stays fast; memory stays bounded; the
service recovers as soon as the load drops.

Latency bounds are multiples of the same request's unloaded p99 measured in the same run (plus the
shedding bound, MAX_QUEUE_WAIT_MS, which is a time by design), so they hold on a slower CPU."""

import time

import httpx
import psutil
import pytest

from sentiment.measure.k6 import run_k6
from tests.conftest import RedisServer, TransformerServer, TritonServer
from tests.support.baselines import p99, timed

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("require_redis_server")]

MAX_QUEUE_WAIT_MS = 500  # the shipped default: admitted work is expected to start within it
TEXTS_PER_REQUEST = 10   # the k6 script's default
# An admitted request waits up to the shedding bound and then shares the cores with 200 VUs (k6 itself
# takes most of them): the estimate runs behind. Measured on the 2-core build machine under other users'
# load: served p99 4,643 ms beside an unloaded p99 of 216 ms, (4643 - 500) / 216 = 19 (the old absolute
# bounds, 2,500 ms served and 250 ms health, failed there).
SERVED_P99_UNLOADED = 40
HEALTH_P99_UNLOADED = 4  # health waits for no model call: 282 ms, 1.3 measured
RECOVERY_UNLOADED = 5    # the first request after the load: 89 ms, 0.4 measured


def test_200_users_are_shed_not_queued_into_timeouts(default_build, logs_dir, tmp_path):
    triton = TritonServer(default_build.repository, logs_dir / "rel-overload-triton").start()
    redis = RedisServer(logs_dir / "rel-overload-redis").start()
    server = TransformerServer(triton, logs_dir, extra_args=["--redis_url", redis.url]).start()
    try:
        def k6_like_request(i: int) -> None:
            texts = [f"unloaded {i} {k} {time.time_ns()}: the plot is thin but the cast is a delight"
                     for k in range(TEXTS_PER_REQUEST)]
            assert httpx.post(server.url + "/project/bulk-predict", json={"text": texts}, timeout=10).status_code == 200

        k6_like_request(-1)  # warm
        unloaded_p99 = p99(timed(k6_like_request, 20))
        process = psutil.Process(server.process.pid)
        rss_before = process.memory_info().rss
        result = run_k6(tmp_path / "k6", "200 VUs", {
            "BASE_URL": server.url, "SCENARIO": "closed", "VUS": 200, "RAMP_UP": "3s", "HOLD": "20s", "RAMP_DOWN": "2s",
            "CACHE_HIT_RATE": 0, "HEALTH_RATE": 5, "P99_MS": 60000}, html_report=False)
        rss_after = process.memory_info().rss
        assert process.is_running()
        started = time.monotonic()
        response = httpx.post(
            server.url + "/project/bulk-predict",
            json={
                "text": [
                    f"calm again {time.time_ns()} {k}: the plot is thin but the cast is a delight"
                    for k in range(TEXTS_PER_REQUEST)
                ]
            },
            timeout=5,
        )
        recovery = time.monotonic() - started
        shed_metric = server.metric("sentiment_shed_requests_total")
        print(
            f"\n[overload 200 VUs] {result.requests} requests, {result.shed} shed (503), failed rate "
            f"{result.failed_rate:.3f}, served p99 {result.served_p99_ms:.0f} ms, all p99 {result.p99_ms:.0f} ms, "
            f"{result.texts_per_s:.0f} texts/s, health p99 {result.health_p99_ms:.1f} ms, "
            f"RSS {rss_before / 1e6:.0f} -> "
            f"{rss_after / 1e6:.0f} MB, first request after the load {recovery * 1000:.0f} ms; the same request "
            f"unloaded: p99 {unloaded_p99 * 1000:.0f} ms"
        )
        assert result.shed > 0 and shed_metric >= result.shed  # excess was shed ...
        assert result.failed_rate * result.requests == pytest.approx(result.shed, abs=2)  # ... and nothing else failed
        # admitted requests did not pile up into timeouts
        assert result.served_p99_ms < MAX_QUEUE_WAIT_MS + SERVED_P99_UNLOADED * unloaded_p99 * 1000
        assert result.health_p99_ms < HEALTH_P99_UNLOADED * unloaded_p99 * 1000
        assert rss_after < 400e6
        assert response.status_code == 200 and recovery < RECOVERY_UNLOADED * unloaded_p99
    finally:
        server.stop()
        redis.stop()
        triton.stop()
