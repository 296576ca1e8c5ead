"""One model version as the transformer serves it: its bundle, its pinned predictor client, its
readiness probe and its pipeline. A rollout builds the next generation beside the current one and
swaps them; requests already running finish on the generation they started on.

This is where a generation's parts are made from Settings (the encoder, the scheduler over the
predictor, the tokenizer's threads, the prediction log) and handed to the classifier, which builds
nothing itself.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from transformer import logs
from transformer.backends.cache import TwoTierCache
from transformer.backends.predictor import Predictor, build_predictor
from transformer.bundle import ModelBundle
from transformer.core.classifier import PipelineRules, TextClassifier
from transformer.core.readiness import PredictorMonitor
from transformer.core.scheduler import BatchScheduler
from transformer.core.tokenization import TextEncoder
from transformer.settings import Settings

log = logging.getLogger(__name__)


def build_classifier(settings: Settings, bundle: ModelBundle, bundle_dir: Path, predictor: Predictor,
                     cache: TwoTierCache, monitor: PredictorMonitor) -> TextClassifier:
    """The pipeline of one model version, its parts made from the settings: the bundle's tokenizer
    cut into windows, the scheduler's calls to the predictor, the tokenizer's threads (none: on the
    event loop), the prediction log (none when its sample rate is 0)."""
    encoder = TextEncoder(bundle_dir / bundle.tokenizer_file, bundle.max_length, bundle.uses_token_type_ids,
                          settings.pad_to_multiple, stride=settings.window_stride)
    scheduler = BatchScheduler(predictor, encoder, max_rows=bundle.max_batch_size,
                               max_batch_tokens=settings.max_batch_tokens,
                               max_concurrent=settings.max_concurrent_batches)
    threads = settings.tokenizer_threads
    executor = ThreadPoolExecutor(threads, thread_name_prefix="tokenize") if threads else None
    prediction_log = logs.PredictionLog(settings.prediction_log_sample_rate, settings.prediction_log_text,
                                        list(bundle.labels), bundle.version) \
        if settings.prediction_log_sample_rate else None
    rules = PipelineRules(settings.cache_prefix, settings.aggregation, settings.max_request_tokens,
                          settings.max_text_chars, settings.max_queue_wait_ms)
    return TextClassifier(bundle, encoder, scheduler, cache, monitor, rules, executor, prediction_log)


@dataclass(eq=False)
class Generation:
    bundle: ModelBundle
    bundle_dir: Path
    monitor: PredictorMonitor
    classifier: TextClassifier

    @classmethod
    def build(cls, settings: Settings, bundle_dir: Path, cache: TwoTierCache) -> "Generation":
        """The cache is shared by every generation (its keys carry the model fingerprint)."""
        bundle = ModelBundle.load(bundle_dir)
        if bundle.model_name != settings.model_name:
            log.warning(
                "bundle was exported for model '%s', serving it as '%s'", bundle.model_name, settings.model_name
            )
        predictor = build_predictor(settings, bundle.version)
        monitor = PredictorMonitor(
            predictor, settings.model_name, bundle.fingerprint, settings.predictor_check_interval_s
        )
        classifier = build_classifier(settings, bundle, Path(bundle_dir), predictor, cache, monitor)
        return cls(bundle, Path(bundle_dir), monitor, classifier)

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    def describe(self) -> dict:
        return {"version": self.version, "fingerprint": self.bundle.fingerprint, "variant": self.bundle.variant}

    async def until_serving(self, timeout_s: float) -> bool:
        """Probe until the predictor serves this version with this fingerprint (or give up)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            if (await self.monitor.check()).serving:
                return True
            await asyncio.sleep(min(0.2, self.monitor.interval_s))
        return False

    async def retire(self, drain_timeout_s: float = 60.0) -> None:
        """After a swap: let the work it started finish, then close what is its own (not the caches)."""
        scheduler = self.classifier.scheduler
        deadline = asyncio.get_running_loop().time() + drain_timeout_s
        while (scheduler.busy or self.classifier.computing) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        self.monitor.stop()
        await self.classifier.close_own()
        await scheduler.predictor.close()
        log.info("retired model version %s (%s)", self.version, self.bundle.fingerprint[:12])

    async def close(self) -> None:
        """At shut-down: everything, the shared caches included."""
        self.monitor.stop()
        await self.classifier.close()
        await self.classifier.scheduler.predictor.close()
