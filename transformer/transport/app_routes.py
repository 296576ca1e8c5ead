"""What we add to KServe's FastAPI app: the probes, the start-up and shut-down hooks, error
handlers in our shape, and the OpenAPI document of the routes the REST transport serves (`api_schema`).

    GET /project/health  readiness: 200 when the predictor is ready and serves our model, else 503
    GET /project/live    liveness: 200 while the model is loaded and registered; never asks the predictor
    GET /project/limits  the request limits, so that a client (`sentiment score`) sizes its batches by them
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from transformer.errors import code_of_status
from transformer.transport.api_schema import RequestLimits, openapi_document
from transformer.transport.control import install_hangup_signal
from transformer.transport.kserve_model import SentimentModel

log = logging.getLogger(__name__)


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

    @app.get("/project/limits", summary="The request limits (413 above them)", tags=["project"],
             response_model=RequestLimits)
    async def limits() -> Response:
        settings = model.settings
        return json_response(RequestLimits(max_texts=settings.max_texts, max_text_chars=settings.max_text_chars,
                                           max_request_tokens=settings.max_request_tokens,
                                           max_body_bytes=settings.max_body_bytes).model_dump())

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
            install_hangup_signal(model.core, model.settings.control_file)

    @app.on_event("shutdown")
    async def close_clients() -> None:
        if model.core is not None:
            await model.core.close()

    describe_served_routes(app)


def describe_served_routes(app: FastAPI) -> None:
    """/openapi.json is `api_schema`'s document of what the REST transport serves, not the one FastAPI
    derives from KServe's handlers (which the transport answers in their place)."""
    document: dict = {}

    def openapi() -> dict:
        if not document:
            document.update(openapi_document(app.title, app.version))
        return document

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
