"""The default model's text replacements: each emoji its vocabulary cannot read, as its CLDR name.

BERT's uncased word pieces have no emoji, so every one of them is the same unknown token and `😡`
reads like `😍`. Written as their English names (the `emoji` package's CLDR short names: "thumbs
down", "smiling face with heart-eyes") they reach words the encoder knows. Only characters the
tokenizer maps to its unknown token are replaced (`♥`, `©` and the like are in the vocabulary and
stay); skin-tone modifiers are dropped, so a toned emoji reads as its base. The table is built at
training time and travels with the checkpoint (`transformer.core.tokenization.TextReplacements`).
"""

from __future__ import annotations

from typing import Callable

from transformer.core.tokenization import TextReplacements

SKIN_TONES = tuple(chr(code) for code in range(0x1F3FB, 0x1F400))
VARIATION_SELECTOR = "\ufe0f"


def cldr_name(alias: str) -> str:
    """`:thumbs_down:` -> `thumbs down`."""
    return alias.strip(":").replace("_", " ")


def emoji_names(is_unknown: Callable[[str], bool]) -> TextReplacements:
    """Every single-character emoji that `is_unknown` (the tokenizer reads it as its unknown token)
    mapped to its name; skin tones to nothing."""
    import emoji

    table: dict[str, str] = {}
    for sequence, data in emoji.EMOJI_DATA.items():
        character = sequence.replace(VARIATION_SELECTOR, "")
        if len(character) == 1 and character not in table and is_unknown(character):
            table[character] = "" if character in SKIN_TONES else cldr_name(data["en"])
    return TextReplacements(table)


def emoji_version() -> str:
    import emoji

    return emoji.__version__


def unknown_to(tokenizer) -> Callable[[str], bool]:
    """Whether an HF tokenizer reads a character as nothing but its unknown token."""
    unknown = tokenizer.unk_token_id
    return lambda character: tokenizer(character, add_special_tokens=False)["input_ids"] == [unknown]
