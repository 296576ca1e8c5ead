"""The default training data: crowd-rated sentences shipped inside the vaderSentiment sdist.

The VADER source distribution (MIT licence) carries `hutto_ICWSM_2014.tar.gz` with sentences
rated -4..+4 by about 20 people each. We fetch it through pip (the only reachable registry),
verify its checksum, label by the sign of the mean rating, drop the near-neutral ones and split
deterministically so that the test split is never seen in training or model selection.
"""

from __future__ import annotations

import csv
import io
import logging
import random
import subprocess
import sys
import tarfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from sentiment.model.fingerprint import sha256_file

log = logging.getLogger(__name__)

VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
VADER_REQUIREMENT = "vaderSentiment==3.3.2"
VADER_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
CORPUS_MEMBER = "hutto_ICWSM_2014.tar.gz"

# File names inside the corpus, by the source name we use on the command line.
SOURCES = {
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
LABELS = ("NEGATIVE", "POSITIVE")


class DataError(RuntimeError):
    """The packaged data could not be fetched, verified or parsed."""


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # index into LABELS
    rating: float
    source: str


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    dev: list[Example]
    test: list[Example]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "dev": len(self.dev), "test": len(self.test)}

    def sizes_by_source(self) -> dict[str, dict[str, int]]:
        """Rows per source and split, e.g. {"tweets": {"train": 7000, "dev": 973, "test": 973}}."""
        sizes: dict[str, dict[str, int]] = {}
        for name, part in (("train", self.train), ("dev", self.dev), ("test", self.test)):
            for example in part:
                sizes.setdefault(example.source, {"train": 0, "dev": 0, "test": 0})[name] += 1
        return sizes


def fetch_vader_sdist(cache_dir: Path) -> Path:
    """Download the vaderSentiment sdist into `cache_dir` once and verify its sha256."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / VADER_SDIST
    if not target.exists():
        log.info("downloading %s (sdist) into %s", VADER_REQUIREMENT, cache_dir)
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--no-binary", ":all:", "--dest", str(cache_dir), VADER_REQUIREMENT,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not target.exists():
            raise DataError(
                f"could not download {VADER_REQUIREMENT} with pip: {result.stderr.strip()[-500:]}"
            )
    actual = sha256_file(target)
    if actual != VADER_SHA256:
        target.unlink()
        raise DataError(f"{target} has sha256 {actual}, expected {VADER_SHA256}; deleted it, run again")
    return target


def read_corpus_files(sdist: Path, sources: Iterable[str]) -> dict[str, str]:
    """Return the text of each requested ground-truth file from the nested archives."""
    wanted = {SOURCES[name]: name for name in sources}
    with tarfile.open(sdist) as outer:
        member = next((m for m in outer.getmembers() if m.name.endswith(CORPUS_MEMBER)), None)
        if member is None:
            raise DataError(f"{sdist} has no {CORPUS_MEMBER}")
        inner_bytes = outer.extractfile(member).read()  # type: ignore[union-attr]
    found: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for item in inner.getmembers():
            base = item.name.rsplit("/", 1)[-1]
            if base in wanted:
                found[wanted[base]] = inner.extractfile(item).read().decode("utf-8")  # type: ignore[union-attr]
    missing = set(wanted.values()) - set(found)
    if missing:
        raise DataError(f"{CORPUS_MEMBER} lacks the files for {sorted(missing)}")
    return found


def parse_ground_truth(content: str, source: str, neutral_margin: float) -> list[Example]:
    """Parse `id<TAB>mean rating<TAB>text` lines; drop |rating| <= neutral_margin."""
    examples = []
    for line_number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise DataError(f"{source} line {line_number}: expected 3 tab-separated fields")
        try:
            rating = float(parts[1])
        except ValueError as error:
            raise DataError(f"{source} line {line_number}: rating {parts[1]!r} is not a number") from error
        text = unicodedata.normalize("NFC", parts[2]).strip()
        if not text or abs(rating) <= neutral_margin:
            continue
        examples.append(Example(text=text, label=int(rating > 0), rating=rating, source=source))
    return examples


def text_key(text: str) -> str:
    """The identity of a text across files and sources: case-folded, whitespace collapsed."""
    return " ".join(text.casefold().split())


def deduplicate(examples: Sequence[Example]) -> list[Example]:
    """Keep one example per case-folded text; drop texts whose copies disagree on the label."""
    by_text: dict[str, list[Example]] = {}
    for example in examples:
        by_text.setdefault(text_key(example.text), []).append(example)
    kept = []
    for copies in by_text.values():
        if len({copy.label for copy in copies}) == 1:
            kept.append(copies[0])
    return kept


def split_examples(examples: Sequence[Example], seed: int, dev_fraction: float, test_fraction: float) -> Splits:
    """Stratified, seeded split: the same inputs and seed always give the same splits."""
    rng = random.Random(seed)
    train: list[Example] = []
    dev: list[Example] = []
    test: list[Example] = []
    for label in range(len(LABELS)):
        group = sorted((e for e in examples if e.label == label), key=lambda e: (e.source, e.text))
        rng.shuffle(group)
        n_test = round(len(group) * test_fraction)
        n_dev = round(len(group) * dev_fraction)
        test += group[:n_test]
        dev += group[n_test:n_test + n_dev]
        train += group[n_test + n_dev:]
    for part in (train, dev, test):
        rng.shuffle(part)
    return Splits(train=train, dev=dev, test=test)


@dataclass(frozen=True)
class SourcePlan:
    """How one source is split (fractions of its cleaned rows, stratified by label) and how many of
    its training rows one training run uses (None: all)."""

    dev_fraction: float
    test_fraction: float
    train_rows: int | None = None


# The held-out splits are fixed by these fractions and the seed; `train_rows` only samples the rest.
SOURCE_PLANS: dict[str, SourcePlan] = {
    "movies": SourcePlan(0.1, 0.1),           # 10,041 snippets -> 1,004 dev, 1,004 test (as before)
    "tweets": SourcePlan(0.05, 0.05),         # about 22,000 -> 1,100 dev, 1,100 test
    "uci": SourcePlan(0.1, 0.2),              # about 2,950 -> 295 dev, 590 test
    "imdb": SourcePlan(0.01, 0.02),           # 49,580 reviews -> 496 dev, 992 test
}


def load_source(name: str, cache_dir: Path, neutral_margin: float, exclude: set[str]) -> list[Example]:
    """One source's cleaned, deduplicated examples, minus the texts in `exclude`."""
    if name == "movies":
        files = read_corpus_files(fetch_vader_sdist(cache_dir), ["movies"])
        examples = parse_ground_truth(files["movies"], "movies", neutral_margin)
    else:
        from sentiment.model.corpora import load_corpus

        examples = load_corpus(name, cache_dir, exclude)
    return deduplicate(examples)


