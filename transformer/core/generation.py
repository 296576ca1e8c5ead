"""One model version as the transformer serves it: its bundle, its pinned predictor client, its
readiness probe and its pipeline. A rollout builds the next generation beside the current one and
swaps them; requests already running finish on the generation they started on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from transformer.backends.cache import PredictionMemo, RemoteCache
from transformer.backends.predictor import build_predictor
from transformer.bundle import ModelBundle
from transformer.core.classifier import TextClassifier
from transformer.core.readiness import PredictorMonitor
from transformer.settings import Settings

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Generation:
    bundle: ModelBundle
    bundle_dir: Path
    monitor: PredictorMonitor
    classifier: TextClassifier

    @classmethod
    def build(cls, settings: Settings, bundle_dir: Path, memo: PredictionMemo,
              remote: RemoteCache | None) -> "Generation":
        """The caches are shared by every generation (their keys carry the model fingerprint)."""
        bundle = ModelBundle.load(bundle_dir)
        if bundle.model_name != settings.model_name:
            log.warning(
                "bundle was exported for model '%s', serving it as '%s'", bundle.model_name, settings.model_name
            )
        predictor = build_predictor(settings, bundle.version)
        monitor = PredictorMonitor(
            predictor, settings.model_name, bundle.fingerprint, settings.predictor_check_interval_s
        )
        classifier = TextClassifier(bundle, bundle_dir, predictor, memo, remote, monitor, settings)
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
