"""Text replacements: the characters a model reads as words (the default model's emoji names), applied
before tokenizing wherever a `TextEncoder` is built on that model's tokenizer."""

import shutil

import pytest

from sentiment.model.build import default_base
from sentiment.model.emoji_names import emoji_names, unknown_to
from transformer.core.tokenization import REPLACEMENTS_FILE, TextEncoder, TextReplacements

ANGRY, SMITTEN, THUMBS_UP, MEDIUM_SKIN = "\U0001F621", "\U0001F60D", "\U0001F44D", "\U0001F3FD"


def test_replacements_are_words_apart_from_their_neighbours_and_an_empty_one_drops_the_character():
    table = TextReplacements({ANGRY: "enraged face", MEDIUM_SKIN: ""})
    assert table.apply(f"great{ANGRY}day") == "great enraged face day"
    assert table.apply(f"ok {THUMBS_UP}{MEDIUM_SKIN}") == f"ok {THUMBS_UP}"
    plain = "nothing to replace here"
    assert table.apply(plain) == plain


def test_a_table_maps_single_non_ascii_characters_and_its_digest_follows_its_content():
    with pytest.raises(ValueError, match="single non-ASCII characters"):
        TextReplacements({"ab": "x"})
    with pytest.raises(ValueError, match="single non-ASCII characters"):
        TextReplacements({":": "colon"})  # ASCII text is passed through unscanned
    with pytest.raises(ValueError):
        TextReplacements({})
    assert TextReplacements({ANGRY: "a"}).digest == TextReplacements({ANGRY: "a"}).digest
    assert TextReplacements({ANGRY: "a"}).digest != TextReplacements({ANGRY: "b"}).digest


def test_an_encoder_applies_the_table_beside_its_tokenizer_and_none_without_one(tmp_path):
    shutil.copyfile(default_base() / "tokenizer.json", tmp_path / "tokenizer.json")
    bare = TextEncoder(tmp_path / "tokenizer.json", 32, True)
    assert bare.replacements is None
    TextReplacements({ANGRY: "enraged face"}).write_beside(tmp_path / "tokenizer.json")
    named = TextEncoder(tmp_path / "tokenizer.json", 32, True)
    assert named.replacements is not None and named.replacements.table == {ANGRY: "enraged face"}
    assert bare.tokenize([f"bad {ANGRY}"])[0].tokens == ["[CLS]", "bad", "[UNK]", "[SEP]"]
    assert named.tokenize([f"bad {ANGRY}"])[0].tokens == ["[CLS]", "bad", "enraged", "face", "[SEP]"]
    long = " ".join([f"word {ANGRY}"] * 40)  # windows of a long text read the names too
    assert all("[UNK]" not in w.tokens for w in named.windows([long])[0].windows)
    (tmp_path / REPLACEMENTS_FILE).write_text('["not", "a", "table"]')
    with pytest.raises(ValueError, match="is not a table"):
        TextEncoder(tmp_path / "tokenizer.json", 32, True)


def test_the_emoji_table_names_what_the_vocabulary_lacks_and_leaves_what_it_has():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(default_base()), use_fast=True)
    table = emoji_names(unknown_to(tokenizer)).table
    assert table[ANGRY] == "enraged face" and table[SMITTEN] == "smiling face with heart-eyes"
    assert table[THUMBS_UP] == "thumbs up" and table[MEDIUM_SKIN] == ""
    assert "\u2665" not in table and "\u00a9" not in table  # ♥ and © are word pieces of the vocabulary
    assert len(table) > 1000
    assert all(tokenizer(key, add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id] for key in table)