def load_splits(
    cache_dir: Path,
    *,
    seed: int,
    sources: Sequence[str] = ("movies",),
    train_rows: Mapping[str, int | None] | None = None,
    neutral_margin: float = 0.5,
) -> Splits:
    """Every source split train/dev/test by its `SOURCE_PLANS` entry; the training rows of each
    source sampled down to `train_rows[source]` (default: the plan's). A text held out by any source
    is in no source's training rows."""
    exclude: set[str] = set()
    if set(sources) - {"movies"}:
        from sentiment.model.corpora import judge_set_texts

        exclude = judge_set_texts(cache_dir)
    per_source = {}
    for index, name in enumerate(sources):
        plan = SOURCE_PLANS[name]
        examples = load_source(name, cache_dir, neutral_margin, exclude)
        per_source[name] = split_examples(examples, seed + index, plan.dev_fraction, plan.test_fraction)
    held_out = {text_key(e.text) for part in per_source.values() for e in part.dev + part.test}
    rng = random.Random(seed)
    train: list[Example] = []
    for name, part in per_source.items():
        rows = [e for e in part.train if text_key(e.text) not in held_out]
        wanted = (train_rows or {}).get(name, SOURCE_PLANS[name].train_rows)
        train += rows if wanted is None or wanted >= len(rows) else balanced_sample(rows, wanted, rng)
    rng.shuffle(train)
    return Splits(train=train, dev=[e for p in per_source.values() for e in p.dev],
                  test=[e for p in per_source.values() for e in p.test])


def balanced_sample(examples: Sequence[Example], count: int, rng: random.Random) -> list[Example]:
    """`count` examples, as near half of each label as the rarer label allows (the tweets are 3:1
    negative; a sample that kept that ratio would teach the model that a tweet is probably negative)."""
    groups = sorted(([e for e in examples if e.label == label] for label in range(len(LABELS))), key=len)
    chosen: list[Example] = []
    remaining = count
    for left, group in zip(range(len(groups), 0, -1), groups):  # the rarest label first
        take = min(len(group), remaining // left)
        chosen += rng.sample(sorted(group, key=lambda e: e.text), take)
        remaining -= take
    return chosen


def write_splits(splits: Splits, directory: Path) -> None:
    """Write each split as TSV (label, rating, source, text) next to the model."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", splits.train), ("dev", splits.dev), ("test", splits.test)):
        with (directory / f"{name}.tsv").open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["label", "rating", "source", "text"])
            for example in part:
                writer.writerow([LABELS[example.label], f"{example.rating:.4f}", example.source, example.text])


def read_split(path: Path) -> list[Example]:
    """Read a split written by `write_splits` (used to evaluate exported variants)."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        return [
            Example(
                text=row["text"], label=LABELS.index(row["label"]), rating=float(row["rating"]), source=row["source"]
            )
            for row in reader
        ]
