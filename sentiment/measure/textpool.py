"""The mixed-length workload's texts: generated once per run into a JSON file that k6 reads
(`TEXT_POOL_FILE`) and the model-alone run reads too, so both see the same texts.

Each text is drawn independently: short (one of the sentences the other k6 workloads use) with
probability 0.80, 100-400 tokens with 0.15, 1,000-3,000 tokens with 0.05 (by default). Longer texts
are sentences of the same kind, chosen at random, until the text reaches a token count drawn
uniformly from its range. Every text ends in a unique tail, so nothing hits a cache; token counts
are the serving tokenizer's (`TextWindows.token_count`: the text's tokens, special tokens excluded,
the same count the transformer's `sentiment_text_tokens` histogram records).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sentiment.durations import duration_seconds

if TYPE_CHECKING:
    from sentiment.measure.k6 import LoadShape

# The same sentences as loadtest/simulate.js (a unit test keeps the two lists equal).
SUBJECTS = ("The film", "This movie", "The plot", "The acting", "The soundtrack", "The script", "The ending",
            "The director's new work", "The sequel", "The cast", "The dialogue", "The pacing", "This documentary",
            "The cinematography", "The lead performance", "The story", "The comedy", "The thriller", "The animation",
            "The premise", "The final act", "The villain", "The score", "The editing", "The remake")
PREDICATES = ("is a joy from start to finish", "is a tedious, muddled mess", "left me cold and bored",
              "is warm, funny and beautifully made", "never rises above its clichés", "is one of the best of the year",
              "feels lazy and overlong", "is sharp, moving and smart", "wastes a talented cast",
              "is a delightful surprise",
              "falls apart in the second half", "is gripping and heartfelt", "is dull and predictable",
              "deserves a much wider audience", "is an embarrassing misfire", "works beautifully on every level",
              "is too long by half an hour", "made me laugh out loud", "is hollow and forgettable",
              "is a small triumph")
SENTENCE_COUNT = len(SUBJECTS) * len(PREDICATES)

TokenCounter = Callable[[Sequence[str]], "list[int]"]


def sentence(n: int) -> str:
    """The n-th sentence, exactly as simulate.js's `sentence(n)`."""
    return f"{SUBJECTS[n % len(SUBJECTS)]} {PREDICATES[(n // len(SUBJECTS)) % len(PREDICATES)]}."


@dataclass(frozen=True)
class SizeClass:
    name: str
    share: float                          # probability of a text being of this class
    tokens: tuple[int, int] | None = None  # inclusive token range; None: one sentence

    def describe(self) -> str:
        what = "one short sentence like the other workloads'" if self.tokens is None else \
            f"{self.tokens[0]:,}–{self.tokens[1]:,} tokens"
        return f"{self.share * 100:g} % {self.name} ({what})"


@dataclass(frozen=True)
class TextMix:
    classes: tuple[SizeClass, ...] = (SizeClass("short", 0.80), SizeClass("medium", 0.15, (100, 400)),
                                      SizeClass("long", 0.05, (1000, 3000)))

    def __post_init__(self) -> None:
        if abs(sum(c.share for c in self.classes) - 1) > 1e-9:
            raise ValueError("the shares of a text mix must add up to 1")

    def draw(self, rng: random.Random) -> SizeClass:
        point, total = rng.random(), 0.0
        for size in self.classes:
            total += size.share
            if point < total:
                return size
        return self.classes[-1]

    def describe(self) -> str:
        return ", ".join(c.describe() for c in self.classes)


@dataclass(frozen=True)
class PoolText:
    text: str
    tokens: int   # the text's tokens (special tokens excluded)
    size: str     # the SizeClass name


@dataclass(frozen=True)
class TextPool:
    texts: tuple[PoolText, ...]
    mix: TextMix
    seed: int
    run_id: str

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"mix": self.mix.describe(), "seed": self.seed, "run_id": self.run_id,
                                    "texts": [asdict(t) for t in self.texts]}, ensure_ascii=False))
        return path

    @classmethod
    def read(cls, path: Path, mix: TextMix = TextMix()) -> TextPool:
        data = json.loads(path.read_text())
        return cls(tuple(PoolText(**t) for t in data["texts"]), mix, data["seed"], data["run_id"])

    def shares(self) -> dict[str, float]:
        return {c.name: sum(t.size == c.name for t in self.texts) / len(self.texts) for c in self.mix.classes}

    @property
    def tokens(self) -> int:
        return sum(t.tokens for t in self.texts)


