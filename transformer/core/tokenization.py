"""Tokenization with the bundle's HF fast tokenizer: windows for long texts, padding into batches,
the model's text replacements, and the text normalization behind cache keys.

A text longer than the model's window is not cut: the tokenizer's own overflow support
(`enable_truncation(max_length, stride)`) splits it into overlapping windows, each with the
model's special tokens, and the caller aggregates the windows' outputs (`core.windows`).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from tokenizers import Encoding, Tokenizer

_WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str, lowercase: bool) -> str:
    """The cache identity of a text: NFC, trimmed, runs of whitespace collapsed to one space,
    and lowercased only when the tokenizer lowercases (so the model cannot tell the difference).
    """
    normalized = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()
    return normalized.lower() if lowercase else normalized


REPLACEMENTS_FILE = "text_replacements.json"


class TextReplacements:
    """Characters a model reads as words instead: emoji, which a BERT vocabulary lacks (each would be
    the one unknown token), as their names. The table ships beside `tokenizer.json`, in the checkpoint
    and in the bundle, and every `TextEncoder` built on that tokenizer applies it, so training, the
    export's evaluation and serving read the same text. A file rather than `Replace` normalizers inside
    `tokenizer.json`: a chain of 1,600 of those makes tokenizing a short text about 10x slower, and
    transformers rebuilds a BERT tokenizer's normalizer when it loads a checkpoint, dropping them."""

    def __init__(self, table: Mapping[str, str]):
        if not table or any(len(key) != 1 or key.isascii() for key in table):
            raise ValueError("a text replacement table maps single non-ASCII characters to text")
        self.table = dict(table)
        # Words stay apart from their neighbours; an empty replacement (a skin tone) just drops the character.
        self._spaced = {key: f" {value} " if value else "" for key, value in self.table.items()}
        self._pattern = re.compile(_character_class(self.table))
        self.digest = hashlib.sha256(json.dumps(self.table, sort_keys=True).encode()).hexdigest()[:12]

    def apply(self, text: str) -> str:
        """`text` with every table character replaced (no table character is ASCII, so most texts are
        passed through at once; the scan runs in C and only a hit calls back)."""
        if text.isascii():
            return text
        return self._pattern.sub(lambda match: self._spaced[match.group()], text)

    def write_beside(self, tokenizer_file: Path) -> Path:
        path = Path(tokenizer_file).with_name(REPLACEMENTS_FILE)
        path.write_text(json.dumps(self.table, ensure_ascii=False, indent=0, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def beside(cls, tokenizer_file: Path) -> "TextReplacements | None":
        """The table next to `tokenizer_file`, or None where the model has none."""
        path = Path(tokenizer_file).with_name(REPLACEMENTS_FILE)
        if not path.is_file():
            return None
        try:
            return cls(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path} is not a table of single characters to text: {error}") from error


def _character_class(characters) -> str:
    """A regex class of `characters` as runs of consecutive code points: `re` tests a class's members
    one by one outside the BMP, so 1,400 single emoji cost 250 µs a short text and their 70-odd runs
    a few."""
    codes = sorted(ord(character) for character in characters)
    runs: list[list[int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "[" + "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                         for a, b in runs) + "]"


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
    windows sharing `stride` tokens, and windows into padded model inputs. A model's text replacements
    (`REPLACEMENTS_FILE` beside the tokenizer file) apply first."""

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
        self.tokenizer_file = Path(tokenizer_file)  # what else the model ships beside it is found from here
        self.replacements = TextReplacements.beside(self.tokenizer_file)

    def tokenize(self, texts: Sequence[str]) -> list[Encoding]:
        """The first window of each text (what a model that truncates sees); the Rust tokenizer
        parallelizes across texts. Offsets refer to the text after the model's replacements."""
        replacements = self.replacements
        batch = [replacements.apply(text) for text in texts] if replacements is not None else list(texts)
        return self._tokenizer.encode_batch(batch, add_special_tokens=True)

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
