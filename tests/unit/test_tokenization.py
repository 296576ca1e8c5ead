from pathlib import Path

import numpy as np
import pytest

from sentiment.model.build import default_base
from transformer.core.tokenization import TextEncoder, normalize_text


@pytest.fixture(scope="module")
def tokenizer_file() -> Path:
    return default_base() / "tokenizer.json"


def test_normalize_collapses_whitespace_and_applies_nfc():
    assert normalize_text("  caf\u0065\u0301   au\tlait \n", lowercase=False) == "caf\u00e9 au lait"


def test_normalize_lowercases_only_when_the_tokenizer_does():
    assert normalize_text("Great MOVIE", lowercase=True) == "great movie"
    assert normalize_text("Great MOVIE", lowercase=False) == "Great MOVIE"


def test_encoder_detects_lowercasing_and_pads_right(tokenizer_file):
    encoder = TextEncoder(tokenizer_file, max_length=16, uses_token_type_ids=True)
    assert encoder.lowercases is True
    batch = encoder.encode_batch(["good", "a much longer sentence here"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == np.int64 and ids.shape == mask.shape == batch["token_type_ids"].shape
    assert mask[0].sum() == 3  # [CLS] good [SEP]
    assert (ids[0, 3:] == encoder.pad_id).all() and (mask[0, 3:] == 0).all()
    assert mask[1].all()


def test_encoder_truncates_at_max_length_and_rounds_padding(tokenizer_file):
    encoder = TextEncoder(tokenizer_file, max_length=10, uses_token_type_ids=False, pad_to_multiple_of=8)
    batch = encoder.encode_batch(["word " * 50, "hi"])
    assert batch["input_ids"].shape == (2, 10)  # truncated to 10, not rounded past the max length
    assert "token_type_ids" not in batch
    short = encoder.encode_batch(["hi there"])
    assert short["input_ids"].shape == (1, 8)  # 4 tokens rounded up to 8
    assert short["attention_mask"].sum() == 4


def test_encoder_handles_empty_and_unusual_text(tokenizer_file):
    encoder = TextEncoder(tokenizer_file, max_length=32, uses_token_type_ids=True)
    batch = encoder.encode_batch(["", "\u200b\u202e\U0001F600", "مرحبا"])
    assert batch["input_ids"].shape[0] == 3
    assert (batch["attention_mask"].sum(axis=1) >= 2).all()  # at least [CLS] [SEP]
