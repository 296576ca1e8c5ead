"""Per-text result cache: an in-process LRU, Redis with a circuit breaker, or both in tiers.

Values are the model's probabilities as little-endian float32 behind a one-byte format tag:
9 bytes for two labels. Anything else read back (a foreign or corrupt value) is a miss.
Redis failures never fail a request: every call has a short timeout, errors open a circuit
breaker for a while, and the cache is retried after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from typing import Protocol, Sequence

import numpy as np

from transformer import metrics

log = logging.getLogger(__name__)

VALUE_FORMAT = 1


def cache_key(prefix: str, fingerprint: str, normalized_text: str) -> str:
    """prefix : model fingerprint : sha256(normalized text). A new model never reads old entries."""
    digest = hashlib.sha256(normalized_text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{prefix}:{fingerprint[:16]}:{digest}"


def encode_value(probabilities: np.ndarray) -> bytes:
    return bytes([VALUE_FORMAT]) + np.asarray(probabilities, dtype="<f4").tobytes()


def decode_value(raw: bytes | None, num_labels: int) -> np.ndarray | None:
    """Probabilities, or None when the value is absent, foreign or corrupt."""
    if raw is None:
        return None
    if len(raw) != 1 + 4 * num_labels or raw[0] != VALUE_FORMAT:
        return None
    values = np.frombuffer(raw, dtype="<f4", offset=1)
    if not np.all(np.isfinite(values)) or np.any(values < 0) or abs(float(values.sum()) - 1.0) > 1e-3:
        return None
    return values


class TextCache(Protocol):
    """Stores encoded values by key; never raises for a backend failure."""

    name: str

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set_many(self, items: dict[str, bytes]) -> None: ...

    async def close(self) -> None: ...


class LocalTextCache:
    """Size-bounded in-process LRU (the cache when no REDIS_URL is set, and the hot tier)."""

    def __init__(self, max_entries: int, name: str = "local"):
        self.name = name
        self.max_entries = max_entries
        self._entries: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        found: list[bytes | None] = []
        for key in keys:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            found.append(value)
        metrics.record_lookups(self.name, found)
        return found

    async def set_many(self, items: dict[str, bytes]) -> None:
        if self.max_entries <= 0:
            return
        for key, value in items.items():
            self._entries[key] = value
            self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def close(self) -> None:
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

    async def set_many(self, items: dict[str, bytes]) -> None:
        if not items:
            return

        async def write():
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(key, value, ex=self.ttl_s)
                return await pipe.execute()

        await self._guarded("set", write)

    async def ping(self) -> bool:
        return bool(await self._guarded("ping", self._client.ping))

    async def close(self) -> None:
        await self._client.aclose()


class TieredTextCache:
    """A small in-process hot tier in front of Redis: repeated texts skip the network entirely."""

    def __init__(self, hot: LocalTextCache, remote: TextCache):
        self.name = f"{hot.name}+{remote.name}"
        self.hot = hot
        self.remote = remote

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        found = await self.hot.get_many(keys)
        missing = [i for i, value in enumerate(found) if value is None]
        if missing:
            remote = await self.remote.get_many([keys[i] for i in missing])
            promote = {}
            for i, value in zip(missing, remote):
                if value is not None:
                    found[i] = value
                    promote[keys[i]] = value
            await self.hot.set_many(promote)
        return found

    async def set_many(self, items: dict[str, bytes]) -> None:
        await self.hot.set_many(items)
        await self.remote.set_many(items)

    async def close(self) -> None:
        await self.hot.close()
        await self.remote.close()


def build_cache(settings) -> TextCache:
    """REDIS_URL set -> Redis (behind a hot tier unless HOT_CACHE_SIZE=0); else the in-process LRU."""
    if not settings.redis_url:
        return LocalTextCache(settings.local_cache_size)
    redis_cache = RedisTextCache(
        settings.redis_url, settings.cache_ttl_s, settings.redis_timeout_ms, settings.redis_pool_size,
        CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s),
    )
    if settings.hot_cache_size > 0:
        return TieredTextCache(LocalTextCache(settings.hot_cache_size, name="hot"), redis_cache)
    return redis_cache