def generate_pool(count: int, count_tokens: TokenCounter, mix: TextMix = TextMix(), seed: int = 12,
                  run_id: str = "mixed") -> TextPool:
    """`count` texts of `mix`, deterministic for (seed, run_id); `count_tokens` is the serving tokenizer's
    count of each text's tokens. Every text is unique (its tail names the run and its index)."""
    rng = random.Random(seed)
    sentence_tokens = count_tokens([sentence(n) for n in range(SENTENCE_COUNT)])
    drafts: list[tuple[SizeClass, list[int], str]] = []
    for index in range(count):
        size = mix.draw(rng)
        tail = f"({run_id}-{index})"
        if size.tokens is None:
            drafts.append((size, [rng.randrange(SENTENCE_COUNT)], tail))
            continue
        target, parts, total = rng.randint(*size.tokens), [], 0
        while total < target:  # the tail adds a few tokens: fitted below
            parts.append(rng.randrange(SENTENCE_COUNT))
            total += sentence_tokens[parts[-1]]
        drafts.append((size, parts, tail))
    texts = [_join(parts, tail) for _, parts, tail in drafts]
    counts = count_tokens(texts)
    for index, (size, parts, tail) in enumerate(drafts):
        if size.tokens is None:
            continue
        low, high = size.tokens
        while counts[index] > high and len(parts) > 1:  # the tail pushed it over: drop sentences
            parts.pop()
            texts[index] = _join(parts, tail)
            counts[index] = count_tokens([texts[index]])[0]
        while counts[index] < low:
            parts.append(rng.randrange(SENTENCE_COUNT))
            texts[index] = _join(parts, tail)
            counts[index] = count_tokens([texts[index]])[0]
    return TextPool(tuple(PoolText(t, n, d[0].name) for t, n, d in zip(texts, counts, drafts)), mix, seed, run_id)


def _join(parts: list[int], tail: str) -> str:
    return " ".join(sentence(n) for n in parts) + f" {tail}"


def tokenizer_counter(encoder) -> TokenCounter:
    """The serving count (`TextEncoder.windows(...)[i].token_count`) as a TokenCounter."""
    def count(texts: Sequence[str]) -> list[int]:
        return [w.token_count for w in encoder.windows(texts)]
    return count


# ---- the pool of one bench run -------------------------------------------------------------------
POOL_FILE = "text-pool.json"
POOL_TEXTS_PER_SECOND = 200  # more than any service here answers with this mix: the pool never runs out


def pool_size(shape: LoadShape, texts_per_second: int = POOL_TEXTS_PER_SECOND) -> int:
    """Texts enough for one k6 run of `shape` (ramps included) at `texts_per_second`."""
    seconds = sum(duration_seconds(part) for part in (shape.ramp_up, shape.hold, shape.ramp_down)) + 10
    return max(2000, math.ceil(seconds * texts_per_second / 100) * 100)


def serving_encoder(bundle_dir: Path):
    """The transformer's TextEncoder for this bundle (windows of max_length, stride 0)."""
    from transformer.bundle import ModelBundle
    from transformer.core.tokenization import TextEncoder

    bundle = ModelBundle.load(bundle_dir)
    return TextEncoder(bundle_dir / bundle.tokenizer_file, bundle.max_length, bundle.uses_token_type_ids, stride=0)


def write_pool(out: Path, bundle_dir: Path, count: int, mix: TextMix = TextMix(), seed: int = 12,
               run_id: str | None = None) -> tuple[Path, TextPool]:
    """Generate the pool with the serving tokenizer and write it where k6 reads it (TEXT_POOL_FILE)."""
    pool = generate_pool(count, tokenizer_counter(serving_encoder(bundle_dir)), mix, seed,
                         run_id or str(int(time.time())))
    return pool.write(out / POOL_FILE), pool
