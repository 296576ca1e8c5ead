"""The classification pipeline: cache -> single-flight -> tokenize -> batched predictor calls -> cache.

One call classifies a list of texts and returns probabilities in input order. Per request:
one cache lookup for all unique texts; texts repeated in the request are computed once; misses
already being computed by another request are awaited, not recomputed (single-flight); new
misses are tokenized off the event loop, sorted by length and sent in batches of at most the
model's max_batch_size; new results are written back in one pipelined call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from transformer import metrics
from transformer.bundle import ModelBundle
from transformer.cache import TextCache, cache_key, decode_value, encode_value
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
    checked_at: float = 0.0


class TextClassifier:
    def __init__(self, bundle: ModelBundle, bundle_dir: Path, cache: TextCache, predictor: Predictor, *,
                 cache_prefix: str = "sentiment", pad_to_multiple: int = 8, tokenizer_threads: int = 1,
                 check_interval_s: float = 1.0, max_queued_texts: int = 1024):
        self.bundle = bundle
        self.labels = list(bundle.labels)
        self.encoder = TextEncoder(Path(bundle_dir) / bundle.tokenizer_file, bundle.max_length,
                                   bundle.uses_token_type_ids, pad_to_multiple)
        self.cache = cache
        self.predictor = predictor
        self.cache_prefix = cache_prefix
        self.check_interval_s = check_interval_s
        self.status = PredictorStatus()
        self._inflight: dict[str, asyncio.Future] = {}
        self.max_queued_texts = max_queued_texts
        self.queued_texts = 0  # misses handed to the model and not answered yet
        self._executor = ThreadPoolExecutor(tokenizer_threads, thread_name_prefix="tokenize")
        self._background: set[asyncio.Task] = set()
        self._monitor: asyncio.Task | None = None

    # ---- readiness -------------------------------------------------------------------------
    async def check_predictor(self) -> PredictorStatus:
        """Probe readiness and verify the fingerprint on every probe: a rolling update may put a
        new model behind the same predictor address at any time."""
        previous = self.status
        status = PredictorStatus(ready=await self.predictor.model_ready(), fingerprint=previous.fingerprint,
                                 checked_at=time.monotonic())
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
    async def classify(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities [len(texts), num_labels] in id2label order, in input order."""
        metrics.TEXTS_PER_REQUEST.observe(len(texts))
        lowercase = self.bundle.lowercase
        normalized = [normalize_text(text, lowercase) for text in texts]
        keys = [cache_key(self.cache_prefix, self.bundle.fingerprint, text) for text in normalized]
        unique: dict[str, str] = {}
        for key, text in zip(keys, normalized):
            unique.setdefault(key, text)
        unique_keys = list(unique)
        results: dict[str, np.ndarray] = {}

        for key, raw in zip(unique_keys, await self.cache.get_many(unique_keys)):
            value = decode_value(raw, len(self.labels))
            if value is not None:
                results[key] = value
            elif raw is not None:
                metrics.CACHE_CORRUPT.inc()
        metrics.TEXTS.labels(source="cache").inc(len(results))

        waiting: dict[str, asyncio.Future] = {}
        mine: dict[str, str] = {}
        task: asyncio.Task | None = None
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
            metrics.TEXTS.labels(source="model").inc(len(mine))
            done = await asyncio.gather(*waiting.values())
            results.update(zip(waiting.keys(), done))
        if task is not None:
            await asyncio.shield(task)  # the cache write: the next identical request must hit
        return np.stack([results[key] for key in keys]) if keys else np.zeros((0, len(self.labels)), np.float32)

    async def _compute(self, texts: dict[str, str], futures: dict[str, asyncio.Future]) -> None:
        try:
            computed = await self._run_model(list(texts.keys()), list(texts.values()))
        except BaseException as error:
            self._dequeue(len(texts))
            for key, future in futures.items():
                if not future.done():
                    future.set_exception(error if isinstance(error, Exception) else PredictorUnavailable("cancelled"))
                    future.exception()  # mark retrieved: joiners may be gone
                self._inflight.pop(key, None)
            return
        self._dequeue(len(texts))
        for key, future in futures.items():
            if not future.done():
                future.set_result(computed[key])
            self._inflight.pop(key, None)
        await self.cache.set_many({key: encode_value(value) for key, value in computed.items()})

    def _dequeue(self, count: int) -> None:
        self.queued_texts -= count
        metrics.QUEUED_TEXTS.set(self.queued_texts)

    async def _run_model(self, keys: list[str], texts: list[str]) -> dict[str, np.ndarray]:
        if self.status.fingerprint != "match":
            # Never compute with a predictor whose model is not the one our tokenizer and labels belong to.
            raise PredictorUnavailable(f"the predictor's model is not verified: {self.status.reason}")
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
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
        computed: dict[str, np.ndarray] = {}
        for chunk, chunk_logits in zip(chunks, logits):
            for i, row in zip(chunk, softmax(chunk_logits)):
                computed[keys[i]] = row
        return computed

    def ranked(self, probabilities: np.ndarray) -> list[list[dict]]:
        """Every label with its score, highest first, one list per text."""
        order = np.argsort(-probabilities, axis=1, kind="stable")
        labels = self.labels
        return [
            [{"label": labels[j], "score": float(row[j])} for j in row_order]
            for row, row_order in zip(probabilities, order)
        ]

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        await self.cache.close()
        await self.predictor.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
