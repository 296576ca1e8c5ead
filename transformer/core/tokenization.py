"""Tokenization with the bundle's HF fast tokenizer: windows for long texts, padding into batches,
and the text normalization behind cache keys.

A text longer than the model's window is not cut: the tokenizer's own overflow support
(`enable_truncation(max_length, stride)`) splits it into overlapping windows, each with the
model's special tokens, and the caller aggregates the windows' outputs (`core.windows`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Encoding, Tokenizer

_WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str, lowercase: bool) -> str:
    """The cache identity of a text: NFC, trimmed, runs of whitespace collapsed to one space,
    and lowercased only when the tokenizer lowercases (so the model cannot tell the difference).
    """
    normalized = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()
    return normalized.lower() if lowercase else normalized


# Model inputs for a batch of windows, right-padded to a common length: name -> int64 [batch, length].
ModelInputs = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class TextWindows:
    """One text as the model sees it: its windows (each a complete model input with special tokens),
    how many tokens the whole text has, and the new (non-overlapping) tokens each window adds."""

    windows: tuple[Encoding, ...]
    token_count: int
    new_tokens: tuple[int, ...]

    @property
    def cost(self) -> int:
        """Tokens the model runs for this text (every window at its own length)."""
        return sum(len(window.ids) for window in self.windows)


class TextEncoder:
    """Turns texts into windows of at most `max_length` tokens (special tokens included), consecutive
    windows sharing `stride` tokens, and windows into padded model inputs."""

    def __init__(self, tokenizer_file: Path, max_length: int, uses_token_type_ids: bool, pad_to_multiple_of: int = 1,
                 stride: int = 0):
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.no_padding()
        self.special_tokens = tokenizer.num_special_tokens_to_add(is_pair=False)
        if not 0 <= stride < max_length - self.special_tokens:
            raise ValueError(
                f"stride {stride} must be below the window's {max_length - self.special_tokens} text tokens"
            )
        tokenizer.enable_truncation(max_length=max_length, stride=stride)
        self._tokenizer = tokenizer
        self.max_length = max_length
        self.stride = stride
        self.uses_token_type_ids = uses_token_type_ids
        self.pad_to_multiple_of = max(1, pad_to_multiple_of)
        self.pad_id = tokenizer.token_to_id("[PAD]") or 0
        self.lowercases = tokenizer.normalizer is not None and tokenizer.normalizer.normalize_str("AbC") == "abc"

    def tokenize(self, texts: Sequence[str]) -> list[Encoding]:
        """The first window of each text (what a model that truncates sees); the Rust tokenizer
        parallelizes across texts."""
        return self._tokenizer.encode_batch(list(texts), add_special_tokens=True)

    def windows(self, texts: Sequence[str]) -> list[TextWindows]:
        """Every window of each text, in order; one window for a text that fits."""
        return [self._split(encoding) for encoding in self.tokenize(texts)]

    def _split(self, first: Encoding) -> TextWindows:
        windows = (first, *first.overflowing)
        content = [len(w.ids) - self.special_tokens for w in windows]
        # Each window after the first repeats the last `stride` tokens of the one before it.
        new = [content[0]] + [max(0, count - self.stride) for count in content[1:]]
        return TextWindows(windows, sum(new), tuple(new))

    def pad(self, encodings: Sequence[Encoding]) -> ModelInputs:
        """Right-pad to the longest encoding (rounded up to `pad_to_multiple_of`, capped at max length)."""
        longest = max(len(e.ids) for e in encodings)
        width = self.padded_width(longest)
        count = len(encodings)
        input_ids = np.full((count, width), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((count, width), dtype=np.int64)
        type_ids = np.zeros((count, width), dtype=np.int64) if self.uses_token_type_ids else None
        for row, encoding in enumerate(encodings):
            length = len(encoding.ids)
            input_ids[row, :length] = encoding.ids
            attention_mask[row, :length] = 1
            if type_ids is not None:
                type_ids[row, :length] = encoding.type_ids
        arrays = {"input_ids": input_ids, "attention_mask": attention_mask}
        if type_ids is not None:
            arrays["token_type_ids"] = type_ids
        return arrays

    def padded_width(self, length: int) -> int:
        """The padded length of a window of `length` tokens (what a batch of it costs per row)."""
        multiple = self.pad_to_multiple_of
        width = min(self.max_length, -(-length // multiple) * multiple) if multiple > 1 else length
        return max(width, length)

    def encode_batch(self, texts: Sequence[str]) -> ModelInputs:
        """The first window of each text, padded (evaluation and benchmarks of the model alone)."""
        return self.pad(self.tokenize(texts))
