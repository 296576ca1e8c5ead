"""Whether the predictor may compute for us: ready, and serving the model our bundle belongs to.

A background probe asks Triton every `interval_s` for readiness and for the fingerprint in the
model's configuration; `/project/health` and KServe's readiness routes report what it last saw,
and the classifier refuses to compute while the fingerprint is not verified.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from transformer import metrics
from transformer.backends.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass
class PredictorStatus:
    """What the background probe last saw of the predictor."""

    ready: bool = False
    fingerprint: str = "unverified"  # unverified | match | mismatch
    reason: str = "predictor not checked yet"

    @property
    def serving(self) -> bool:
        return self.ready and self.fingerprint == "match"


class PredictorMonitor:
    def __init__(self, predictor: Predictor, model_name: str, fingerprint: str, interval_s: float = 1.0):
        self.predictor = predictor
        self.model_name = model_name
        self.fingerprint = fingerprint
        self.interval_s = interval_s
        self.status = PredictorStatus()
        self._task: asyncio.Task | None = None

    async def check(self) -> PredictorStatus:
        """Probe readiness and verify the fingerprint on every probe: a rolling update may put a
        new model behind the same predictor address at any time."""
        previous = self.status
        status = PredictorStatus(ready=await self.predictor.model_ready(), fingerprint=previous.fingerprint)
        if not status.ready:
            status.reason = f"predictor model '{self.model_name}' is not ready"
        else:
            served = await self.predictor.fingerprint()
            if served is None:
                status.ready, status.reason = False, "could not read the predictor's model configuration"
            elif served != self.fingerprint:
                status.fingerprint = "mismatch"
                status.reason = (f"fingerprint mismatch: the predictor serves {served[:12] or '(none)'}, this "
                                 f"transformer's bundle is {self.fingerprint[:12]}; deploy the same export to both")
                if previous.fingerprint != "mismatch":
                    log.error("NOT READY: %s", status.reason)
            else:
                status.fingerprint, status.reason = "match", "ok"
                if not previous.serving:
                    log.info("predictor ready, fingerprint %s verified", served[:12])
        if previous.ready and not status.ready:
            log.warning("predictor became unavailable: %s", status.reason)
        self.status = status
        metrics.PREDICTOR_READY.set(1 if status.serving else 0)
        return status

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # the probe must never die
                log.exception("predictor probe failed")
            await asyncio.sleep(self.interval_s)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
