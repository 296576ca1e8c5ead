"""The one place where work waits for the model: predictor calls formed from a queue of windows.

Every window of every new text waits here. Calls are formed as slots free up (at most
`max_concurrent` in flight): each call is led by the request with the earliest virtual finish
time (start-time fair queueing over tokens: a request that just arrived starts at the system's
virtual time, a request that was just served carries the tokens it got), capped by rows and by a
token budget (rows x padded length), and topped up with other requests' windows that are no
longer than the leader's. So a request of thousands of windows cannot starve a short one (the
short one leads the next free call), and a stream of short ones cannot starve it either (it gets
its share of tokens).

The scheduler also knows what admission needs: the tokens queued, the model's throughput as
measured while there was a backlog (an EWMA of tokens per second), and from both the expected
wait of new work under this round-robin sharing.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from tokenizers import Encoding

from transformer import metrics, tracing
from transformer.backends.predictor import Predictor
from transformer.core.tokenization import TextEncoder

log = logging.getLogger(__name__)


class ThroughputMeter:
    """Tokens per second the model completes per second of busy time (time with a predictor call
    in flight; idle time is not counted: a quiet service is not a slow one). Samples of at least
    `min_sample_s` of busy time, smoothed by an EWMA. Under light load it reads low (one call at a
    time uses part of the model's parallelism), which only makes shedding cautious until the load
    that matters fills the calls and the reading rises."""

    def __init__(self, prior_tokens_per_s: float = 1000.0, alpha: float = 0.3, min_sample_s: float = 0.2,
                 clock=time.monotonic):
        self.rate = prior_tokens_per_s
        self.prior = True  # until the first sample replaces it
        self.alpha = alpha
        self.min_sample_s = min_sample_s
        self._clock = clock
        self._busy_since: float | None = None
        self._busy_s = 0.0
        self._tokens = 0
        metrics.THROUGHPUT.set(self.rate)

    def busy(self) -> None:
        if self._busy_since is None:
            self._busy_since = self._clock()

    def idle(self) -> None:
        if self._busy_since is not None:
            self._busy_s += self._clock() - self._busy_since
            self._busy_since = None

    def completed(self, tokens: int) -> None:
        self._tokens += tokens
        now = self._clock()
        busy_s = self._busy_s + (now - self._busy_since if self._busy_since is not None else 0.0)
        if busy_s >= self.min_sample_s:
            sample = self._tokens / busy_s
            self.rate = sample if self.prior else self.rate + self.alpha * (sample - self.rate)
            self.prior = False
            metrics.THROUGHPUT.set(self.rate)
            self._tokens, self._busy_s = 0, 0.0
            if self._busy_since is not None:
                self._busy_since = now


@dataclass(slots=True)
class _Window:
    encoding: Encoding
    future: asyncio.Future
    tokens: int
    span: object = None  # a sampled request's: the span of the work that submitted it (its compute span)


_SPAN_OF = operator.attrgetter("span")


@dataclass(eq=False)
class _Owner:
    """One batch of submitted work (a request's new texts): its windows, longest first, and its
    virtual finish time in the fair queue."""

    pending: deque = field(default_factory=deque)
    queued_tokens: int = 0
    finish: float = 0.0


class BatchScheduler:
    def __init__(self, predictor: Predictor, encoder: TextEncoder, *, max_rows: int, max_batch_tokens: int,
                 max_concurrent: int, meter: ThroughputMeter | None = None):
        self.predictor = predictor
        self.encoder = encoder
        self.max_rows = max_rows
        self.max_batch_tokens = max_batch_tokens
        self.max_concurrent = max_concurrent
        self.meter = meter or ThroughputMeter()
        self._owners: dict[int, _Owner] = {}
        self._next_owner = 0
        self._virtual = 0.0  # the finish time of the last call's leader
        self._running = 0
        self._running_tokens = 0
        self.queued_tokens = 0  # waiting, not yet in a call
        self._tasks: set[asyncio.Task] = set()

    # ---- admission ---------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Windows waiting or in a call."""
        return bool(self._owners) or self._running > 0

    @property
    def round_tokens(self) -> int:
        """Tokens that one round of calls takes: every call slot full."""
        return self.max_concurrent * self.max_batch_tokens

    @property
    def backlog_beyond_next_round(self) -> bool:
        """More work waits than the next round of calls takes. Until then new work starts within
        about two calls' time whatever the throughput reads, so a light load is never shed on an
        estimate (the meter reads low when calls run part-full, and its first sample may be a
        single slow call)."""
        return self.queued_tokens > self.round_tokens

    def expected_wait_s(self, tokens: int) -> float:
        """Seconds that others' work adds before `tokens` of new work are done: under fair sharing
        every queued request runs ahead of it by at most as much as the new work itself, and a call
        slot must free up first (about one call's worth of work). The new work's own time is not
        counted: a request is never refused for its own size (`max_request_tokens` bounds that)."""
        ahead = sum(min(owner.queued_tokens, tokens) for owner in self._owners.values())
        slot = self._running_tokens / self.max_concurrent
        return (ahead + slot) / max(self.meter.rate, 1.0)

    # ---- work ----------------------------------------------------------------------------------
    def submit(self, encodings: Sequence[Encoding]) -> list[asyncio.Future]:
        """Queue windows (one owner per call); each future resolves to that window's logits row."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in encodings]
        if not futures:
            return []
        owner = _Owner()
        span = tracing.recording_span()
        # Longest first: the owner's first call is as wide as its widest window, and its shorter
        # windows ride along in the same call instead of waiting for calls of their own.
        for index in sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids)):
            tokens = len(encodings[index].ids)
            owner.pending.append(_Window(encodings[index], futures[index], tokens, span))
            owner.queued_tokens += tokens
        owner.finish = self._virtual + min(owner.queued_tokens, self.max_batch_tokens)
        self._owners[self._next_owner] = owner
        self._next_owner += 1
        self.queued_tokens += owner.queued_tokens
        metrics.QUEUED_TOKENS.set(self.queued_tokens + self._running_tokens)
        self._dispatch()
        return futures

    def _dispatch(self) -> None:
        while self._running < self.max_concurrent and self._owners:
            batch = self._take_batch()
            if not batch:
                continue
            tokens = sum(window.tokens for window in batch)
            if not self._running:
                self.meter.busy()
            self._running += 1
            self._running_tokens += tokens
            task = asyncio.get_running_loop().create_task(self._run(batch, tokens))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take_batch(self) -> list[_Window]:
        """Led by the owner with the earliest finish time, then topped up from the others."""
        owners = self._owners
        leader_id = min(owners, key=lambda owner_id: owners[owner_id].finish)
        leader = owners[leader_id]
        self._drop_cancelled(leader)
        if not leader.pending:
            del owners[leader_id]
            return []
        width = self.encoder.padded_width(leader.pending[0].tokens)
        rows = max(1, min(self.max_rows, self.max_batch_tokens // width))
        self._virtual = leader.finish
        batch = self._take(leader, rows, width)
        for owner_id, owner in owners.items():
            if len(batch) >= rows:
                break
            if owner_id != leader_id:
                topped = self._take(owner, rows - len(batch), width)
                owner.finish += sum(window.tokens for window in topped)  # charged like a turn of its own
                batch += topped
        for owner_id in [owner_id for owner_id, owner in owners.items() if not owner.pending]:
            del owners[owner_id]
        if leader_id in owners:  # its next turn comes after the tokens of this one
            leader.finish += min(leader.queued_tokens, self.max_batch_tokens)
        self.queued_tokens -= sum(window.tokens for window in batch)
        return batch

    def _take(self, owner: _Owner, count: int, width: int) -> list[_Window]:
        taken: list[_Window] = []
        while len(taken) < count:
            self._drop_cancelled(owner)
            if not owner.pending or self.encoder.padded_width(owner.pending[0].tokens) > width:
                break
            window = owner.pending.popleft()
            owner.queued_tokens -= window.tokens
            taken.append(window)
        return taken

    def _drop_cancelled(self, owner: _Owner) -> None:
        """Windows whose waiter gave up are not computed."""
        while owner.pending and owner.pending[0].future.done():
            window = owner.pending.popleft()
            owner.queued_tokens -= window.tokens
            self.queued_tokens -= window.tokens

    async def _run(self, batch: list[_Window], tokens: int) -> None:
        try:
            inputs = self.encoder.pad([window.encoding for window in batch])
            metrics.PREDICTOR_BATCH_SIZE.observe(len(batch))
            metrics.PREDICTOR_BATCH_TOKENS.observe(inputs["input_ids"].size)
            # A span of its own when a recorded request's windows ride in it (see `tracing.shared_span`).
            with tracing.shared_span("sentiment.predictor.infer", map(_SPAN_OF, batch),
                                     lambda: self._call_attributes(inputs, tokens), kind="CLIENT"):
                logits = await self.predictor.infer(inputs)
        except Exception as error:  # every waiter must hear of it
            self._fail(batch, error)
        except BaseException:  # cancelled (shutdown): no new calls either
            self._fail(batch, asyncio.CancelledError())
            self._finished(tokens)
            raise
        else:
            for window, row in zip(batch, np.asarray(logits)):
                if not window.future.done():
                    window.future.set_result(row)
            self.meter.completed(tokens)
        self._finished(tokens)
        self._dispatch()

    def _call_attributes(self, inputs, tokens: int) -> dict:
        ids = inputs["input_ids"]
        return {"sentiment.batch.rows": int(ids.shape[0]), "sentiment.batch.padded_tokens": int(ids.size),
                "sentiment.batch.tokens": tokens,
                "sentiment.model.version": getattr(self.predictor, "version", "") or "unpinned",
                "sentiment.predictor.protocol": getattr(self.predictor, "protocol", "")}

    @staticmethod
    def _fail(batch: list[_Window], error: BaseException) -> None:
        for window in batch:
            if not window.future.done():
                window.future.set_exception(error)
                window.future.exception()  # retrieved: its waiter may be gone

    def _finished(self, tokens: int) -> None:
        self._running -= 1
        self._running_tokens -= tokens
        if not self._running:
            self.meter.idle()
        metrics.QUEUED_TOKENS.set(self.queued_tokens + self._running_tokens)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
