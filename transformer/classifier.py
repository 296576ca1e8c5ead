"""The classification pipeline: cache -> single-flight -> tokenize -> batched predictor calls -> cache.

One call classifies a list of texts and returns probabilities in input order. Per request:
one cache lookup for all unique texts; texts repeated in the request are computed once; misses
already being computed by another request are awaited, not recomputed (single-flight); new
misses are tokenized off the event loop, sorted by length and sent in batches of at most the
model's max_batch_size; new results are written back in one pipelined call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from transformer import metrics
from transformer.bundle import ModelBundle
from transformer.cache import Prediction, PredictionMemo, RemoteCache, cache_key, decode_value, encode_value
from transformer.errors import Overloaded, PredictorUnavailable
from transformer.predictor import Predictor
from transformer.tokenization import TextEncoder, normalize_text

log = logging.getLogger(__name__)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float64)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


@dataclass
class PredictorStatus:
    """What the background probe last saw of the predictor."""

    ready: bool = False
    fingerprint: str = "unverified"  # unverified | match | mismatch
    reason: str = "predictor not checked yet"


class TextClassifier:
    def __init__(self, bundle: ModelBundle, bundle_dir: Path, predictor: Predictor, memo: PredictionMemo,
                 remote: RemoteCache | None = None, *, cache_prefix: str = "sentiment", pad_to_multiple: int = 8,
                 tokenizer_threads: int = 1, check_interval_s: float = 1.0, max_queued_texts: int = 1024):
        self.bundle = bundle
        self.labels = list(bundle.labels)
        self.encoder = TextEncoder(Path(bundle_dir) / bundle.tokenizer_file, bundle.max_length,
                                   bundle.uses_token_type_ids, pad_to_multiple)
        self.memo = memo
        self.remote = remote
        self.predictor = predictor
        self.cache_prefix = cache_prefix
        self.check_interval_s = check_interval_s
        self.status = PredictorStatus()
        self._inflight: dict[str, asyncio.Future] = {}
        self.max_queued_texts = max_queued_texts
        self.queued_texts = 0  # misses handed to the model and not answered yet
        self._executor = ThreadPoolExecutor(tokenizer_threads, thread_name_prefix="tokenize") if tokenizer_threads else None
        self._background: set[asyncio.Task] = set()
        self._monitor: asyncio.Task | None = None
        # raw text -> cache key: a repeated short text skips normalization and hashing (C-level LRU,
        # bounded in entries and, through the length cut, in bytes).
        self._short_key = functools.lru_cache(maxsize=8192)(self._key)
        self._from_cache = metrics.TEXTS.labels(source="cache")
        self._from_model = metrics.TEXTS.labels(source="model")

    @property
    def cache_description(self) -> str:
        return f"{self.memo.name} LRU ({self.memo.max_entries} entries)" + (f" + {self.remote.name}" if self.remote else "")

    def _key_of(self, text: str) -> tuple[str, str]:
        return self._short_key(text) if len(text) <= 256 else self._key(text)

    def _key(self, text: str) -> tuple[str, str]:
        normalized = normalize_text(text, self.bundle.lowercase)
        return cache_key(self.cache_prefix, self.bundle.fingerprint, normalized), normalized

    # ---- readiness -------------------------------------------------------------------------
    async def check_predictor(self) -> PredictorStatus:
        """Probe readiness and verify the fingerprint on every probe: a rolling update may put a
        new model behind the same predictor address at any time."""
        previous = self.status
        status = PredictorStatus(ready=await self.predictor.model_ready(), fingerprint=previous.fingerprint)
        if not status.ready:
            status.reason = f"predictor model '{self.bundle.model_name}' is not ready"
        else:
            served = await self.predictor.fingerprint()
            if served is None:
                status.ready, status.reason = False, "could not read the predictor's model configuration"
            elif served != self.bundle.fingerprint:
                status.fingerprint = "mismatch"
                status.reason = (f"fingerprint mismatch: the predictor serves {served[:12] or '(none)'}, this "
                                 f"transformer's bundle is {self.bundle.fingerprint[:12]}; deploy the same export to both")
                if previous.fingerprint != "mismatch":
                    log.error("NOT READY: %s", status.reason)
            else:
                status.fingerprint, status.reason = "match", "ok"
                if not previous.ready or previous.fingerprint != "match":
                    log.info("predictor ready, fingerprint %s verified", served[:12])
        if previous.ready and not status.ready:
            log.warning("predictor became unavailable: %s", status.reason)
        self.status = status
        metrics.PREDICTOR_READY.set(1 if self.serving else 0)
        return status

    def start_monitor(self) -> None:
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.get_running_loop().create_task(self._monitor_loop())

    async def _monitor_loop(self) -> None:
        while True:
            try:
                await self.check_predictor()
            except Exception:  # the probe must never die
                log.exception("predictor probe failed")
            await asyncio.sleep(self.check_interval_s)

    @property
    def serving(self) -> bool:
        return self.status.ready and self.status.fingerprint == "match"

    # ---- classification --------------------------------------------------------------------
    async def classify(self, texts: Sequence[str]) -> list[Prediction]:
        """One prediction per text, in input order."""
        metrics.TEXTS_PER_REQUEST.observe(len(texts))
        keyed = [self._key_of(text) for text in texts]
        keys = [key for key, _ in keyed]
        unique = dict(keyed)  # key -> normalized text, first occurrence order
        results = self.memo.get_many(list(unique))
        if len(results) < len(unique) and self.remote is not None:
            remaining = [key for key in unique if key not in results]
            fetched: dict[str, Prediction] = {}
            for key, raw in zip(remaining, await self.remote.get_many(remaining)):
                value = decode_value(raw, len(self.labels))
                if value is not None:
                    fetched[key] = Prediction.of(value, self.labels)
                elif raw is not None:
                    metrics.CACHE_CORRUPT.inc()
            self.memo.put_many(fetched)
            results.update(fetched)
        self._from_cache.inc(len(results))
        unique_keys = list(unique)
        if len(results) == len(unique_keys):
            return [results[key] for key in keys]

        waiting: dict[str, asyncio.Future] = {}
        mine: dict[str, str] = {}
        for key in unique_keys:
            if key in results:
                continue
            if key in self._inflight:
                waiting[key] = self._inflight[key]
            else:
                mine[key] = unique[key]
        if waiting:
            metrics.SINGLE_FLIGHT_JOINS.inc(len(waiting))
        if mine:
            # Admission: bound the model's backlog (and so the latency of what is admitted); cache hits
            # and joins above cost nothing and are always served. An idle model takes any request.
            if self.queued_texts and self.queued_texts + len(mine) > self.max_queued_texts:
                metrics.SHED.inc()
                raise Overloaded(f"the model has {self.queued_texts} texts queued (limit {self.max_queued_texts}); "
                                 "retry after a second")
            self.queued_texts += len(mine)
            metrics.QUEUED_TEXTS.set(self.queued_texts)
            loop = asyncio.get_running_loop()
            futures = {key: loop.create_future() for key in mine}
            self._inflight.update(futures)
            # A task of its own: if this request is cancelled, the texts others wait for still complete.
            task = loop.create_task(self._compute(mine, futures))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            waiting.update(futures)
        if waiting:
            self._from_model.inc(len(mine))
            done = await asyncio.gather(*waiting.values())
            results.update(zip(waiting.keys(), done))
        return [results[key] for key in keys]

    async def _compute(self, texts: dict[str, str], futures: dict[str, asyncio.Future]) -> None:
        try:
            computed = await self._run_model(list(texts.keys()), list(texts.values()))
        except BaseException as error:
            for key, future in futures.items():
                if not future.done():
                    future.set_exception(error if isinstance(error, Exception) else PredictorUnavailable("cancelled"))
                    future.exception()  # mark retrieved: joiners may be gone
                self._inflight.pop(key, None)
            return
        finally:
            self._dequeue(len(texts))
        self.memo.put_many(computed)
        for key, future in futures.items():
            if not future.done():
                future.set_result(computed[key])
            self._inflight.pop(key, None)
        if self.remote is not None:
            self.remote.schedule_set({key: encode_value(p.probabilities) for key, p in computed.items()})

    def _dequeue(self, count: int) -> None:
        self.queued_texts -= count
        metrics.QUEUED_TEXTS.set(self.queued_texts)

    async def _run_model(self, keys: list[str], texts: list[str]) -> dict[str, Prediction]:
        if self.status.fingerprint != "match":
            # Never compute with a predictor whose model is not the one our tokenizer and labels belong to.
            raise PredictorUnavailable(f"the predictor's model is not verified: {self.status.reason}")
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        if self._executor is None:
            encodings = self.encoder.tokenize(texts)
        else:
            encodings = await loop.run_in_executor(self._executor, self.encoder.tokenize, texts)
        metrics.TOKENIZE_SECONDS.observe(time.perf_counter() - started)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        size = self.bundle.max_batch_size
        chunks = [order[i:i + size] for i in range(0, len(order), size)]
        for chunk in chunks:
            metrics.PREDICTOR_BATCH_SIZE.observe(len(chunk))
        logits = await asyncio.gather(
            *(self.predictor.infer(self.encoder.pad([encodings[i] for i in chunk])) for chunk in chunks)
        )
        computed: dict[str, Prediction] = {}
        for chunk, chunk_logits in zip(chunks, logits):
            for i, row in zip(chunk, softmax(chunk_logits)):
                computed[keys[i]] = Prediction.of(row, self.labels)
        return computed

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        self.memo.clear()
        if self.remote is not None:
            await self.remote.close()
        await self.predictor.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
