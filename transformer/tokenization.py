"""Tokenization with the bundle's HF fast tokenizer, and the text normalization behind cache keys."""

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


@dataclass(frozen=True)
class EncodedBatch:
    """Model inputs for a batch of texts, right-padded to a common length."""

    arrays: dict[str, np.ndarray]  # name -> int64 [batch, length]

    @property
    def shape(self) -> tuple[int, int]:
        return self.arrays["input_ids"].shape  # type: ignore[return-value]


class TextEncoder:
    """Turns texts into the model's input tensors; truncates at the bundle's max length."""

    def __init__(self, tokenizer_file: Path, max_length: int, uses_token_type_ids: bool, pad_to_multiple_of: int = 1):
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer = tokenizer
        self.max_length = max_length
        self.uses_token_type_ids = uses_token_type_ids
        self.pad_to_multiple_of = max(1, pad_to_multiple_of)
        self.pad_id = tokenizer.token_to_id("[PAD]") or 0
        self.lowercases = tokenizer.normalizer is not None and tokenizer.normalizer.normalize_str("AbC") == "abc"

    def tokenize(self, texts: Sequence[str]) -> list[Encoding]:
        """Unpadded encodings (the Rust tokenizer parallelizes across texts)."""
        return self._tokenizer.encode_batch(list(texts), add_special_tokens=True)

    def pad(self, encodings: Sequence[Encoding]) -> EncodedBatch:
        """Right-pad to the longest encoding (rounded up to `pad_to_multiple_of`, capped at max length)."""
        longest = max(len(e.ids) for e in encodings)
        multiple = self.pad_to_multiple_of
        width = min(self.max_length, -(-longest // multiple) * multiple) if multiple > 1 else longest
        width = max(width, longest)
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
        return EncodedBatch(arrays)

    def encode_batch(self, texts: Sequence[str]) -> EncodedBatch:
        return self.pad(self.tokenize(texts))
