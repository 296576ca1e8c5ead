"""What we add to KServe's FastAPI app: the probes, the start-up and shut-down hooks, error
handlers in our shape, and the OpenAPI description of the routes the REST transport serves.

    GET /project/health  readiness: 200 when the predictor is ready and serves our model, else 503
    GET /project/live    liveness: 200 while the model is loaded and registered; never asks the predictor
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from transformer.core.windows import Truncation
from transformer.errors import code_of_status
from transformer.transport.control import install_switch_signal
from transformer.transport.kserve_model import SentimentModel

log = logging.getLogger(__name__)


class BulkPredictRequest(BaseModel):
    text: list[str] = Field(min_length=1, description="texts to classify (at most MAX_TEXTS)")
    truncation: Truncation = Field(Truncation.CHUNK, description="texts longer than the model's window: chunk "
                                   "(judge the whole text), head (first window only) or error (422)")
    details: bool = Field(False, description="add per text its token count, window count and whether it was cut")


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


class ErrorBody(BaseModel):
    error: str
    code: str


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


async def validation_error_handler(_request: Request, error: RequestValidationError) -> Response:
    problems = error.errors()
    first = problems[0] if problems else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body",)) or "body"
    message = f"{where}: {first.get('msg', 'invalid')}" + (
        f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    )
    return json_response({"error": message, "code": "invalid_request"}, 422)


async def http_error_handler(_request: Request, error: StarletteHTTPException) -> Response:
    code = code_of_status(error.status_code)
    status = 422 if error.status_code == 400 else error.status_code
    response = json_response({"error": str(error.detail)[:300], "code": code}, status)
    response.headers.update(getattr(error, "headers", None) or {})
    return response


def register_routes(app: FastAPI, model: SentimentModel) -> None:
    @app.get("/project/health", summary="Readiness: transformer and predictor", tags=["project"])
    async def health() -> Response:
        core = model.core
        if core is None or not model.ready:
            return json_response({"status": "unhealthy", "reason": "model bundle not loaded"}, 503)
        status = core.generation.monitor.status
        if status.serving:
            return json_response({"status": "healthy"})
        return json_response({"status": "unhealthy", "reason": status.reason}, 503)

    @app.get("/project/live", summary="Liveness: the process serves its model (independent of the predictor)",
             tags=["project"])
    async def live() -> Response:
        if model.core is None or not model.ready:
            return json_response({"status": "dead", "reason": "the model is not loaded"}, 503)
        return json_response({"status": "alive"})

    # Starlette types a handler by the base Exception; each of ours takes the class it is registered for.
    app.add_exception_handler(RequestValidationError, validation_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error_handler)  # type: ignore[arg-type]

    @app.on_event("startup")
    async def start_background() -> None:
        drop_timing_middleware(app)
        # Everything loaded so far lives as long as the process: keep it out of the GC's generations.
        gc.freeze()
        if model.core is not None:
            model.core.start()
            install_switch_signal(model.core, model.settings.control_file)

    @app.on_event("shutdown")
    async def close_clients() -> None:
        if model.core is not None:
            await model.core.close()

    describe_served_routes(app)


def describe_served_routes(app: FastAPI) -> None:
    """The OpenAPI schema lists /project/bulk-predict (served by the REST transport, not by a
    FastAPI route) and leaves out the model-repository routes, which are not served."""
    kserve_openapi = app.openapi

    def openapi() -> dict:
        schema = kserve_openapi()
        paths = {path: item for path, item in schema.get("paths", {}).items() if not path.startswith("/v2/repository")}
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (BulkPredictRequest, BulkPredictResponse, ErrorBody):
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definition.pop("$defs", {}))
            components[model.__name__] = definition
        errors = {str(status): {"description": text, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
            for status, text in ((413, "over a limit"), (415, "not JSON"), (422, "invalid body"), (503, "unavailable"))}
        paths["/project/bulk-predict"] = {"post": {
            "tags": ["project"], "summary": "Classify a list of texts", "operationId": "bulk_predict",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/BulkPredictRequest"}}}},
            "responses": {"200": {"description": "one ranked list per text", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/BulkPredictResponse"}}}}, **errors},
        }}
        schema["paths"] = paths
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema


def drop_timing_middleware(app: FastAPI) -> None:
    """KServe adds timing_asgi's TimingMiddleware, which only feeds a log line we keep off; it costs
    about 10 % of a cache hit's CPU (getrusage per request). Rebuild the stack without it."""
    try:
        from timing_asgi import TimingMiddleware
    except ImportError:
        return
    kept = [m for m in app.user_middleware if m.cls is not TimingMiddleware]
    if len(kept) != len(app.user_middleware):
        app.user_middleware = kept
        app.middleware_stack = app.build_middleware_stack()
