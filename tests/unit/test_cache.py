import asyncio


from transformer.backends.cache import CircuitBreaker, PredictionMemo, RedisTextCache
from transformer.core.prediction import Prediction


def _prediction(positive: float) -> Prediction:
    return Prediction.of((1 - positive, positive), ["NEGATIVE", "POSITIVE"])


def test_memo_evicts_least_recently_used():
    memo = PredictionMemo(max_entries=2)
    memo.put_many({"a": _prediction(0.1), "b": _prediction(0.2)})
    assert list(memo.get_many(["a"])) == ["a"]  # touch a: b is now the oldest
    memo.put_many({"c": _prediction(0.3)})
    assert sorted(memo.get_many(["a", "b", "c"])) == ["a", "c"]
    assert len(memo) == 2


def test_memo_of_size_zero_stores_nothing():
    memo = PredictionMemo(max_entries=0, name="hot")
    memo.put_many({"a": _prediction(0.5)})
    assert memo.get_many(["a"]) == {} and len(memo) == 0


def test_circuit_breaker_opens_then_half_opens_then_closes():
    now = [0.0]
    breaker = CircuitBreaker(failures=2, reset_s=5, clock=lambda: now[0])
    breaker.record_failure()
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 5.1
    assert breaker.state == "half-open" and breaker.allow()
    breaker.record_failure()  # the trial failed: open again
    assert not breaker.allow()
    now[0] = 10.3
    breaker.record_success()
    assert breaker.state == "closed"


def test_redis_down_fails_open_fast_and_opens_the_circuit():
    """Nothing listens on the port: every call returns quickly, no exception reaches the caller."""
    from sentiment.stack.processes import free_port

    async def scenario():
        cache = RedisTextCache(f"redis://127.0.0.1:{free_port()}/0", ttl_s=60, timeout_ms=50, pool_size=4,
                               breaker=CircuitBreaker(failures=2, reset_s=60))
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = await cache.get_many(["k1", "k2"])
        await cache.set_many({"k1": b"v"})
        third = await cache.get_many(["k1"])
        elapsed = loop.time() - started
        state = cache.breaker.state
        await cache.close()
        return first, third, elapsed, state

    first, third, elapsed, state = asyncio.run(scenario())
    assert first == [None, None] and third == [None]
    assert state == "open"
    assert elapsed < 1.0


def test_write_behind_is_bounded_and_never_raises():
    from sentiment.stack.processes import free_port
    from transformer import metrics

    dropped = metrics.CACHE_ERRORS.labels(operation="set", reason="write_backlog_full")

    async def scenario():
        cache = RedisTextCache(f"redis://127.0.0.1:{free_port()}/0", ttl_s=60, timeout_ms=50, pool_size=2,
                               breaker=CircuitBreaker(failures=1, reset_s=60))
        cache.max_pending = 3
        before = dropped._value.get()
        cache.schedule_set({"a": b"1", "b": b"2"})
        cache.schedule_set({"c": b"3", "d": b"4"})  # over the bound: dropped, counted
        await cache.flush()  # the first batch is attempted against a dead Redis: no exception
        pending = dict(cache._pending)
        await cache.close()
        return dropped._value.get() - before, pending

    dropped_now, pending = asyncio.run(scenario())
    assert dropped_now == 1 and pending == {}
