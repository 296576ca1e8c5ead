"""What an HF `*ForSequenceClassification` checkpoint declares, read from its config.json alone.

Pure JSON: the build check resolves its options with this without importing torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_LENGTH = 128
# Model families that take no token_type_ids (a single token type).
_NO_TOKEN_TYPES = {"distilbert", "roberta", "xlm-roberta", "deberta-v2"}
# Model types whose position ids count from the padding id + 1 (fairseq's convention), not from 0.
_OFFSET_POSITIONS = {"mpnet", "roberta", "xlm-roberta", "camembert"}


class ExportError(RuntimeError):
    """The checkpoint cannot be exported; the message says what is wrong with it."""


def model_input_names(uses_token_type_ids: bool) -> tuple[str, ...]:
    """The ONNX / Triton input tensors, in the order the graph takes them."""
    return ("input_ids", "attention_mask", "token_type_ids") if uses_token_type_ids else ("input_ids", "attention_mask")


PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


def score_function(problem_type: str | None, num_labels: int) -> str:
    """What turns the model's logits into scores, decided as the Hugging Face text-classification
    pipeline decides its default `function_to_apply` (transformers 5.x): regression -> none (the raw
    value), multi-label or a single label -> a sigmoid per label, otherwise softmax."""
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"


@dataclass(frozen=True)
class CheckpointInfo:
    model_type: str
    labels: list[str]
    uses_token_type_ids: bool
    max_length: int
    problem_type: str | None = None

    @property
    def score_function(self) -> str:
        return score_function(self.problem_type, len(self.labels))

    @property
    def input_names(self) -> tuple[str, ...]:
        return model_input_names(self.uses_token_type_ids)


def inspect_checkpoint(checkpoint: Path, max_length: int | None = None) -> CheckpointInfo:
    """Read config.json: labels in id2label order, whether the model takes token_type_ids, max length.

    `max_length` None means the checkpoint's own serving length (`max_length_for_serving`, written by
    `sentiment model train`) or 128, capped by the model's position embeddings.
    """
    config_path = Path(checkpoint) / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{checkpoint} has no config.json: expected an HF checkpoint directory")
    config = json.loads(config_path.read_text())
    id2label = config.get("id2label") or {}
    if not id2label:
        raise ExportError(f"{config_path} has no id2label: not a sequence classifier")
    problem_type = config.get("problem_type")
    if problem_type is not None and problem_type not in PROBLEM_TYPES:
        raise ExportError(
            f"{config_path} has problem_type {problem_type!r}; this stack serves {', '.join(PROBLEM_TYPES)}"
        )
    labels = [str(id2label[key]) for key in sorted(id2label, key=int)]
    model_type = config.get("model_type", "")
    uses_token_type_ids = model_type not in _NO_TOKEN_TYPES and int(config.get("type_vocab_size", 0)) > 1
    positions = int(config.get("max_position_embeddings", 512))
    if model_type in _OFFSET_POSITIONS:  # positions start after the padding id: MPNet-base's 514 hold 512 tokens
        positions -= int(config.get("pad_token_id", 1)) + 1
    wanted = max_length or int(config.get("max_length_for_serving", DEFAULT_MAX_LENGTH))
    return CheckpointInfo(model_type, labels, uses_token_type_ids, min(wanted, positions), problem_type)
