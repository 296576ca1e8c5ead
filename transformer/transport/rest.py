"""The REST transport: one pure-ASGI layer in front of KServe's FastAPI app.

Inference routes (`POST /project/bulk-predict`, V1 `:predict`, V2 `/infer`) are served here from
start to end: the body is read within a size limit and a time limit (its request holds no
in-flight slot until it is complete), decoded by the route's codec, classified by the core, and
encoded. Everything else (health, metadata, `/metrics`, docs) goes to KServe's app, after the model
name and version in the path are checked; its error answers are rewritten into our shape
`{"error", "code"}`. Model-repository routes are not served. Every request is counted in
`sentiment_requests_total{protocol="rest"}`; a client that leaves mid-body counts as 499.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import zlib
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl, urlencode
from typing import Any, Awaitable, Callable

import orjson

from transformer import metrics
from transformer.api_keys import require_key
from transformer.core.service import ServingCore
from transformer.errors import (CLIENT_CLOSED_STATUS, ERROR_TABLE, InvalidRequest, MethodNotAllowed, NotServed,
                                RequestTimeout, RequestTooLarge, ServiceError, UnsupportedMediaType, code_of_status,
                                echo)
from transformer.transport import json_api, v2
from transformer.transport.recording import RequestRecord, check_model, track

log = logging.getLogger(__name__)

_JSON_TYPES = ("application/json", "text/json")
_ERROR_SHAPE_LIMIT = 64 * 1024  # bytes of a framework error body we rewrite; larger ones are replaced


class ClientDisconnected(Exception):
    """The client closed the connection before its body arrived."""


@dataclass(frozen=True, slots=True)
class RouteMatch:
    label: str           # bounded metrics label
    kind: str            # bulk | v1 | v2 | app | refuse
    name: str | None = None
    version: str | None = None
    rewritten: str | None = None  # path for KServe's app with the version segment removed


_ROUTES: list[tuple[re.Pattern, str, str]] = [
    (re.compile(r"^/project/bulk-predict$"), "/project/bulk-predict", "bulk"),
    (re.compile(r"^/v1/models/(?P<name>[^/:]+):predict$"), "/v1/models/{name}:predict", "v1"),
    (re.compile(r"^/v2/models/(?P<name>[^/]+)(/versions/(?P<version>[^/]+))?/infer$"), "/v2/models/{name}/infer", "v2"),
    (re.compile(r"^/v1/models/(?P<name>[^/:]+):explain$"), "/v1/models/{name}:explain", "refuse"),
    (re.compile(r"^/v2/repository(/.*)?$"), "/v2/repository", "refuse"),
    (re.compile(r"^/v1/models/(?P<name>[^/:]+)$"), "/v1/models/{name}", "app"),
    (re.compile(r"^/v2/models/(?P<name>[^/]+)(/versions/(?P<version>[^/]+))?(?P<rest>/ready)?$"),
     "/v2/models/{name}", "app"),
    (re.compile(r"^/project/(health|live)$"), "/project/health", "app"),
    (re.compile(r"^/project/limits$"), "/project/limits", "app"),
    (re.compile(r"^/v2/health/(live|ready)$"), "/v2/health", "app"),
    (re.compile(r"^/metrics$"), "/metrics", "app"),
]


def match_route(path: str) -> RouteMatch:
    for pattern, label, kind in _ROUTES:
        found = pattern.match(path)
        if found is None:
            continue
        groups = found.groupdict()
        rewritten = None
        if kind == "app" and groups.get("version") is not None:
            rewritten = f"/v2/models/{groups['name']}{groups.get('rest') or ''}"
        if label == "/project/health" and path.endswith("/live"):
            label = "/project/live"
        return RouteMatch(label, kind, groups.get("name"), groups.get("version"), rewritten)
    return RouteMatch("other", "app")


# With API_KEYS set, these answer without a key: the probes and scrapes (kubelet and Prometheus carry
# none), KServe's liveness root, and the API's own description.
_PROBE_LABELS = frozenset({"/project/health", "/project/live", "/v2/health", "/metrics"})
_OPEN_PATHS = frozenset({"/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
KEY_HEADER = "'Authorization: Bearer <key>'"


def open_without_key(route: RouteMatch, path: str) -> bool:
    """Probes (/project/health, /project/live, /v2/health/*, /v2/models/{name}/ready), /metrics and the
    API description; inference, metadata and everything else need a key when keys are configured."""
    return (route.label in _PROBE_LABELS or path in _OPEN_PATHS
            or (route.label == "/v2/models/{name}" and path.endswith("/ready")))


def _authorization(scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value.decode("latin-1")
    return None


def version_from_query(scope, route: RouteMatch):
    """KServe's V2 routes also take the version as `?model_version=`, which its handlers answer with
    501 "not supported": read it here like the `/versions/{v}` segment (checked against the served
    version) and pass the rest of the query on."""
    query = scope.get("query_string", b"")
    if not route.label.startswith("/v2/models/") or b"model_version" not in query:
        return scope, route
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    versions = [value for name, value in pairs if name == "model_version" and value]
    kept = urlencode([(name, value) for name, value in pairs if name != "model_version"]).encode("latin-1")
    scope = dict(scope, query_string=kept)
    if not versions:
        return scope, route
    if route.version is not None and route.version != versions[-1]:
        raise InvalidRequest(f"two versions: '{echo(route.version)}' in the path and '{echo(versions[-1])}' as "
                             "model_version; give one")
    return scope, replace(route, version=versions[-1])

def _headers(scope) -> dict[str, str]:
    wanted = (b"content-type", b"content-length", b"content-encoding", b"inference-header-content-length")
    return {name.decode(): value.decode("latin-1") for name, value in scope["headers"] if name in wanted}


def _response(body: bytes, status: int, headers: dict[str, str] | None = None):
    raw = [(b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {"content-type": "application/json"}).items()]
    return ({"type": "http.response.start", "status": status, "headers": raw},
            {"type": "http.response.body", "body": body})


async def _send(send, body: bytes, status: int, headers: dict[str, str] | None = None) -> None:
    start, content = _response(body, status, headers)
    await send(start)
    await send(content)


async def send_error(send, error: ServiceError) -> None:
    headers = {"content-type": "application/json"}
    if error.status_code in (429, 503):
        headers["retry-after"] = "1"
    elif error.status_code == 401:
        headers["www-authenticate"] = "Bearer"
    if isinstance(error, MethodNotAllowed):
        headers["allow"] = "POST"  # the only method of the inference routes, the only ones that raise it
    await _send(send, orjson.dumps(error.body()), error.status_code, headers)


async def read_body(receive, limit: int, timeout_s: float) -> bytes:
    """The whole body, or RequestTooLarge past `limit` bytes, RequestTimeout after `timeout_s`,
    ClientDisconnected when the client leaves first."""
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise RequestTooLarge(f"the body is over the limit of {limit} bytes", limit=limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s ({size} bytes came)") from None


_CHECK_GONE_AFTER_S = 0.01  # an answer that waited for the model first checks that its client still waits


async def _client_gone(receive) -> bool:
    """Whether the client disconnected while its request was served. uvicorn stops reading a
    connection once its body is complete; `receive` resumes reading, and a closed socket turns into
    `http.disconnect` within a few loop iterations. Otherwise `receive` would wait: cancelled."""
    waiting = asyncio.ensure_future(receive())
    for _ in range(5):
        await asyncio.sleep(0)
        if waiting.done():
            return waiting.result()["type"] == "http.disconnect"
    waiting.cancel()
    return False


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """gzip and deflate request bodies (tritonclient's `request_compression_algorithm`), bounded."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise UnsupportedMediaType(f"Content-Encoding {echo(encoding)!r} is not supported: send the body "
                                   "uncompressed, gzip or deflate")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise InvalidRequest(f"the body is not valid {encoding} data") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise RequestTooLarge(f"the decompressed body is over the limit of {limit} bytes", limit=limit)
    if not inflater.eof:
        raise InvalidRequest(f"the {encoding} body is truncated")
    return data


def _require_json(content_type: str | None) -> None:
    """Absent means JSON; anything else must say JSON."""
    if content_type is None:
        return
    media = content_type.split(";")[0].strip().lower()
    if media not in _JSON_TYPES and not media.endswith("+json"):
        raise UnsupportedMediaType(f"send JSON with Content-Type: application/json (got {echo(media)!r})")


Handler = Callable[[bytes, dict[str, str], RouteMatch], Awaitable[tuple[bytes, dict[str, str]]]]


class RestTransport:
    """Pure ASGI middleware around KServe's FastAPI app (see the module docstring)."""

    def __init__(self, app, core: ServingCore, model_name: str):
        self.app = app
        self.core = core
        self.model_name = model_name
        settings = core.settings
        self.max_body_bytes = settings.max_body_bytes
        self.body_timeout_s = settings.body_timeout_s
        self._handlers: dict[str, Handler] = {"bulk": self._bulk, "v1": self._v1, "v2": self._v2}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = match_route(scope["path"])
        with track("rest", route.label, scope) as record:
            try:
                scope, route = version_from_query(scope, route)
                if self.core.api_keys is not None and not open_without_key(route, scope["path"]):
                    require_key(self.core.api_keys, _authorization(scope), KEY_HEADER)
                check_model(route.name, route.version, self.model_name, self.core.version)
                if route.kind == "refuse":
                    raise NotServed(f"{echo(scope['path'])} is not served here (model repository and explain "
                                    "routes are closed)")
                if route.kind in self._handlers:
                    await self._infer(scope, receive, send, route, record)
                    return
                if route.rewritten is not None:
                    scope = dict(scope, path=route.rewritten, raw_path=route.rewritten.encode())
                if route.label in _OWN_PROBES:  # their 503 body is a probe answer, already ours
                    await self.app(scope, receive, _Recorded(send, record))
                else:
                    await self.app(scope, receive, _ShapedErrors(send, record))
            except ServiceError as error:
                record.fail(error)
                await send_error(send, error)

    async def _infer(self, scope, receive, send, route: RouteMatch, record: RequestRecord) -> None:
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{route.label} takes POST, not {echo(scope['method'])}")
            headers = _headers(scope)
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                raise RequestTooLarge(f"the body has {declared} bytes; the limit is {self.max_body_bytes}",
                                      limit=self.max_body_bytes)
            body = await read_body(receive, self.max_body_bytes, self.body_timeout_s)
            body = decompress(body, headers.get("content-encoding", ""), self.max_body_bytes)
            metrics.REQUEST_BYTES.labels(protocol="rest", route=route.label).observe(len(body))
            started = time.perf_counter()
            payload, response_headers = await self._handlers[route.kind](body, headers, route)
            if time.perf_counter() - started > _CHECK_GONE_AFTER_S and await _client_gone(receive):
                raise ClientDisconnected()
        except ClientDisconnected:
            record.status = CLIENT_CLOSED_STATUS
            return
        except ServiceError as error:
            record.fail(error)
            await send_error(send, error)
            return
        except Exception:
            # Never leak a stack trace or internal names: log it, answer a plain 500.
            log.exception("unhandled error on %s %s", scope["method"], route.label)
            record.fail_unhandled()
            await _send(send, b'{"error":"internal error; it was logged","code":"internal_error"}', 500)
            return
        record.status = 200
        await _send(send, payload, 200, response_headers)

    async def _bulk(self, body: bytes, headers: dict[str, str], _route: RouteMatch):
        _require_json(headers.get("content-type"))
        request = json_api.decode_bulk(body, self.core.default_options)
        return await self._json_answer(request)

    async def _v1(self, body: bytes, headers: dict[str, str], _route: RouteMatch):
        _require_json(headers.get("content-type"))
        request = json_api.decode_v1(body, self.core.default_options)
        return await self._json_answer(request)

    async def _json_answer(self, request) -> tuple[bytes, dict[str, str]]:
        result = await self.core.classify(request)
        details = result.details() if request.options.details else None
        body = json_api.encode_predictions(result.predictions, details, result.labels, request.options)
        return body, {"content-type": "application/json"}

    async def _v2(self, body: bytes, headers: dict[str, str], _route: RouteMatch):
        call = v2.decode_rest(body, headers.get(v2.HEADER_LENGTH), self.core.default_options)
        result = await self.core.classify(call.request)
        tensors = v2.output_tensors(call, result.predictions, result.labels, result.details())
        return v2.encode_rest(call, tensors, self.model_name, result.version)


_OWN_PROBES = ("/project/health", "/project/live")


class _Recorded:
    """`send` that only records the status."""

    __slots__ = ("send", "record")

    def __init__(self, send, record: RequestRecord):
        self.send = send
        self.record = record

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.start":
            self.record.status = message["status"]
        await self.send(message)


class _ShapedErrors:
    """`send` for KServe's app: records the status, and rewrites an error answer that lacks our
    `code` (KServe's own `{"error"}`, FastAPI's `{"detail"}`, plain text) into `{"error", "code"}`."""

    __slots__ = ("send", "record", "start", "chunks", "size")

    def __init__(self, send, record: RequestRecord):
        self.send = send
        self.record = record
        self.start: dict | None = None
        self.chunks: list[bytes] = []
        self.size = 0

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.start":
            self.record.status = message["status"]
            if message["status"] < 400:
                return await self.send(message)
            self.start = message
            return
        if self.start is None or message["type"] != "http.response.body":
            return await self.send(message)
        chunk = message.get("body", b"")
        self.size += len(chunk)
        if self.size <= _ERROR_SHAPE_LIMIT:
            self.chunks.append(chunk)
        if message.get("more_body", False):
            return
        status = self.start["status"]
        body = _shaped(b"".join(self.chunks), status)
        shaped = orjson.loads(body)
        self.record.code, self.record.message = shaped.get("code"), shaped.get("error")
        start, content = _response(body, status, {"content-type": "application/json"} | _kept_headers(self.start))
        await self.send(start)
        await self.send(content)


def _kept_headers(start: dict) -> dict[str, str]:
    return {name.decode(): value.decode("latin-1") for name, value in start.get("headers", [])
            if name.lower() in (b"retry-after", b"allow")}


def _shaped(body: bytes, status: int) -> bytes:
    try:
        document: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = body.decode("utf-8", "replace")
    if isinstance(document, dict) and isinstance(document.get("error"), str) and document.get("code") in ERROR_TABLE:
        return body
    if isinstance(document, dict):
        message = document.get("error") or document.get("detail") or document
    else:
        message = document
    if not isinstance(message, str):
        message = orjson.dumps(message).decode()
    if status >= 500:
        message = "internal error; it was logged" if status == 500 else message
    return orjson.dumps({"error": message[:300], "code": code_of_status(status)})
