"""What every transport hands to the core: texts plus options, checked against the limits once.

Transports only translate their wire format into a `ClassifyRequest`; the checks below are the
same for `/project/bulk-predict`, KServe V1, V2 REST (JSON and binary) and V2 gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from transformer.core.windows import Truncation
from transformer.errors import InvalidRequest, RequestTooLarge

OPTION_NAMES = ("truncation", "details", "top_k", "raw_scores")


@dataclass(frozen=True, slots=True)
class ClassifyOptions:
    """Per-request choices that change what is computed (`truncation`) or only what is returned
    (`details`, `top_k`, `raw_scores`: views of the one cached value per text)."""

    truncation: Truncation = Truncation.CHUNK
    details: bool = False
    top_k: int | None = None  # the best k labels per text; None: all of them
    raw_scores: bool = False  # scores are the model's raw logits, before softmax / sigmoid


@dataclass(frozen=True, slots=True)
class Limits:
    max_texts: int
    max_text_chars: int


@dataclass(slots=True)
class ClassifyRequest:
    """Texts in input order; `field` names them in error messages the way the client sent them."""

    texts: list[str]
    options: ClassifyOptions
    field: str = "text"


def parse_options(values: Mapping[str, Any] | None, default: ClassifyOptions,
                  where: str = "parameters") -> ClassifyOptions:
    """`truncation`, `details`, `top_k` and `raw_scores` from a request's options; other keys are
    left to the protocol."""
    if not values:
        return default
    truncation, details = default.truncation, default.details
    top_k, raw_scores = default.top_k, default.raw_scores
    prefix = f"{where}." if where else ""
    if "truncation" in values:
        raw = values["truncation"]
        try:
            truncation = Truncation(raw)
        except (ValueError, TypeError):
            choices = ", ".join(repr(t.value) for t in Truncation)
            raise InvalidRequest(f"{prefix}truncation must be one of {choices}, not {str(raw)[:40]!r}") from None
    if "details" in values:
        details = values["details"]
        if not isinstance(details, bool):
            raise InvalidRequest(f"{prefix}details must be true or false")
    if "top_k" in values:
        top_k = values["top_k"]
        if top_k is not None and (type(top_k) is not int or top_k < 1):
            raise InvalidRequest(f"{prefix}top_k must be an integer >= 1 (the best k labels per text; more than the "
                                 f"model has means all of them), not {str(top_k)[:40]!r}")
    if "raw_scores" in values:
        raw_scores = values["raw_scores"]
        if not isinstance(raw_scores, bool):
            raise InvalidRequest(f"{prefix}raw_scores must be true or false")
    options = ClassifyOptions(truncation, details, top_k, raw_scores)
    return default if options == default else options


def validate_texts(texts: Any, limits: Limits, field: str = "text") -> list[str]:
    """A non-empty list of strings within the configured sizes, or a 422/413 that says what to fix."""
    if not isinstance(texts, list):
        raise InvalidRequest(f"'{field}' must be a list of strings, e.g. {{\"{field}\": [\"i love this\"]}}")
    if not texts:
        raise InvalidRequest(f"'{field}' is empty: send at least one text")
    if len(texts) > limits.max_texts:
        raise RequestTooLarge(f"{len(texts)} texts in one request; the limit is {limits.max_texts}: split the request",
                              limit=limits.max_texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidRequest(f"{field}[{index}] is {type(text).__name__}, expected a string", index=index)
        if len(text) > limits.max_text_chars:
            raise RequestTooLarge(f"{field}[{index}] has {len(text)} characters; the limit is {limits.max_text_chars} "
                                  "characters per text", index=index, limit=limits.max_text_chars)
    return texts
