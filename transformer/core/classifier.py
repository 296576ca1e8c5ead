"""The classification pipeline: cache -> single-flight -> windows -> admission -> scheduler -> aggregate -> cache.

Per request: one cache lookup for all distinct texts; texts repeated in the request are computed
once; misses another request is already computing are awaited, not recomputed (single-flight);
new misses are tokenized off the event loop into windows, their cost in tokens is checked against
the request limit and the expected wait, and their windows go through the scheduler's batched
predictor calls; each text's windows are aggregated into one prediction and written back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from transformer import logs, metrics, tracing
from transformer.backends.cache import TwoTierCache
from transformer.bundle import BundleError, ModelBundle
from transformer.core.lexical import LEXICAL_FILE, LexicalHead, content_ids, unfit_for
from transformer.core.prediction import Prediction, answer_mode, cache_key, decode_value, encode_value
from transformer.core.readiness import PredictorMonitor
from transformer.core.requests import ClassifyOptions
from transformer.core.scheduler import BatchScheduler
from transformer.core.tokenization import TextEncoder, TextWindows, normalize_text
from transformer.core.windows import Truncation, aggregate, raw_logits
from transformer.errors import InvalidRequest, Overloaded, PredictorUnavailable, RequestTooLarge

log = logging.getLogger(__name__)

CACHE, MODEL, SHARED = (metrics.SOURCES.index(source) for source in ("cache", "model", "shared"))


@dataclass(frozen=True, slots=True)
class PipelineRules:
    """What besides the model shapes or refuses an answer: the cache keys' prefix, how windows'
    logits become one answer, and the admission bounds (tokens per request, expected wait)."""

    cache_prefix: str
    aggregation: str
    max_request_tokens: int
    max_text_chars: int  # named in the refusal of a request over `max_request_tokens`
    max_queue_wait_ms: float


class TextClassifier:
    """The pipeline of one model generation, given its parts: the generation builds the encoder,
    the scheduler (over the predictor) and the tokenizer's thread pool; the cache is every
    generation's."""

    def __init__(self, bundle: ModelBundle, encoder: TextEncoder, scheduler: BatchScheduler, cache: TwoTierCache,
                 monitor: PredictorMonitor, rules: PipelineRules, executor: Executor | None = None,
                 prediction_log: logs.PredictionLog | None = None):
        self.bundle = bundle
        self.labels = list(bundle.labels)
        self.encoder = encoder
        self.scheduler = scheduler
        self.cache = cache
        self.monitor = monitor
        self.rules = rules
        self._executor = executor  # None: tokenize on the event loop
        self.prediction_log = prediction_log  # None: off
        self.window_tokens = bundle.max_length - encoder.special_tokens
        # What besides the model changes an answer, as a cache-key segment per truncation mode.
        # The score function too, when it is not softmax: a bundle that records another one for the
        # same ONNX file never reads softmax entries.
        function = "" if bundle.score_function == "softmax" else f".{bundle.score_function}"
        # A long text's answer is calibrated by the bundle's temperature for the served aggregation;
        # chunk-mode keys name it, so a bundle with another fit never reads these entries.
        self.document_temperature = bundle.document_temperature(rules.aggregation)
        calibrated = "" if self.document_temperature == 1.0 else f".t{self.document_temperature!r}"
        # The model's text replacements (emoji read as names) live beside its tokenizer, not in the ONNX
        # file: keys name their table, so a new table never reads answers given under another.
        replaced = "" if encoder.replacements is None else f".r{encoder.replacements.digest}"
        # So does a lexical head: a two-label softmax model's answer combined with its n-gram margin.
        self.lexical = lexical_head_of(encoder, bundle)
        lexical = "" if self.lexical is None else f".l{self.lexical.digest}"
        self._how = {mode: answer_mode(mode.value, bundle.max_length, encoder.stride, rules.aggregation)
                     + (calibrated if mode is Truncation.CHUNK else "") + function + replaced + lexical
                     for mode in Truncation}
        self._decode = functools.partial(decode_value, labels=self.labels, function=bundle.score_function)
        self._inflight: dict[str, asyncio.Future] = {}
        self._background: set[asyncio.Task] = set()
        # raw text -> (key, normalized) per mode: a repeated short text skips normalization and hashing
        # (C-level LRU, bounded in entries and, through the length cut, in bytes).
        self._short_key = functools.lru_cache(maxsize=8192)(self._key)
        self._from = {source: metrics.TEXTS.labels(source=source) for source in metrics.SOURCES}
        self.stats = metrics.PREDICTIONS.for_version(bundle.version, self.labels)

    def _key_of(self, text: str, how: str) -> tuple[str, str]:
        return self._short_key(text, how) if len(text) <= 256 else self._key(text, how)

    def _key(self, text: str, how: str) -> tuple[str, str]:
        normalized = normalize_text(text, self.bundle.lowercase)
        return cache_key(self.rules.cache_prefix, self.bundle.fingerprint, how, normalized), normalized

    # ---- classification --------------------------------------------------------------------
    async def classify(self, texts: Sequence[str], options: ClassifyOptions, field: str = "text") -> list[Prediction]:
        """One prediction per text, in input order."""
        started = time.perf_counter() if self.prediction_log is not None else 0.0
        metrics.TEXTS_PER_REQUEST.observe(len(texts))
        metrics.TEXTS_RECEIVED.inc(len(texts))
        how = self._how[options.truncation]
        keyed = [self._key_of(text, how) for text in texts]
        keys = [key for key, _ in keyed]
        unique = dict(keyed)  # key -> normalized text, first occurrence order
        results: dict[str, Prediction] = await self.cache.get_many(list(unique), self._decode)
        if options.truncation is Truncation.ERROR:
            self._refuse_long(field, keys, {key: p.tokens for key, p in results.items()})
        self._from["cache"].inc(len(results))
        self.stats.record((p.probabilities for p in results.values()), CACHE)
        if len(results) == len(unique):
            self._observe(started, results, {}, {}, keys, texts)
            return [results[key] for key in keys]

        waiting: dict[str, asyncio.Future] = {}
        mine: dict[str, str] = {}
        for key, normalized in unique.items():
            if key in results:
                continue
            if key in self._inflight:
                waiting[key] = self._inflight[key]
            else:
                mine[key] = normalized
        if waiting:
            metrics.SINGLE_FLIGHT_JOINS.inc(len(waiting))
            self._from["shared"].inc(len(waiting))
        own: dict[str, asyncio.Future] = {}
        if mine:
            own, joined = await self._start(mine, options, field, keys)
            waiting.update(joined)
        done = dict(zip(waiting.keys(), await asyncio.gather(*waiting.values())))
        computed = dict(zip(own.keys(), await asyncio.gather(*own.values())))
        self.stats.record((p.probabilities for p in done.values()), SHARED)
        self.stats.record((p.probabilities for p in computed.values()), MODEL)
        self._observe(started, results, done, computed, keys, texts)
        results.update(done)
        results.update(computed)
        return [results[key] for key in keys]

    def _observe(self, started: float, cached: dict, shared: dict, computed: dict, keys: list[str],
                 texts: Sequence[str]) -> None:
        """The request's answers by source on its span, and the sampled prediction log."""
        tracing.annotate(lambda: {"sentiment.texts.cache": len(cached), "sentiment.texts.shared": len(shared),
                                  "sentiment.texts.model": len(computed)})
        if self.prediction_log is not None:
            raw = dict(zip(keys, texts)) if self.prediction_log.with_text else None
            self.prediction_log.record(started, (("cache", cached), ("shared", shared), ("model", computed)), raw)

    def _refuse_long(self, field: str, keys: list[str], tokens: dict[str, int]) -> None:
        """`truncation=error`: a 422 naming the first text longer than the model's window."""
        for index, key in enumerate(keys):
            count = tokens.get(key, 0)
            if count > self.window_tokens:
                raise InvalidRequest(
                    f"{field}[{index}] has {count} tokens; the model's window holds {self.window_tokens} tokens "
                    "of text "
                    f"({self.window_tokens + self.encoder.special_tokens} with its special tokens). Send truncation "
                    "'chunk' to judge it whole or 'head' to read only its start",
                    index=index,
                    tokens=count,
                )

    def details(self, prediction: Prediction) -> dict:
        """Per text, with `details: true`: its size and whether the answer read all of it."""
        cut = prediction.windows == 1 and prediction.tokens > self.window_tokens
        return {"tokens": prediction.tokens, "windows": prediction.windows, "truncated": cut}

    async def _start(self, mine: dict[str, str], options: ClassifyOptions, field: str,
                     keys: list[str]) -> tuple[dict[str, asyncio.Future], dict[str, asyncio.Future]]:
        """Tokenize this request's own misses, admit their cost, and start computing them; returns
        (its own futures, the futures of texts another request started meanwhile)."""
        status = self.monitor.status
        if status.fingerprint != "match":
            # Never compute with a predictor whose model is not the one our tokenizer and labels belong to.
            raise PredictorUnavailable(f"the predictor's model is not verified: {status.reason}")
        if not status.ready:
            # The probe found the predictor down or hung: answer now rather than wait out the predictor timeout.
            raise PredictorUnavailable(f"the predictor is not ready ({status.reason}); retry shortly")
        # Shed before tokenizing when even a cheap estimate (a token per 4 characters) is over the
        # bound: refusing work must cost less than doing it. The real count is checked after.
        self._admit(sum(len(text) // 4 + self.encoder.special_tokens for text in mine.values()))
        windows = await self._tokenize(list(mine.values()))
        by_key = dict(zip(mine, windows))
        # Another request may have started on some of these texts while we tokenized: join it.
        joined = {key: self._inflight[key] for key in by_key if key in self._inflight}
        for key in joined:
            del by_key[key]
        if not by_key:
            return {}, joined
        if options.truncation is Truncation.ERROR:
            self._refuse_long(field, keys, {key: text.token_count for key, text in by_key.items()})
        elif options.truncation is Truncation.HEAD:
            by_key = {key: _head(text) for key, text in by_key.items()}
        cost = sum(text.cost for text in by_key.values())
        limit = self.rules.max_request_tokens
        if cost > limit:
            raise RequestTooLarge(
                f"the new texts of this request are {cost} tokens for the model; the limit is {limit} tokens per "
                f"request (and {self.rules.max_text_chars} characters per text): split the request",
                limit=limit, tokens=cost)
        self._admit(cost)
        loop = asyncio.get_running_loop()
        futures = {key: loop.create_future() for key in by_key}
        self._inflight.update(futures)
        # A task of its own: if this request is cancelled, the texts others wait for still complete.
        task = loop.create_task(self._compute(by_key, futures, options.truncation))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        self._from["model"].inc(len(by_key))
        if joined:
            metrics.SINGLE_FLIGHT_JOINS.inc(len(joined))
            self._from["shared"].inc(len(joined))
        return futures, joined

    def _admit(self, cost: int) -> None:
        """Shed by expected wait: a model whose queue fits in its next round of calls takes any
        request, and so does a model whose throughput has not been measured yet (the first fifth of
        a second of work); otherwise the new work must be done within the bound, at the throughput
        measured on this machine."""
        scheduler = self.scheduler
        if not scheduler.backlog_beyond_next_round or scheduler.meter.prior:
            return  # a short queue, or no measurement yet (only the in-flight limit applies)
        wait = scheduler.expected_wait_s(cost)
        bound = self.rules.max_queue_wait_ms / 1000
        if wait > bound:
            metrics.SHED.labels(reason="expected_wait").inc()
            raise Overloaded(f"the model is busy: this request would wait about {wait:.1f} s (limit {bound:g} s); "
                             "retry after a second")

    async def _tokenize(self, texts: list[str]) -> list[TextWindows]:
        with tracing.span("sentiment.tokenize", {"sentiment.texts": len(texts)}) as span:
            started = time.perf_counter()
            if self._executor is None:
                windows = self.encoder.windows(texts)
            else:
                windows = await asyncio.get_running_loop().run_in_executor(self._executor, self.encoder.windows, texts)
            metrics.TOKENIZE_SECONDS.observe(time.perf_counter() - started)
            if span.is_recording():
                span.set_attributes({"sentiment.windows": sum(len(text.windows) for text in windows),
                                     "sentiment.tokens": sum(text.token_count for text in windows)})
        return windows

    async def _compute(self, texts: dict[str, TextWindows], futures: dict[str, asyncio.Future],
                       truncation: Truncation) -> None:
        try:
            with tracing.span("sentiment.compute", lambda: {
                    "sentiment.texts": len(texts), "sentiment.windows": sum(len(t.windows) for t in texts.values()),
                    "sentiment.tokens": sum(t.cost for t in texts.values())}):
                computed = await self._run_model(texts, truncation)
        except BaseException as error:  # noqa: BLE001 - every waiter must hear of it
            for key, future in futures.items():
                if not future.done():
                    future.set_exception(error if isinstance(error, Exception) else PredictorUnavailable("cancelled"))
                    future.exception()  # mark retrieved: joiners may be gone
                self._inflight.pop(key, None)
            return
        for key, future in futures.items():
            if not future.done():
                future.set_result(computed[key])
            self._inflight.pop(key, None)
        # In the same step, before any waiter runs: the next identical request is a hit by construction.
        self.cache.put_many(computed, encode_value)

    async def _run_model(self, texts: dict[str, TextWindows], truncation: Truncation) -> dict[str, Prediction]:
        encodings = [window for text in texts.values() for window in text.windows]
        rows = await asyncio.gather(*self.scheduler.submit(encodings))
        metrics.WINDOWS.inc(len(encodings))
        computed: dict[str, Prediction] = {}
        start = 0
        for key, text in texts.items():
            count = len(text.windows)
            logits = np.stack(rows[start:start + count])
            start += count
            scores = aggregate(self.rules.aggregation, logits, np.asarray(text.new_tokens), self.bundle.score_function,
                               self.document_temperature)
            if self.lexical is not None:
                scores = self.lexical.combine(scores, content_ids(text.windows, text.new_tokens), count > 1)
            computed[key] = Prediction.of(scores, self.labels, text.token_count, count, raw_logits(logits))
            metrics.TEXT_TOKENS.observe(text.token_count)
            if text.token_count > self.window_tokens:
                metrics.LONG_TEXTS.labels(mode=truncation.value).inc()
        return computed

    @property
    def computing(self) -> bool:
        """Texts of this pipeline are being computed (someone may wait for them)."""
        return bool(self._inflight) or bool(self._background)

    async def close_own(self) -> None:
        """Close what belongs to this pipeline alone (not the caches it shares)."""
        await self.scheduler.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        await self.close_own()
        await self.cache.close()


def lexical_head_of(encoder: TextEncoder, bundle: ModelBundle) -> LexicalHead | None:
    """The lexical head beside the bundle's tokenizer, where it combines with this model's answers: it
    has its combinations (the export fitted them) and the model answers two softmax scores."""
    head = LexicalHead.beside(encoder.tokenizer_file)
    if head is None or not head.combines:
        return None
    refusal = unfit_for(bundle.score_function, len(bundle.labels))
    if refusal is not None:
        raise BundleError(f"{encoder.tokenizer_file.parent} has {LEXICAL_FILE}: {refusal}")
    return head


def _head(text: TextWindows) -> TextWindows:
    """Only the first window: what `truncation=head` computes (the count of the whole text is kept)."""
    if len(text.windows) == 1:
        return text
    return TextWindows(text.windows[:1], text.token_count, text.new_tokens[:1])
