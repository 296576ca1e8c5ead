"""The options of one export, with every default written out once.

`sentiment model export`, `sentiment model build`, `sentiment up` and the test fixtures all pass an
`ExportOptions`; the build stamp records its resolved form, so two callers that mean the same
export produce the same stamp (the default build no longer exports twice per `make run`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

from sentiment.model.checkpoint import inspect_checkpoint
from sentiment.model.triton_repository import TritonModelSpec

Variant = Literal["auto", "fp32", "int8"]


@dataclass(frozen=True)
class ExportOptions:
    """What the export produces, apart from the checkpoint: variant choice and Triton knobs."""

    variant: Variant = "auto"
    max_int8_loss: float = 1.0            # accuracy points int8 may lose on dev before auto picks fp32
    max_length: int | None = None         # None: the checkpoint's serving length (see inspect_checkpoint)
    max_batch_size: int = TritonModelSpec.max_batch_size
    max_queue_delay_us: int = TritonModelSpec.max_queue_delay_us
    instance_count: int = TritonModelSpec.instance_count
    intra_op_threads: int = TritonModelSpec.intra_op_threads

    def resolved(self, checkpoint: Path) -> "ExportOptions":
        """The same options with `max_length` made concrete for `checkpoint` (what the stamp records)."""
        return replace(self, max_length=inspect_checkpoint(checkpoint, self.max_length).max_length)

    def spec_fields(self) -> dict[str, int]:
        """The Triton configuration knobs, as TritonModelSpec fields."""
        return {"max_batch_size": self.max_batch_size, "max_queue_delay_us": self.max_queue_delay_us,
                "instance_count": self.instance_count, "intra_op_threads": self.intra_op_threads}

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ExportOptions":
        """From a stamp written by an earlier build; unknown keys (an older layout) are ignored."""
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def changes_from(self, other: "ExportOptions") -> list[str]:
        """`name: old -> new` for every field that differs from `other` (the build's reason to export)."""
        mine, theirs = self.as_dict(), other.as_dict()
        return [f"{name}: {theirs[name]} -> {value}" for name, value in mine.items() if theirs[name] != value]
