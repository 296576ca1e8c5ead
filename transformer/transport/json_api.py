"""The JSON bodies of `POST /project/bulk-predict` and KServe V1 `:predict`, in and out.

    /project/bulk-predict  {"text": ["...", ...], "truncation": "chunk", "details": false, "top_k": 2,
                            "raw_scores": false}
    V1 :predict            {"instances": ["...", {"text": "..."}, ...], "parameters": {"truncation": ...}}
    answer                 {"predictions": [[{"label", "score"}, ...], ...]} (+ "details" when asked);
                           ranked, the best `top_k` per text, scores raw logits with `raw_scores`
"""

from __future__ import annotations

from typing import Any, Sequence

import orjson

from transformer.core.prediction import Prediction
from transformer.core.requests import OPTION_NAMES, ClassifyOptions, ClassifyRequest, parse_options
from transformer.errors import InvalidRequest

BULK_FIELDS = ("text",) + OPTION_NAMES


def _json(body: bytes, example: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(
            f"the body is not valid JSON ({error.msg} at position {error.pos}); send {example}"
        ) from None


def decode_bulk(body: bytes, default: ClassifyOptions) -> ClassifyRequest:
    example = '{"text": ["your text", ...]}'
    payload = _json(body, example)
    if not isinstance(payload, dict) or "text" not in payload:
        raise InvalidRequest('expected a JSON object with a "text" list: {"text": ["i love this", "this is bad"]}')
    unknown = [str(key)[:40] for key in payload if key not in BULK_FIELDS]
    if unknown:
        raise InvalidRequest(f"unknown field(s) {unknown}; the body takes {', '.join(BULK_FIELDS)}")
    options = parse_options({key: payload[key] for key in OPTION_NAMES if key in payload}, default, where="")
    return ClassifyRequest(payload["text"], options, "text")


def decode_v1(body: bytes, default: ClassifyOptions) -> ClassifyRequest:
    payload = _json(body, '{"instances": ["your text", ...]}')
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InvalidRequest('expected a JSON object {"instances": ["text", ...]}')
    instances = payload["instances"]
    if isinstance(instances, list):
        instances = [item.get("text") if isinstance(item, dict) else item for item in instances]
    parameters = payload.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidRequest("'parameters' must be an object")
    return ClassifyRequest(instances, parse_options(parameters, default), "instances")


def encode_predictions(predictions: Sequence[Prediction], details: list[dict] | None,
                       labels: Sequence[str] = (), options: ClassifyOptions = ClassifyOptions()) -> bytes:
    """Each prediction's full ranked answer is pre-serialized (an orjson Fragment): embedded, not
    re-encoded; `top_k` and `raw_scores` are built from the prediction's values."""
    top_k, raw_scores = options.top_k, options.raw_scores
    answer: dict[str, Any] = {"predictions": [prediction.view(labels, top_k, raw_scores) for prediction in predictions]}
    if details is not None:
        answer["details"] = details
    return orjson.dumps(answer)
