"""The public `/project` API, added to KServe's FastAPI app, plus the middleware around every route.

Routes: POST /project/bulk-predict, GET /project/health (readiness: transformer and predictor),
GET /project/live (liveness: never depends on the predictor). The middleware enforces the body
size limit and the in-flight limit (load shedding), and records per-route metrics.
"""

from __future__ import annotations

import gc
import logging
import re
import time
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.responses import Response
from pydantic import BaseModel, Field

from transformer import metrics
from transformer.errors import InvalidRequest, Overloaded, RequestTooLarge, ServiceError, UnsupportedMediaType
from transformer.model import SentimentModel, validate_texts

log = logging.getLogger(__name__)

_JSON_TYPES = ("application/json", "text/json")


class BulkPredictRequest(BaseModel):
    text: list[str] = Field(min_length=1, description="texts to classify (at most MAX_TEXTS_PER_REQUEST)")


class LabelScore(BaseModel):
    label: str
    score: float


class BulkPredictResponse(BaseModel):
    predictions: list[list[LabelScore]] = Field(description="one ranked list per input text, in input order")


class ErrorBody(BaseModel):
    error: str
    code: str


def json_response(content: Any, status_code: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, headers=headers, media_type="application/json")


def error_response(error: ServiceError) -> Response:
    headers = {"Retry-After": "1"} if error.status_code in (429, 503) else None
    return json_response(error.body(), error.status_code, headers)


async def service_error_handler(_request: Request, error: ServiceError) -> Response:
    return error_response(error)


async def validation_error_handler(_request: Request, error: RequestValidationError) -> Response:
    """FastAPI's own body validation (the V2 routes): the same JSON error shape as ours, 422."""
    problems = error.errors()
    first = problems[0] if problems else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body",)) or "body"
    message = f"{where}: {first.get('msg', 'invalid')}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
    return json_response({"error": message, "code": "invalid_request"}, 422)


async def http_error_handler(_request: Request, error: StarletteHTTPException) -> Response:
    """Framework errors (unknown route, wrong method, unparsable body) in the same JSON error shape."""
    code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    status = 422 if error.status_code == 400 else error.status_code
    return json_response({"error": str(error.detail), "code": code}, status, getattr(error, "headers", None))


