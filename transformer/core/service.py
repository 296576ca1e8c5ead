"""The core every transport calls: one admission path for REST, V1, V2 (JSON, binary) and gRPC.

`ServingCore.classify` checks the limits, holds an in-flight slot only while the request is
served (its body is already complete), bounds the time an admitted request may take, and hands
the texts to the classifier (which sheds by expected wait). `ServingCore.track` records the
request metrics of every transport with the same labels.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from transformer import metrics
from transformer.backends.cache import build_caches
from transformer.backends.predictor import build_predictor
from transformer.bundle import ModelBundle
from transformer.core.classifier import TextClassifier
from transformer.core.prediction import Prediction
from transformer.core.readiness import PredictorMonitor
from transformer.core.requests import ClassifyOptions, ClassifyRequest, Limits, validate_texts
from transformer.core.windows import Truncation
from transformer.errors import Overloaded, ProcessingTimeout, ServiceError
from transformer.settings import Settings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RequestRecord:
    """One request's metric labels; the transport sets `status` before the record closes."""

    protocol: str
    route: str
    started: float
    status: int = 500

    def fail(self, error: ServiceError) -> None:
        self.status = error.status_code


class _Tracked:
    __slots__ = ("record",)

    def __init__(self, record: RequestRecord):
        self.record = record

    def __enter__(self) -> RequestRecord:
        return self.record

    def __exit__(self, kind, error, _traceback) -> None:
        record = self.record
        if kind is not None and issubclass(kind, asyncio.CancelledError):
            record.status = 499  # the client went away (gRPC cancel, REST disconnect)
        metrics.REQUESTS.labels(protocol=record.protocol, route=record.route, status=str(record.status)).inc()
        metrics.REQUEST_LATENCY.labels(protocol=record.protocol, route=record.route).observe(
            time.perf_counter() - record.started)


class ServingCore:
    def __init__(self, settings: Settings, bundle: ModelBundle, classifier: TextClassifier, monitor: PredictorMonitor):
        self.settings = settings
        self.bundle = bundle
        self.classifier = classifier
        self.monitor = monitor
        self.limits = Limits(settings.max_texts, settings.max_text_chars)
        self.default_options = ClassifyOptions(Truncation(settings.truncation), False)
        self.labels = classifier.labels
        self.inflight = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> "ServingCore":
        bundle_dir = Path(settings.model_bundle)
        bundle = ModelBundle.load(bundle_dir)
        if bundle.model_name != settings.model_name:
            log.warning("bundle was exported for model '%s', serving it as '%s'", bundle.model_name, settings.model_name)
        predictor = build_predictor(settings, bundle.version)
        monitor = PredictorMonitor(predictor, settings.model_name, bundle.fingerprint, settings.predictor_check_interval_s)
        memo, remote = build_caches(settings)
        classifier = TextClassifier(bundle, bundle_dir, predictor, memo, remote, monitor, settings)
        log.info("loaded bundle %s: labels %s, fingerprint %s, cache %s", bundle_dir, bundle.labels,
                 bundle.fingerprint[:12], classifier.cache_description)
        return cls(settings, bundle, classifier, monitor)

    @property
    def ready(self) -> bool:
        """Serving: the predictor is ready and serves the model our bundle belongs to."""
        return self.monitor.status.serving

    def track(self, protocol: str, route: str) -> _Tracked:
        """`with core.track("rest", "/project/bulk-predict") as record: ...; record.status = 200`."""
        return _Tracked(RequestRecord(protocol, route, time.perf_counter()))

    async def classify(self, request: ClassifyRequest) -> list[Prediction]:
        texts = validate_texts(request.texts, self.limits, request.field)
        if self.inflight >= self.settings.max_inflight:
            metrics.SHED.labels(reason="inflight").inc()
            raise Overloaded(f"over {self.settings.max_inflight} requests in flight; retry after a second")
        self.inflight += 1
        metrics.INFLIGHT.inc()
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                return await self.classifier.classify(texts, request.options, request.field)
        except TimeoutError:
            raise ProcessingTimeout(f"the request was not answered within {self.settings.request_timeout_s:g} s; "
                                    "retry later or send fewer texts") from None
        finally:
            self.inflight -= 1
            metrics.INFLIGHT.dec()

    def details(self, predictions: list[Prediction]) -> list[dict]:
        return [self.classifier.details(p) for p in predictions]

    def start(self) -> None:
        self.monitor.start()

    async def close(self) -> None:
        self.monitor.stop()
        await self.classifier.close()
        await self.classifier.scheduler.predictor.close()
