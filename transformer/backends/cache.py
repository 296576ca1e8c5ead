"""Per-text result cache: an in-process LRU of decoded predictions, and Redis behind it, read and
written as one `TwoTierCache`.

Redis stores bytes (the value format is `core.prediction`'s, passed in as functions: this layer
knows no prediction). Redis failures never fail a request: every call has a short timeout, errors
open a circuit breaker for a while, and the cache is retried after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any, Callable, Mapping, Protocol, Sequence

from transformer import metrics, tracing

log = logging.getLogger(__name__)


class RemoteCache(Protocol):
    """A shared byte cache (Redis); never raises for a backend failure."""

    name: str

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set_many(self, items: dict[str, bytes]) -> bool: ...

    def schedule_set(self, items: dict[str, bytes]) -> None: ...

    async def close(self) -> None: ...


class PredictionMemo:
    """Size-bounded in-process LRU of decoded predictions: the whole cache when there is no Redis,
    the hot tier in front of it otherwise (a hit costs one dict lookup: no network, no decoding).
    It stores whatever it is given; the classifier gives it `core.prediction.Prediction`s."""

    def __init__(self, max_entries: int, name: str = "local"):
        self.name = name
        self.max_entries = max_entries
        self._entries: OrderedDict[str, object] = OrderedDict()
        self._hits = metrics.CACHE_LOOKUPS.labels(tier=name, result="hit")
        self._misses = metrics.CACHE_LOOKUPS.labels(tier=name, result="miss")

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        found = {}
        entries = self._entries
        for key in keys:
            prediction = entries.get(key)
            if prediction is not None:
                entries.move_to_end(key)
                found[key] = prediction
        if found:
            self._hits.inc(len(found))
        if len(keys) - len(found):
            self._misses.inc(len(keys) - len(found))
        return found

    def put_many(self, predictions: Mapping[str, Any]) -> None:
        if self.max_entries <= 0:
            return
        entries = self._entries
        for key, prediction in predictions.items():
            entries[key] = prediction
            entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class CircuitBreaker:
    """Closed -> open after `failures` consecutive errors; half-open (one trial) after `reset_s`."""

    def __init__(self, failures: int, reset_s: float, clock=time.monotonic):
        self.failures_to_open = failures
        self.reset_s = reset_s
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self._opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        return self.state != "open"

    def record_success(self) -> None:
        if self._opened_at is not None:
            log.info("cache circuit closed: Redis answers again")
        self._consecutive = 0
        self._opened_at = None

    def record_failure(self) -> None:
        self._consecutive += 1
        if self._opened_at is not None or self._consecutive >= self.failures_to_open:
            if self._opened_at is None:
                log.warning("cache circuit open after %d Redis errors; serving without Redis", self._consecutive)
            self._opened_at = self._clock()


class RedisTextCache:
    """Redis through redis.asyncio: one MGET per lookup, one pipelined SET-with-TTL per write."""

    def __init__(self, url: str, ttl_s: int, timeout_ms: int, pool_size: int, breaker: CircuitBreaker):
        import redis.asyncio as redis

        self.name = "redis"
        self.ttl_s = ttl_s
        self.breaker = breaker
        timeout = timeout_ms / 1000
        # A blocking pool queues a burst instead of raising MaxConnectionsError; its wait is bounded too.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=pool_size, timeout=timeout,
            socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False,
            health_check_interval=30,
        )
        self._client = redis.Redis(connection_pool=pool)
        self._errors = (redis.RedisError, OSError, asyncio.TimeoutError)
        self._pending: dict[str, bytes] = {}
        self._pending_spans: list = []  # per pending write, its request's span (None: not recorded)
        self._flusher: asyncio.Task | None = None
        self.max_pending = 20_000

    async def _guarded(self, operation: str, call):
        if not self.breaker.allow():
            metrics.CACHE_ERRORS.labels(operation=operation, reason="circuit_open").inc()
            return None
        try:
            result = await call()
        except self._errors as error:
            self.breaker.record_failure()
            metrics.CACHE_ERRORS.labels(operation=operation, reason=type(error).__name__).inc()
            log.debug("redis %s failed: %r", operation, error)
            return None
        self.breaker.record_success()
        return result

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values = await self._guarded("get", lambda: self._client.mget(list(keys)))
        if values is None:
            metrics.CACHE_LOOKUPS.labels(tier=self.name, result="error").inc(len(keys))
            return [None] * len(keys)
        found = list(values)
        metrics.record_lookups(self.name, found)
        return found

    async def set_many(self, items: dict[str, bytes]) -> bool:
        """Write with the TTL; whether Redis took the writes (a failure is counted, never raised)."""
        if not items:
            return True

        async def write():
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(key, value, ex=self.ttl_s)
                return await pipe.execute()

        return await self._guarded("set", write) is not None

    def schedule_set(self, items: dict[str, bytes]) -> None:
        """Write behind, coalesced: writes of concurrent requests share one pipeline round trip, and
        no request waits for Redis (its own replica answers repeats from the in-process tier).
        The backlog is bounded: past it, writes are dropped and counted."""
        if len(self._pending) + len(items) > self.max_pending:
            metrics.CACHE_ERRORS.labels(operation="set", reason="write_backlog_full").inc()
            return
        self._pending.update(items)
        self._pending_spans.append(tracing.recording_span())  # None: not a recorded request
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            spans, self._pending_spans = self._pending_spans, []
            attributes = {"sentiment.cache.tier": self.name, "sentiment.cache.keys": len(batch)}
            with tracing.shared_span("sentiment.cache.write", spans, attributes) as span:
                span.set_attribute("sentiment.cache.written", await self.set_many(batch))

    async def flush(self) -> None:
        """Wait until every scheduled write has been attempted."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.flush(), timeout=1.0)
        except (asyncio.TimeoutError, *self._errors):
            pass
        await self._client.aclose()