def register_routes(app: FastAPI, model: SentimentModel) -> None:
    settings = model.settings

    @app.post(
        "/project/bulk-predict",
        summary="Classify a list of texts",
        response_model=None,
        responses={200: {"model": BulkPredictResponse}, 413: {"model": ErrorBody}, 415: {"model": ErrorBody},
                   422: {"model": ErrorBody}, 503: {"model": ErrorBody}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": BulkPredictRequest.model_json_schema()}}}},
        tags=["project"],
    )
    async def bulk_predict(request: Request) -> Response:
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if content_type not in _JSON_TYPES and not content_type.endswith("+json"):
            raise UnsupportedMediaType(f"send JSON with Content-Type: application/json (got {content_type!r})")
        body = await request.body()
        try:
            payload: Any = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise InvalidRequest(f"the body is not valid JSON ({error.msg} at position {error.pos}); "
                                 'send {"text": ["your text", ...]}') from None
        if not isinstance(payload, dict) or "text" not in payload:
            raise InvalidRequest('expected a JSON object with a "text" list: {"text": ["i love this", "this is bad"]}')
        texts = validate_texts(payload["text"], settings)
        if model.classifier is None:
            raise Overloaded("the model is still loading; retry shortly")
        predictions = await model.classifier.classify(texts)
        return json_response({"predictions": [prediction.ranked_json for prediction in predictions]})

    @app.get("/project/health", summary="Readiness: transformer and predictor", tags=["project"])
    async def health() -> Response:
        classifier = model.classifier
        if classifier is None or not model.ready:
            return json_response({"status": "unhealthy", "reason": "model bundle not loaded"}, 503)
        status = classifier.status
        if status.ready and status.fingerprint == "match":
            return json_response({"status": "healthy"})
        return json_response({"status": "unhealthy", "reason": status.reason}, 503)

    @app.get("/project/live", summary="Liveness: the process answers (independent of the predictor)", tags=["project"])
    async def live() -> Response:
        return json_response({"status": "alive"})

    app.add_exception_handler(ServiceError, service_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)

    @app.on_event("startup")
    async def start_background() -> None:
        drop_timing_middleware(app)
        # Everything loaded so far lives as long as the process: keep it out of the GC's generations.
        gc.freeze()
        if model.classifier is not None:
            model.classifier.start_monitor()

    # KServe's model-repository extension (/v2/repository/models/{name}/load|unload) would let any
    # client unload the model through the public port: ServingMiddleware answers 404 for it, and
    # the OpenAPI schema does not advertise it.
    kserve_openapi = app.openapi

    def openapi_without_repository():
        schema = kserve_openapi()
        schema["paths"] = {path: item for path, item in schema.get("paths", {}).items()
                           if not path.startswith(BLOCKED_PREFIXES)}
        return schema

    app.openapi = openapi_without_repository

    @app.on_event("shutdown")
    async def close_clients() -> None:
        if model.classifier is not None:
            await model.classifier.close()

    app.add_middleware(ServingMiddleware, max_body_bytes=settings.max_body_bytes, max_inflight=settings.max_inflight)


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


BLOCKED_PREFIXES = ("/v2/repository/",)

_ROUTES = [
    (re.compile(r"^/project/bulk-predict$"), "/project/bulk-predict", True),
    (re.compile(r"^/project/health$"), "/project/health", False),
    (re.compile(r"^/project/live$"), "/project/live", False),
    (re.compile(r"^/v1/models/[^/]+:predict$"), "/v1/models/{name}:predict", True),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$"), "/v2/models/{name}/infer", True),
    (re.compile(r"^/v2/health/(live|ready)$"), "/v2/health", False),
    (re.compile(r"^/v[12]/models/[^/]+(/ready)?$"), "/v[12]/models/{name}", False),
    (re.compile(r"^/metrics$"), "/metrics", False),
]


def classify_route(path: str) -> tuple[str, bool]:
    """A bounded route label for metrics, and whether the route runs inference."""
    for pattern, label, inference in _ROUTES:
        if pattern.match(path):
            return label, inference
    return "other", False


def _refusal(scope) -> str | None:
    """Requests for things this service does not serve, answered 404 before KServe would say 501."""
    path = scope["path"]
    if path.startswith(BLOCKED_PREFIXES):
        return f"{path} is not served here"
    if path.startswith("/v2/models/") and ("/versions/" in path or b"model_version=" in scope.get("query_string", b"")):
        return "model versions are not served: the model has one version; drop the version from the request"
    return None


class _BodyTooLarge(Exception):
    pass


class ServingMiddleware:
    """Pure ASGI: body limit, in-flight limit (shed with 503 + Retry-After), request metrics."""

    def __init__(self, app, max_body_bytes: int, max_inflight: int):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_inflight = max_inflight
        self.inflight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route, inference = classify_route(scope["path"])
        refusal = _refusal(scope)
        if refusal is not None:
            await json_response({"error": refusal, "code": "not_found"}, 404)(scope, receive, send)
            metrics.REQUESTS.labels(route=route, method=scope["method"], status="404").inc()
            return
        started = time.perf_counter()
        status_holder = {"status": 500, "started": False}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
            await send(message)

        try:
            if inference:
                declared = _content_length(scope)
                if declared is not None and declared > self.max_body_bytes:
                    raise RequestTooLarge(f"the body has {declared} bytes; the limit is {self.max_body_bytes}",
                                          limit=self.max_body_bytes)
                if self.inflight >= self.max_inflight:
                    metrics.SHED.inc()
                    raise Overloaded(f"over {self.max_inflight} requests in flight; retry after a second")
                if declared is not None:
                    metrics.REQUEST_BYTES.labels(route=route).observe(declared)
                self.inflight += 1
                metrics.INFLIGHT.inc()
                try:
                    await self.app(scope, self._limited(receive), send_wrapper)
                finally:
                    self.inflight -= 1
                    metrics.INFLIGHT.dec()
            else:
                await self.app(scope, receive, send_wrapper)
        except (ServiceError, _BodyTooLarge) as error:
            if status_holder["started"]:
                raise
            if isinstance(error, _BodyTooLarge):
                error = RequestTooLarge(f"the body is over the limit of {self.max_body_bytes} bytes",
                                        limit=self.max_body_bytes)
            await error_response(error)(scope, receive, send_wrapper)
        except Exception:
            # Never leak a stack trace or internal names: log it, answer a plain 500.
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if status_holder["started"]:
                raise
            await json_response({"error": "internal error; it was logged", "code": "internal_error"}, 500)(
                scope, receive, send_wrapper)
        finally:
            metrics.REQUESTS.labels(route=route, method=scope["method"], status=str(status_holder["status"])).inc()
            metrics.REQUEST_LATENCY.labels(route=route).observe(time.perf_counter() - started)

    def _limited(self, receive):
        total = 0

        async def wrapped():
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_body_bytes:
                    raise _BodyTooLarge()
            return message

        return wrapped


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
