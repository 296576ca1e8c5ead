"""The OpenAPI document of what the REST transport really serves: every route, body, option and
error status, written here rather than derived from KServe's handlers (which the transport answers
in their place, and whose generated schema names bodies and errors we never send).

A schemathesis run against a live stack (tests/reliability/test_openapi_contract.py) holds the
document and the server together: no 5xx, no status, content type or body outside the document.
"""

from __future__ import annotations

from typing import Any, Literal

from kserve.protocol.rest.v2_datamodels import (InferenceRequest, InferenceResponse, ListModelsResponse,
                                                ModelMetadataResponse, ModelReadyResponse, ServerLiveResponse,
                                                ServerMetadataResponse, ServerReadyResponse)
from pydantic import BaseModel, ConfigDict, Field

from transformer.core.windows import Truncation
from transformer.errors import ERROR_TABLE


class BulkPredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: list[str] = Field(min_length=1, description="texts to classify (at most MAX_TEXTS_PER_REQUEST)")
    truncation: Truncation = Field(Truncation.CHUNK, description="texts longer than the model's window: chunk "
                                   "(judge the whole text), head (first window only) or error (422)")
    details: bool = Field(False, description="add per text its token count, window count and whether it was cut")
    top_k: int | None = Field(None, ge=1, description="only the best k labels per text; more than the model has "
                              "means all of them; null: all")
    raw_scores: bool = Field(False, description="scores are the model's raw logits (before softmax / sigmoid)")


class V1Parameters(BaseModel):
    truncation: Truncation = Truncation.CHUNK
    details: bool = False
    top_k: int | None = Field(None, ge=1, description="only the best k labels per text; null: all")
    raw_scores: bool = Field(False, description="scores are the model's raw logits")


class V1Instance(BaseModel):
    text: str


class V1PredictRequest(BaseModel):
    instances: list[str | V1Instance] = Field(min_length=1, description="texts, or objects with a text field")
    parameters: V1Parameters | None = None


class LabelScore(BaseModel):
    label: str
    score: float


class TextDetails(BaseModel):
    tokens: int
    windows: int
    truncated: bool


class BulkPredictResponse(BaseModel):
    predictions: list[list[LabelScore]] = Field(description="one ranked list per input text, in input order")
    details: list[TextDetails] | None = Field(None, description="with details: true")


class RequestLimits(BaseModel):
    max_texts: int = Field(description="texts per request (413 above)")
    max_text_chars: int = Field(description="characters per text (413 above, naming the text's index)")
    max_request_tokens: int = Field(description="tokens the model runs for one request's new texts (413 above)")
    max_body_bytes: int = Field(description="request body bytes (413 above)")


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong and what to fix")
    code: str = Field(json_schema_extra={"enum": list(sorted(ERROR_TABLE))})
    index: int | None = Field(None, description="the text the error is about, where one is")
    limit: int | None = Field(None, description="the limit that was exceeded, where one was")


class HealthBody(BaseModel):
    status: Literal["healthy", "unhealthy", "alive", "dead"]
    reason: str | None = None


class V1ModelsResponse(BaseModel):
    models: list[str]


class V1ModelReady(BaseModel):
    name: str
    ready: bool


_MODELS = (BulkPredictRequest, V1PredictRequest, BulkPredictResponse, RequestLimits, ErrorBody, HealthBody,
           V1ModelsResponse, V1ModelReady, InferenceRequest, InferenceResponse, ListModelsResponse,
           ModelMetadataResponse, ModelReadyResponse, ServerLiveResponse, ServerMetadataResponse, ServerReadyResponse)

_ERROR_TEXT = {
    401: "API key missing or wrong (only where API keys are configured)",
    404: "the path names a model or version this server does not serve",
    408: "the request body did not arrive within the body timeout",
    413: "over a limit: texts per request, characters per text (with `index`), tokens, body bytes",
    415: "not JSON (or a Content-Encoding other than gzip/deflate)",
    422: "the body is not what the route takes (the message says what to fix)",
    503: "the predictor is unavailable, or the server is shedding load (retry after Retry-After)",
    504: "admitted but not finished within the request timeout",
}
INFERENCE_ERRORS = (401, 404, 408, 413, 415, 422, 503, 504)
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _errors(*statuses: int) -> dict:
    answers = {}
    for status in statuses:
        answers[str(status)] = {"description": _ERROR_TEXT[status], "content": _json(_ref("ErrorBody"))}
        if status == 503:
            answers[str(status)]["headers"] = _RETRY_AFTER
    return answers


def _get(summary: str, tag: str, ok: dict, *errors: int, params: list | None = None, ok_status: str = "200",
         extra: dict | None = None) -> dict:
    operation: dict[str, Any] = {"tags": [tag], "summary": summary,
                                 "responses": {ok_status: {"description": "OK", "content": ok}, **_errors(*errors),
                                               **(extra or {})}}
    if params:
        operation["parameters"] = params
    return {"get": operation}