class TwoTierCache:
    """The in-process tier in front of the remote one (or alone, without Redis), read and written as
    one cache: a read asks the in-process tier first and the remote one for the rest, filling the
    in-process tier with what it found; a write fills the in-process tier now and the remote one
    behind (`schedule_set`), so no request waits for Redis. Shared by every model generation: the
    keys carry the model's fingerprint, and the value codec is the caller's."""

    def __init__(self, memo: PredictionMemo, remote: RemoteCache | None = None):
        self.memo = memo
        self.remote = remote
        self.tiers = [memo.name] + ([remote.name] if remote is not None else [])
        self._lookup = {"sentiment.cache.tiers": self.tiers}
        self._memo_hits = f"sentiment.cache.{memo.name}.hits"
        self._remote_counts = (f"sentiment.cache.{remote.name}.hits", f"sentiment.cache.{remote.name}.misses") \
            if remote is not None else ("", "")

    @property
    def description(self) -> str:
        remote = f" + {self.remote.name}" if self.remote else ""
        return f"{self.memo.name} LRU ({self.memo.max_entries} entries){remote}"

    async def get_many(self, keys: Sequence[str], decode: Callable[[bytes], Any | None]) -> dict[str, Any]:
        """The cached values of `keys` (distinct); `decode` turns the remote tier's bytes into a value,
        None for bytes it cannot read (counted as corrupt, and a miss). A traced request's lookup is
        a span with the hits and misses of each tier."""
        with tracing.span("sentiment.cache.lookup", self._lookup) as span:
            found = self.memo.get_many(keys)
            span.set_attribute(self._memo_hits, len(found))
            if len(found) < len(keys) and self.remote is not None:
                remaining = [key for key in keys if key not in found]
                fetched = self._decoded(remaining, await self.remote.get_many(remaining), decode)
                self.memo.put_many(fetched)
                found.update(fetched)
                hits, misses = self._remote_counts
                span.set_attributes({hits: len(fetched), misses: len(remaining) - len(fetched)})
            span.set_attributes({"sentiment.cache.hits": len(found), "sentiment.cache.misses": len(keys) - len(found)})
        return found

    @staticmethod
    def _decoded(keys: list[str], raws: list[bytes | None], decode: Callable[[bytes], Any | None]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, raw in zip(keys, raws):
            if raw is None:
                continue
            value = decode(raw)
            if value is not None:
                values[key] = value
            else:
                metrics.CACHE_CORRUPT.inc()
        return values

    def put_many(self, values: Mapping[str, Any], encode: Callable[[Any], bytes]) -> None:
        """Fill the in-process tier now and the remote one behind (encoded with `encode`)."""
        self.memo.put_many(values)
        if self.remote is not None:
            self.remote.schedule_set({key: encode(value) for key, value in values.items()})

    async def close(self) -> None:
        self.memo.clear()
        if self.remote is not None:
            await self.remote.close()


def build_cache(settings) -> TwoTierCache:
    """REDIS_URL set -> Redis behind a hot in-process tier (HOT_CACHE_SIZE, 0 = off);
    unset -> the in-process LRU alone (LOCAL_CACHE_SIZE)."""
    if not settings.redis_url:
        return TwoTierCache(PredictionMemo(settings.local_cache_size, name="local"))
    redis_cache = RedisTextCache(
        settings.redis_url, settings.cache_ttl_s, settings.redis_timeout_ms, settings.redis_pool_size,
        CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s),
    )
    return TwoTierCache(PredictionMemo(settings.hot_cache_size, name="hot"), redis_cache)
