"""Long documents for measuring how a long text's windows are aggregated, built from ONE side of the data.

The default model reads 128 tokens per window. To choose the aggregation and the stride (on the
training side) and to test the served stack (on the test side) we need texts well past one
window whose label is known. We build them from labelled sentences of one split plus a pool of
near-neutral filler, never mixing the sides:

- side "train": sentences from `train.tsv`, filler from the "train" half of the neutral pool;
- side "dev":   sentences from `dev.tsv` (not fitted by training, only used to pick the epoch),
                filler from the "train" half too: still training-side, never the test split;
- side "test":  sentences from `test.tsv`, filler from the "test" half of the neutral pool.

The neutral pool is the movie-review sentences whose mean crowd rating is within +-0.5
(`NEUTRAL_MARGIN`): `data.load_splits` drops exactly these, so they are in no split (any text that
does appear in a split is removed from the pool anyway). The pool is halved by a hash of the text
(`filler_half`: the first byte of sha256 of the case-folded, whitespace-collapsed text, even ->
"train", odd -> "test"), so the halves are disjoint, stable across machines and independent of
any seed.

Document kinds (each builder balances the labels, half NEGATIVE and half POSITIVE):

- `verdict_last`:  150-250 words of filler (always >= `MIN_FILLER_WORDS` = 120), then one clear
                   verdict sentence (|rating| >= 2) whose label is the document's; the verdict lies
                   past the first window, so `head` can only guess;
- `verdict_first`: the same verdict, then the filler: the control that `head` gets right and an
                   aggregation must not lose;
- `homogeneous`:   10 sentences of the document's label;
- `majority`:      10 sentences, 7 of the document's label and 3 of the other, shuffled: an
                   aggregation that follows one loud window instead of the whole text loses here;
- `long_majority`: the same with 40 sentences (28 and 12; about 750 words, 8 windows of 128
                   tokens): how an aggregation holds up as texts grow past two or three windows.

Everything is deterministic: the same inputs, kinds, count and seed give the same documents.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from sentiment.model.data import (LABELS, Example, fetch_vader_sdist, parse_ground_truth, read_corpus_files, read_split,
                                  text_key)

SIDES = ("train", "dev", "test")
KINDS = ("verdict_last", "verdict_first", "homogeneous", "majority", "long_majority")
NEUTRAL_MARGIN = 0.5       # the filler: |mean rating| <= this (what the splits drop)
VERDICT_MIN_RATING = 2.0   # a clear verdict: |mean rating| >= this
MIN_FILLER_WORDS = 120     # the guarantee the integration tests rely on
FILLER_WORDS = (150, 250)  # each verdict document draws its filler length from this range
SENTENCES_PER_DOCUMENT = 10
MINORITY_SENTENCES = 3     # in a `majority` document
MAJORITY_SHAPES = {
    "majority": (SENTENCES_PER_DOCUMENT, MINORITY_SENTENCES),
    "long_majority": (40, 12),
}  # (sentences, minority)
CORPUS_SOURCE = "movies"   # filler and sentences: the movie-review snippets (the test split's source)


@dataclass(frozen=True)
class LongDocument:
    """One long text with a known label (index into `data.LABELS`).

    `parts` are its sentences in order (`text` is them joined by spaces); for the verdict kinds
    `verdict` is the index of the verdict sentence in `parts`, else None."""

    text: str
    label: int
    kind: str
    parts: tuple[str, ...] = ()
    verdict: int | None = None

    @property
    def words(self) -> int:
        return len(self.text.split())


def filler_half(text: str) -> str:
    """Which half ("train" or "test") of the neutral pool a sentence belongs to: by hash, not by seed."""
    return "train" if hashlib.sha256(text_key(text).encode("utf-8")).digest()[0] % 2 == 0 else "test"


def _filler_side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, not {side!r}")
    return "test" if side == "test" else "train"


def neutral_filler(examples: Iterable[Example], side: str, exclude: Iterable[str] = ()) -> list[str]:
    """The `side` half of the near-neutral sentences among `examples` (parsed WITHOUT dropping
    neutrals), deduplicated, minus any text in `exclude` (e.g. the splits' texts), sorted."""
    half = _filler_side(side)
    excluded = {text_key(t) for t in exclude}
    pool: dict[str, str] = {}
    for example in examples:
        key = text_key(example.text)
        if abs(example.rating) <= NEUTRAL_MARGIN and key not in excluded and filler_half(example.text) == half:
            pool.setdefault(key, example.text)
    return sorted(pool.values())


def load_neutral_filler(side: str, cache_dir: Path | None = None, exclude: Iterable[str] = ()) -> list[str]:
    """The `side` half of the neutral pool from the VADER corpus (cached sdist; fetched by pip once)."""
    if cache_dir is None:
        from sentiment.paths import cache_home

        cache_dir = cache_home() / "data"
    content = read_corpus_files(fetch_vader_sdist(Path(cache_dir)), [CORPUS_SOURCE])[CORPUS_SOURCE]
    everything = parse_ground_truth(content, CORPUS_SOURCE, neutral_margin=-1.0)  # keep the neutrals
    return neutral_filler(everything, side, exclude)


def _fill(rng: random.Random, filler: Sequence[str], low: int, high: int) -> list[str]:
    """Distinct filler sentences (cycling the shuffled pool only if it is too small) until the
    word count reaches a target drawn from [low, high]."""
    if not filler:
        raise ValueError("the filler pool is empty")
    target = rng.randint(low, high)
    order = list(filler)
    rng.shuffle(order)
    chosen: list[str] = []
    words = 0
    while words < target:
        sentence = order[len(chosen) % len(order)]
        chosen.append(sentence)
        words += len(sentence.split())
    return chosen


def _labels(count: int) -> list[int]:
    """Balanced labels, alternating, for `count` documents."""
    return [i % len(LABELS) for i in range(count)]


def _draw(rng: random.Random, pool: Sequence[Example], k: int) -> list[Example]:
    if len(pool) < k:
        raise ValueError(f"need {k} sentences of one label, the split has {len(pool)}")
    return rng.sample(list(pool), k)


def make_documents(
    sentences: Sequence[Example],
    filler: Sequence[str],
    kinds: Sequence[str] = KINDS,
    count: int = 100,
    seed: int = 0,
) -> list[LongDocument]:
    """`count` documents of each kind in `kinds` (in that order), from `sentences` (one split) and
    `filler` (the same side's neutral half). Pure: no files, no model."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; known: {KINDS}")
    by_label = [
        sorted((e for e in sentences if e.label == label), key=lambda e: e.text) for label in range(len(LABELS))
    ]
    verdicts = [[e for e in group if abs(e.rating) >= VERDICT_MIN_RATING] for group in by_label]
    low, high = FILLER_WORDS
    documents: list[LongDocument] = []
    for kind in kinds:
        rng = random.Random(f"{seed}:{kind}")  # str seeds are hashed with sha512: stable everywhere
        # Verdicts without replacement while they last, so documents differ in their verdicts.
        verdict_order = [rng.sample(group, len(group)) for group in verdicts]
        for index, label in enumerate(_labels(count)):
            if kind in ("verdict_last", "verdict_first"):
                pool = verdict_order[label]
                if not pool:
                    raise ValueError(f"the split has no {LABELS[label]} sentence with |rating| >= {VERDICT_MIN_RATING}")
                verdict = pool[(index // len(LABELS)) % len(pool)].text
                padding = _fill(rng, filler, low, high)
                parts = (*padding, verdict) if kind == "verdict_last" else (verdict, *padding)
                position = len(parts) - 1 if kind == "verdict_last" else 0
                documents.append(LongDocument(" ".join(parts), label, kind, tuple(parts), position))
            elif kind == "homogeneous":
                parts = tuple(e.text for e in _draw(rng, by_label[label], SENTENCES_PER_DOCUMENT))
                documents.append(LongDocument(" ".join(parts), label, kind, parts))
            else:  # majority, long_majority
                total, minority = MAJORITY_SHAPES[kind]
                major = _draw(rng, by_label[label], total - minority)
                minor = _draw(rng, by_label[1 - label], minority)
                mixed = [e.text for e in major + minor]
                rng.shuffle(mixed)
                documents.append(LongDocument(" ".join(mixed), label, kind, tuple(mixed)))
    return documents


def build_documents(
    splits_dir: Path,
    side: str = "test",
    kinds: Sequence[str] = KINDS,
    count: int = 100,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> list[LongDocument]:
    """`count` documents per kind from one side: sentences from `<splits_dir>/<side>.tsv` (movie
    reviews only), filler from that side's half of the neutral pool minus every text of every split.

    `splits_dir` is the checkpoint's `splits/` (the bundle's `source.checkpoint` + "/splits").
    `cache_dir` holds the VADER sdist (default: `sentiment.paths.cache_home() / "data"`)."""
    _filler_side(side)
    splits_dir = Path(splits_dir)
    split_texts = [e.text for name in SIDES if (splits_dir / f"{name}.tsv").is_file()
                   for e in read_split(splits_dir / f"{name}.tsv")]
    sentences = [e for e in read_split(splits_dir / f"{side}.tsv") if e.source == CORPUS_SOURCE]
    filler = load_neutral_filler(side, cache_dir, exclude=split_texts)
    return make_documents(sentences, filler, kinds, count, seed)
