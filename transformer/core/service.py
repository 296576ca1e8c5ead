"""The core every transport calls: one admission path for REST, V1, V2 (JSON, binary) and gRPC.

`ServingCore.classify` checks the limits, holds an in-flight slot only while the request is
served (its body is already complete), bounds the time an admitted request may take, and hands
the texts to the current model generation's classifier (which sheds by expected wait).
`ServingCore.switch` moves serving to another model version without dropping a request.
What a request looked like on the wire (its route, its status, its log line and span) is the
transports' business: `transport.recording`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from transformer import metrics, tracing
from transformer.api_keys import ApiKeys
from transformer.backends.cache import build_cache
from transformer.core.classifier import TextClassifier
from transformer.core.generation import Generation
from transformer.core.prediction import Prediction
from transformer.core.requests import ClassifyOptions, ClassifyRequest, Limits, validate_texts
from transformer.core.switch import RecentTexts, next_generation
from transformer.core.windows import Truncation
from transformer.errors import Overloaded, ProcessingTimeout
from transformer.settings import Settings

log = logging.getLogger(__name__)

@dataclass(slots=True)
class ClassifyResult:
    """The answers of one request and the model generation that computed every one of them."""

    predictions: list[Prediction]
    classifier: TextClassifier
    version: str

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    def details(self) -> list[dict]:
        return [self.classifier.details(p) for p in self.predictions]


class ServingCore:
    def __init__(self, settings: Settings, generation: Generation, api_keys: ApiKeys | None = None):
        self.settings = settings
        self.generation = generation
        self.api_keys = api_keys  # None: API_KEYS unset, every route open
        self.limits = Limits(settings.max_texts, settings.max_text_chars)
        self.default_options = ClassifyOptions(Truncation(settings.truncation), False)
        self.inflight = 0
        self.recent = RecentTexts(settings.replay_sample_size)
        self._switching = asyncio.Lock()
        self.background: set[asyncio.Task] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> "ServingCore":
        api_keys = ApiKeys(Path(settings.api_keys)) if settings.api_keys else None  # refuses a bad file first
        generation = Generation.build(settings, Path(settings.model_bundle), build_cache(settings))
        log.info("loaded bundle %s: version %s, labels %s, fingerprint %s, cache %s", settings.model_bundle,
                 generation.version, generation.labels, generation.bundle.fingerprint[:12],
                 generation.classifier.cache.description)
        return cls(settings, generation, api_keys)

    @property
    def ready(self) -> bool:
        """Serving: the predictor is ready and serves the model version our bundle belongs to."""
        return self.generation.monitor.status.serving

    @property
    def version(self) -> str:
        return self.generation.version

    @property
    def labels(self) -> list[str]:
        return self.generation.labels

    async def classify(self, request: ClassifyRequest) -> ClassifyResult:
        texts = validate_texts(request.texts, self.limits, request.field)
        tracing.annotate(lambda: {"sentiment.texts": len(texts), "sentiment.model.version": self.generation.version})
        if self.inflight >= self.settings.max_inflight:
            metrics.SHED.labels(reason="inflight").inc()
            raise Overloaded(f"over {self.settings.max_inflight} requests in flight; retry after a second")
        generation = self.generation  # the whole request is answered by one model version
        self.inflight += 1
        metrics.INFLIGHT.inc()
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                predictions = await generation.classifier.classify(texts, request.options, request.field)
        except TimeoutError:
            raise ProcessingTimeout(f"the request was not answered within {self.settings.request_timeout_s:g} s; "
                                    "retry later or send fewer texts") from None
        finally:
            self.inflight -= 1
            metrics.INFLIGHT.dec()
        self.recent.add(texts)
        return ClassifyResult(predictions, generation.classifier, generation.version)

    async def switch(self, bundle_dir: Path) -> dict:
        """Serve the model version of `bundle_dir` from now on (see `core.switch`); one at a time."""
        async with self._switching:
            old = self.generation
            outcome = await next_generation(self.settings, old, Path(bundle_dir), self.recent.snapshot(),
                                            self.default_options)
            if outcome.generation is not None:
                self._swap(old, outcome.generation, outcome.report)
        return outcome.report

    def _swap(self, old: Generation, new: Generation, report: dict) -> None:
        """From here on every new request is answered by `new`; requests that started on `old` finish
        on it, and it retires in the background."""
        self.generation = new
        old.monitor.stop()
        log.info("now serving model version %s (%s); %d texts replayed, %d labels flip", new.version,
                 new.bundle.fingerprint[:12], report["shadow"]["sample"], report["shadow"]["flips"])
        retiring = asyncio.get_running_loop().create_task(old.retire())
        self.background.add(retiring)
        retiring.add_done_callback(self.background.discard)

    def start(self) -> None:
        self.generation.monitor.start()

    async def close(self) -> None:
        await self.generation.close()
