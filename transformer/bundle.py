"""The transformer-side model bundle: what the transformer needs to speak for one exported model.

The export step writes it next to the Triton model (`<repository>/sentiment/<version>/bundle/`), so one
upload carries both halves, and both carry the same fingerprint (sha256 of the ONNX file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT_VERSION = 1


class BundleError(RuntimeError):
    """The bundle directory is missing or unreadable; the message says which file and why."""


class ModelBundle(BaseModel):
    """Contract between `sentiment model export` (writer) and the transformer (reader)."""

    format_version: int = BUNDLE_FORMAT_VERSION
    model_name: str = "sentiment"
    version: str = Field(
        "1", pattern=r"^[1-9][0-9]*$", description="the model repository version this bundle belongs to"
    )
    labels: list[str] = Field(min_length=1, description="label names in id2label order")
    problem_type: str | None = Field(None, description="the checkpoint's config.json problem_type, as recorded")
    score_function: Literal["softmax", "sigmoid", "none"] = Field(
        "softmax", description="logits -> scores: softmax (single-label), sigmoid per label (multi-label), none "
        "(regression); bundles written before it was recorded are single-label softmax")
    max_length: int = Field(gt=2, description="tokens per text, special tokens included")
    uses_token_type_ids: bool
    lowercase: bool = Field(description="whether the tokenizer lowercases (cache keys follow it)")
    fingerprint: str = Field(description="sha256 of the ONNX file, shared with the Triton config")
    max_batch_size: int = Field(gt=0, description="the Triton model's max_batch_size")
    variant: str = "fp32"
    document_temperatures: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=dict, description="per aggregation: what the aggregated answer of a text read in several "
        "windows is divided by (`windows.aggregate`), fitted by the export on the dev split's multi-window texts; "
        "an aggregation not named here, and every bundle written before it was recorded, answers uncalibrated")
    tokenizer_file: str = "tokenizer.json"
    source: dict = Field(default_factory=dict, description="where the checkpoint came from")

    def document_temperature(self, aggregation: str) -> float:
        """The temperature of `aggregation`'s multi-window answers (1.0: none fitted)."""
        return self.document_temperatures.get(aggregation, 1.0)

    @property
    def input_names(self) -> list[str]:
        names = ["input_ids", "attention_mask"]
        return names + ["token_type_ids"] if self.uses_token_type_ids else names

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / BUNDLE_FILE
        path.write_text(json.dumps(self.model_dump(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> "ModelBundle":
        path = Path(directory) / BUNDLE_FILE
        try:
            bundle = cls.model_validate_json(path.read_bytes())
        except FileNotFoundError as error:
            raise BundleError(
                f"no {BUNDLE_FILE} in {directory}: build the model first (`sentiment model build`) "
                "or point --model_bundle at <model repository>/sentiment/<version>/bundle"
            ) from error
        except ValueError as error:
            raise BundleError(f"{path} is not a valid bundle: {error}") from error
        if bundle.format_version != BUNDLE_FORMAT_VERSION:
            raise BundleError(
                f"{path} has format {bundle.format_version}, this transformer reads {BUNDLE_FORMAT_VERSION}"
            )
        if not (Path(directory) / bundle.tokenizer_file).is_file():
            raise BundleError(f"{path} names {bundle.tokenizer_file}, which is missing")
        return bundle
