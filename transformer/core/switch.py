"""Moving serving to another model version without a failed request or a mixed answer.

The next generation is built beside the current one (its own predictor client pinned to its own
version, its own probe and pipeline; the caches are shared, their keys carry the fingerprint). It
takes over only once the predictor serves its version. Before the swap it replays a sample of
recently served texts, so their answers are cached for the new version (the hit ratio does not
collapse) and the two versions can be compared: the shadow report counts label flips and lists
the largest score changes (texts named by a hash, never by their words). Requests that started
on the old generation finish on it; the old one is then retired.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Sequence

from transformer.core.generation import Generation
from transformer.core.prediction import Prediction
from transformer.core.requests import ClassifyOptions
from transformer.errors import Overloaded, PredictorUnavailable
from transformer.settings import Settings

log = logging.getLogger(__name__)

SAMPLE_PER_REQUEST = 8      # texts taken from each request: cheap on the hot path, varied across requests
SAMPLE_MAX_CHARS = 2_000    # long texts are left out of the sample (memory, replay time)
REPLAY_BATCH = 32


class RecentTexts:
    """A bounded sample of recently served distinct texts, kept in memory only (never logged)."""

    def __init__(self, max_texts: int):
        self.max_texts = max_texts
        self._texts: OrderedDict[str, None] = OrderedDict()

    def add(self, texts: Sequence[str]) -> None:
        if not self.max_texts:
            return
        kept = self._texts
        for text in texts[:SAMPLE_PER_REQUEST]:
            if len(text) <= SAMPLE_MAX_CHARS:
                kept[text] = None
                kept.move_to_end(text)
        while len(kept) > self.max_texts:
            kept.popitem(last=False)

    def snapshot(self) -> list[str]:
        return list(self._texts)

    def __len__(self) -> int:
        return len(self._texts)


def text_id(text: str) -> str:
    """How the shadow report names a text: a short hash, so no text leaves the process."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


async def _answers(generation: Generation, texts: list[str], options: ClassifyOptions) -> list[Prediction]:
    """Every text's answer from one generation, in small batches that yield to live traffic."""
    answers: list[Prediction] = []
    for start in range(0, len(texts), REPLAY_BATCH):
        batch = texts[start:start + REPLAY_BATCH]
        for _attempt in range(50):
            try:
                answers += await generation.classifier.classify(batch, options)
                break
            except Overloaded:  # live traffic first: the replay waits for room
                await asyncio.sleep(0.2)
        else:
            raise PredictorUnavailable("the model stayed too busy to replay the sample")
    return answers


def shadow_report(texts: list[str], old: list[Prediction], new: list[Prediction], labels_old: list[str],
                  labels_new: list[str], largest: int = 5) -> dict:
    """How the two versions differ on the same texts: label flips and the largest changes of the
    score of the label the old version chose."""
    changes: list[dict[str, Any]] = []
    flips = 0
    for text, before, after in zip(texts, old, new):
        label_before, label_after = labels_old[before.best], labels_new[after.best]
        flips += label_before != label_after
        score_after = after.probabilities[labels_new.index(label_before)] if label_before in labels_new else 0.0
        changes.append(
            {
                "text": text_id(text),
                "before": {"label": label_before, "score": round(before.probabilities[before.best], 4)},
                "after": {"label": label_after, "score": round(after.probabilities[after.best], 4)},
                "change": round(abs(before.probabilities[before.best] - score_after), 4),
            }
        )
    changes.sort(key=lambda change: -change["change"])
    return {"sample": len(texts), "flips": flips, "largest_changes": changes[:largest]}


@dataclass(slots=True)
class SwitchOutcome:
    """What a switch attempt leaves: the report, and the generation to serve from now on (None: keep
    the current one). The caller swaps it in, so the core stays the one owner of its generation."""

    report: dict
    generation: Generation | None = None


async def next_generation(settings: Settings, old: Generation, bundle_dir: Path, recent: Sequence[str],
                          options: ClassifyOptions) -> SwitchOutcome:
    """Build, wait for, warm and compare the next generation; it comes back monitored and ready to
    take over. A failure leaves nothing to swap (the report says why)."""
    started = time.monotonic()
    report: dict = {"status": "failed", "from": old.describe(), "bundle": str(bundle_dir)}
    new = Generation.build(settings, bundle_dir, old.classifier.cache)
    report["to"] = new.describe()
    if new.bundle.fingerprint == old.bundle.fingerprint and new.version == old.version:
        report |= {"status": "unchanged", "seconds": 0.0}
        await new.classifier.close_own()
        return SwitchOutcome(report)
    if not await new.until_serving(settings.switch_timeout_s):
        report["error"] = f"the predictor does not serve version {new.version}: {new.monitor.status.reason}"
        await new.retire(drain_timeout_s=0)
        return SwitchOutcome(report)
    texts = list(recent)
    try:
        before = await _answers(old, texts, options)
        after = await _answers(new, texts, options)  # computed now: cached for the new version
    except PredictorUnavailable as error:
        report["error"] = f"the sample could not be replayed: {error.message}"
        await new.retire(drain_timeout_s=0)
        return SwitchOutcome(report)
    report["shadow"] = shadow_report(texts, before, after, old.labels, new.labels)
    new.monitor.start()
    report |= {"status": "switched", "seconds": round(time.monotonic() - started, 2)}
    return SwitchOutcome(report, new)
