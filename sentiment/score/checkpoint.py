"""The sidecar that makes `sentiment score` resumable: rows done and output bytes, written atomically
after the output is on disk.

Invariant: the first `output_bytes` bytes of the output hold exactly the first `rows_done` input rows,
each once, in input order. A run that dies (SIGKILL, Ctrl-C, a lost server) leaves at most some rows
past that point; the next run cuts the output back to `output_bytes` and continues at row `rows_done`,
so no row is lost or written twice (rows in flight at the crash are asked again: cache hits).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

SUFFIX = ".progress.json"


class CheckpointMismatch(RuntimeError):
    """A sidecar from a run with another input or other options; says how to start over."""


@dataclass
class Progress:
    input: str
    input_size: int
    input_mtime_ns: int
    options: dict[str, Any]
    rows_done: int = 0
    output_bytes: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)
    score_sum: float = 0.0
    scored: int = 0
    errors: int = 0

    def add(self, label: str | None, score: float | None) -> None:
        if label is None or score is None:
            self.errors += 1
            return
        self.label_counts[label] = self.label_counts.get(label, 0) + 1
        self.score_sum += score
        self.scored += 1

    @property
    def mean_score(self) -> float | None:
        return self.score_sum / self.scored if self.scored else None

    def ranked_labels(self) -> list[tuple[str, int]]:
        return Counter(self.label_counts).most_common()


def sidecar_of(output: Path) -> Path:
    return output.with_name(output.name + SUFFIX)


def fresh_progress(input_path: Path, options: dict[str, Any]) -> Progress:
    stat = input_path.stat()
    return Progress(str(input_path.resolve()), stat.st_size, stat.st_mtime_ns, options)


def load_progress(sidecar: Path, expected: Progress) -> Progress | None:
    """The interrupted run's progress, or None when there is none; CheckpointMismatch when it was
    another input (or the input changed since) or other options."""
    if not sidecar.exists():
        return None
    saved = Progress(**orjson.loads(sidecar.read_bytes()))
    same_input = (saved.input, saved.input_size, saved.input_mtime_ns) == (
        expected.input, expected.input_size, expected.input_mtime_ns)
    if not same_input:
        raise CheckpointMismatch(f"{sidecar} belongs to a run on another (or since changed) input {saved.input}: "
                                 "pass --restart to start over, or score into another -o OUTPUT")
    if saved.options != expected.options:
        changed = sorted(k for k in set(saved.options) | set(expected.options)
                         if saved.options.get(k) != expected.options.get(k))
        raise CheckpointMismatch(f"the interrupted run used other options ({', '.join(changed)}: "
                                 f"{ {k: saved.options.get(k) for k in changed} }): run it with those again, "
                                 "or pass --restart to start over")
    return saved


def save_progress(sidecar: Path, progress: Progress) -> None:
    """Atomic: a crash leaves the old sidecar or the new one, never half of one."""
    temporary = sidecar.with_name(sidecar.name + ".tmp")
    with temporary.open("wb") as handle:
        handle.write(orjson.dumps(asdict(progress)))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, sidecar)