def _path_param(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


MODEL = _path_param("model_name", "the served model's name (404 for any other)")
VERSION = _path_param("model_version", "the served model's version (404 for any other)")
PROBE_503 = {"503": {"description": "not ready (the reason says why)", "content": _json(_ref("HealthBody"))}}


def _infer(summary: str, tag: str, request: dict, response: dict, params: list | None = None,
           example: dict | None = None) -> dict:
    if example is not None:
        request = {**request, "application/json": {**request["application/json"], "example": example}}
    operation: dict[str, Any] = {
        "tags": [tag], "summary": summary,
        "requestBody": {"required": True, "content": request},
        "responses": {"200": {"description": "one answer per text, in input order", "content": response},
                      **_errors(*INFERENCE_ERRORS)},
    }
    if params:
        operation["parameters"] = params
    return {"post": operation}


def _v2_infer(params: list) -> dict:
    binary = {"type": "string", "format": "binary"}
    header = {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
              "schema": {"type": "integer", "minimum": 0},
              "description": "binary tensor extension: bytes of the JSON header at the start of the body"}
    return _infer("V2 inference: input `text` BYTES [n]; outputs label, score, probabilities (and details)", "V2",
                  {**_json(_ref("InferenceRequest")), "application/octet-stream": {"schema": binary}},
                  {**_json(_ref("InferenceResponse")), "application/octet-stream": {"schema": binary}},
                  params + [header], example={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                                                           "data": ["i love this", "this is bad"]}]})


def served_paths() -> dict[str, dict]:
    v2_model = [MODEL]
    v2_version = [MODEL, VERSION]
    metadata = _json(_ref("ModelMetadataResponse"))
    ready = _json(_ref("ModelReadyResponse"))
    return {
        "/project/bulk-predict": _infer("Classify a list of texts", "project", _json(_ref("BulkPredictRequest")),
                                        _json(_ref("BulkPredictResponse")),
                                        example={"text": ["i love this", "this is bad"]}),
        "/project/health": _get("Readiness: transformer and predictor", "project", _json(_ref("HealthBody")),
                                extra=PROBE_503),
        "/project/live": _get("Liveness: the process serves its model (never asks the predictor)", "project",
                              _json(_ref("HealthBody")), extra=PROBE_503),
        "/project/limits": _get("The request limits (413 above them)", "project", _json(_ref("RequestLimits"))),
        "/metrics": _get("Prometheus metrics", "monitoring", {"text/plain": {"schema": {"type": "string"}}}),
        "/": _get("Liveness (KServe)", "KServe", _json({"type": "object", "additionalProperties": {"type": "string"}})),
        "/v1/models": _get("Models served (KServe V1)", "V1", _json(_ref("V1ModelsResponse")), 401),
        "/v1/models/{model_name}": _get("Model readiness (KServe V1)", "V1", _json(_ref("V1ModelReady")), 401, 404,
                                        params=[MODEL], extra=PROBE_503),
        "/v1/models/{model_name}:predict": _infer("V1 inference", "V1", _json(_ref("V1PredictRequest")),
                                                  _json(_ref("BulkPredictResponse")), [MODEL],
                                                  example={"instances": ["i love this", {"text": "this is bad"}]}),
        "/v2": _get("Server metadata (V2)", "V2", _json(_ref("ServerMetadataResponse")), 401),
        "/v2/health/live": _get("Server liveness (V2)", "V2", _json(_ref("ServerLiveResponse"))),
        "/v2/health/ready": _get("Server readiness (V2)", "V2", _json(_ref("ServerReadyResponse")), extra=PROBE_503),
        "/v2/models": _get("Models served (V2)", "V2", _json(_ref("ListModelsResponse")), 401),
        "/v2/models/{model_name}": _get("Model metadata (V2)", "V2", metadata, 401, 404, params=v2_model),
        "/v2/models/{model_name}/versions/{model_version}": _get("Model metadata of a version (V2)", "V2", metadata,
                                                                 401, 404, params=v2_version),
        "/v2/models/{model_name}/ready": _get("Model readiness (V2)", "V2", ready, 404, params=v2_model,
                                              extra=PROBE_503),
        "/v2/models/{model_name}/versions/{model_version}/ready": _get("Model readiness of a version (V2)", "V2",
                                                                      ready, 404, params=v2_version, extra=PROBE_503),
        "/v2/models/{model_name}/infer": _v2_infer(v2_model),
        "/v2/models/{model_name}/versions/{model_version}/infer": _v2_infer(v2_version),
    }


def openapi_document(title: str, version: str) -> dict:
    schemas: dict[str, Any] = {}
    for model in _MODELS:
        definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(definition.pop("$defs", {}))
        schemas[model.__name__] = definition
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "Sentiment classification: /project routes, KServe V1 and V2 (inference, metadata, "
                                "health). Errors are JSON {error, code}; model-repository and explain routes are "
                                "not served (404)."},
        "paths": served_paths(),
        # API keys (API_KEYS) are optional: a scheme every operation that may answer 401 accepts.
        "components": {"schemas": schemas, "securitySchemes": {"bearerApiKey": {
            "type": "http", "scheme": "bearer",
            "description": "an API key from the API_KEYS file, where one is configured"}}},
    }
