"""The HTTP side of `sentiment score`: the server's limits, one batch per request with bounded
retries, and per-row errors for the texts the server refuses one by one.

Retried (bounded, honouring `Retry-After`): 429, 502, 503, 504 and connection errors. A refusal of
one text (413/422 naming its `index`) becomes that row's error and the rest are sent again; a 413
for the whole batch (bytes, tokens) splits it in halves. Anything else stops the run with the
server's message (a wrong URL, a missing API key, an option the server does not know).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass
from typing import Any, Sequence

import httpx

from transformer.settings import Settings

BULK_PATH = "/project/bulk-predict"
LIMITS_PATH = "/project/limits"
METRICS_PATH = "/metrics"
RETRIED_STATUSES = (429, 502, 503, 504)


class ScoringStopped(RuntimeError):
    """The server refused the run as a whole, or stayed unavailable past the retries."""


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_texts: int
    max_text_chars: int
    max_body_bytes: int
    source: str  # "server" when read from /project/limits, else "defaults"

    @classmethod
    def defaults(cls) -> "ServerLimits":
        """The transformer's own defaults, for a server that does not publish its limits."""
        fields = Settings.model_fields
        return cls(fields["max_texts"].default, fields["max_text_chars"].default, fields["max_body_bytes"].default,
                   "defaults")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 8          # tries per request, the first included
    max_wait_s: float = 30.0   # cap on one wait, Retry-After included
    base_s: float = 0.5        # backoff without Retry-After: base * 2^n, jittered


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """Per-request fields passed through as they are; None leaves the server's default."""

    truncation: str | None = None
    top_k: int | None = None
    raw_scores: bool = False

    def body_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if self.truncation is not None:
            fields["truncation"] = self.truncation
        if self.top_k is not None:
            fields["top_k"] = self.top_k
        if self.raw_scores:
            fields["raw_scores"] = True
        return fields


@dataclass(frozen=True, slots=True)
class TextResult:
    ranked: list[dict] | None = None
    error: str | None = None


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_of(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"error": response.text[:300] or response.reason_phrase}
    return body


class ScoringClient:
    def __init__(self, http: httpx.AsyncClient, options: RequestOptions, retry: RetryPolicy, limits: ServerLimits):
        self.http = http
        self.options = options
        self.retry = retry
        self.limits = limits
        self.retries = 0          # requests sent again (for the summary)
        self.split_batch_size: int | None = None  # set when the server refused a batch for its size

    @staticmethod
    async def read_limits(http: httpx.AsyncClient) -> ServerLimits:
        try:
            response = await http.get(LIMITS_PATH)
        except httpx.TransportError as error:
            raise ScoringStopped(f"cannot reach {http.base_url}: {error!r}; is the stack running (`sentiment up`)? "
                                 "or pass --url") from None
        if response.status_code == 200:
            body = response.json()
            return ServerLimits(int(body["max_texts"]), int(body["max_text_chars"]), int(body["max_body_bytes"]),
                                "server")
        if response.status_code == 401:
            raise ScoringStopped("the server wants an API key: pass --api-key or set SENTIMENT_API_KEY")
        return ServerLimits.defaults()

    async def score(self, texts: Sequence[str | None]) -> list[TextResult]:
        """One result per text (None: a row without text, left as it is)."""
        results: list[TextResult | None] = [None] * len(texts)
        todo = []
        for index, text in enumerate(texts):
            if text is None:
                continue
            if len(text) > self.limits.max_text_chars:
                results[index] = TextResult(error=f"{len(text)} characters; the server takes at most "
                                                  f"{self.limits.max_text_chars} per text")
            else:
                todo.append(index)
        await self._score(texts, todo, results)
        return [result or TextResult() for result in results]

    async def _score(self, texts: Sequence[str | None], indices: list[int], results: list) -> None:
        while indices:
            status, body = await self._post([texts[i] for i in indices])
            if status == 200:
                predictions = body["predictions"]
                if len(predictions) != len(indices):
                    raise ScoringStopped(f"the server answered {len(predictions)} predictions for {len(indices)} texts")
                for index, ranked in zip(indices, predictions):
                    results[index] = TextResult(ranked=ranked)
                return
            message = str(body.get("error", ""))
            where = body.get("index")
            if status in (413, 422) and isinstance(where, int) and 0 <= where < len(indices):
                results[indices[where]] = TextResult(error=f"{status} {body.get('code', '')}: {message}".strip())
                indices = indices[:where] + indices[where + 1:]
                continue
            if status == 413 and len(indices) > 1:
                half = len(indices) // 2
                self.split_batch_size = min(self.split_batch_size or half, half)
                await self._score(texts, indices[:half], results)
                indices = indices[half:]
                continue
            if status == 413:
                results[indices[0]] = TextResult(error=f"413 {body.get('code', '')}: {message}")
                return
            if status == 401:
                raise ScoringStopped(f"401 from the server ({message}): pass --api-key or set SENTIMENT_API_KEY")
            raise ScoringStopped(f"the server refused the request with {status}: {message or body}")

    async def _post(self, texts: list[str | None]) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of the first answer that is not retried, or ScoringStopped."""
        body = {"text": texts, **self.options.body_fields()}
        last = ""
        for attempt in range(self.retry.attempts):
            if attempt:
                self.retries += 1
            try:
                response = await self.http.post(BULK_PATH, json=body)
            except httpx.TransportError as error:
                last, wait = f"{type(error).__name__}: {error}", None
            else:
                if response.status_code not in RETRIED_STATUSES:
                    return response.status_code, (response.json() if response.status_code == 200
                                                  else _error_of(response))
                last = f"{response.status_code} {_error_of(response).get('error', '')}"
                wait = retry_after_s(response.headers.get("retry-after"))
            if attempt + 1 < self.retry.attempts:
                backoff = self.retry.base_s * 2 ** attempt * (0.5 + random.random())
                await asyncio.sleep(min(self.retry.max_wait_s, wait if wait is not None else backoff))
        raise ScoringStopped(f"the server stayed unavailable after {self.retry.attempts} tries (last: {last[:300]})")


async def cache_counters(http: httpx.AsyncClient) -> dict[str, float] | None:
    """The server's `sentiment_texts_total` by source (cache / model / shared), or None when /metrics
    is not readable. Server-wide: other clients' texts count too."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        response = await http.get(METRICS_PATH)
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "sentiment_texts_total":
                source = sample.labels.get("source", "")
                totals[source] = totals.get(source, 0.0) + sample.value
    return totals
