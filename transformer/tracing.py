"""OpenTelemetry tracing, off unless OTEL_TRACES_EXPORTER names an exporter.

Off (the default): the SDK is neither imported nor set up, `tracer` stays None, and every
instrumented stage enters one shared no-op context manager (`span`, `shared_span`): the same when
tracing is on and a request is not sampled. On: one trace per request, continuing
the client's W3C `traceparent` (HTTP header or gRPC metadata):

    request (SERVER)                 route, protocol, status, texts, model version, answers by source
      sentiment.cache.lookup         tiers asked, hits and misses per tier
      sentiment.tokenize             texts, windows, tokens
      sentiment.compute              this request's windows, from queueing to the last logits
        sentiment.predictor.infer    (CLIENT) one call: rows, padded tokens, model version;
          Triton's spans             Triton continues the trace from the call's `traceparent`
      sentiment.cache.write          the write-behind to Redis (after the answer)

A predictor call carries windows of several requests (the scheduler batches them). It is a child
of the first request in it that is sampled (the call's leader when it is), so that request's trace
reads straight down to Triton's compute; every other request in the call links to it and it links
back (span links both ways), so each of them finds the call its windows rode in. The
write-behind coalesces several requests' writes the same way: a child of the first, links to the
others.

Settings decides only *whether* tracing is on (`traces_exporter` from OTEL_TRACES_EXPORTER:
`otlp` = OTLP over HTTP/protobuf, `console`; OTEL_SDK_DISABLED=true wins). Everything else is read
by the OpenTelemetry SDK itself from the standard variables: that is the point of them, and the
one exception to "no module reads the environment" (OTEL_EXPORTER_OTLP_ENDPOINT and
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, _HEADERS, _TIMEOUT, _COMPRESSION; OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES; OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG; OTEL_BSP_*;
OTEL_PROPAGATORS).
"""

from __future__ import annotations

import contextlib
import logging
from contextvars import ContextVar
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping, Sequence

# The API only (light, and FastAPI imports it anyway); the SDK is imported by `setup` alone.
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from transformer.errors import CLIENT_CLOSED_STATUS

log = logging.getLogger(__name__)

SERVICE_NAME = "sentiment-transformer"  # unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) names one
EXPORTERS = ("otlp", "console")
GRPC_SERVICE = "inference.GRPCInferenceService"

tracer: Any = None  # an opentelemetry Tracer while tracing is on
_provider: Any = None
# True inside a sampled request (and the work it starts): the stages make spans only then, so a
# request the sampler left out costs its SERVER span's sampling decision and little more.
RECORDING: ContextVar[bool] = ContextVar("sentiment_tracing_recording", default=False)


# ---- set-up ----------------------------------------------------------------------------------------
def setup(exporters: Sequence[str]) -> bool:
    """Turn tracing on with these exporters (none: stay off). Returns whether it is on."""
    global tracer, _provider
    if not exporters:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER(_ARG)
    for name in exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))  # OTEL_BSP_*
    # Not the global provider: FastAPI (0.165) traces every request itself once a global one is
    # set, a second SERVER span around ours without the route. Our spans are the only ones.
    _provider = provider
    tracer = provider.get_tracer("transformer")
    log.info("tracing on: %s exporter(s), service %s, sampler %s", ", ".join(exporters),
             resource.attributes.get("service.name"), provider.sampler.get_description())
    return True


def _exporter(name: str):
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, _COMPRESSION
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    raise ValueError(f"unknown traces exporter {name!r}: use one of {', '.join(EXPORTERS)}")


# ---- the request ---------------------------------------------------------------------------------------
_PROPAGATION = ("traceparent", "tracestate", "baggage")
_PROPAGATION_BYTES = tuple(name.encode() for name in _PROPAGATION)


def _incoming(protocol: str, carrier) -> tuple[dict[str, str], str]:
    """The propagation headers of a request and its method: an ASGI scope (REST) or a gRPC
    servicer context."""
    if protocol == "rest":
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in carrier.get("headers", ())
                   if name in _PROPAGATION_BYTES}
        return headers, carrier.get("method", "")
    metadata = carrier.invocation_metadata() if carrier is not None else None
    return {key: value for key, value in metadata or () if key in _PROPAGATION and isinstance(value, str)}, ""


def start_request(protocol: str, route: str, carrier) -> tuple[Any, tuple]:
    """The request's SERVER span, continuing the client's trace, made current (and RECORDING when
    it is sampled); (span, tokens to `end_request` with)."""
    headers, method = _incoming(protocol, carrier)
    parent = propagate.extract(headers) if headers else None
    if protocol == "rest":
        name = f"{method} {route}".strip()
        attributes = {"http.request.method": method, "http.route": route, "sentiment.protocol": protocol}
    else:
        name = f"{GRPC_SERVICE}/{route}"
        attributes = {"rpc.system": "grpc", "rpc.service": GRPC_SERVICE, "rpc.method": route,
                      "sentiment.protocol": protocol}
    span = tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
    return span, (otel_context.attach(trace.set_span_in_context(span)), RECORDING.set(span.is_recording()))


def end_request(span, tokens, protocol: str, status: int, code: str | None, grpc_status: int | None) -> None:
    attributes: dict[str, Any] = {"sentiment.status": status}
    if protocol == "rest":
        attributes["http.response.status_code"] = status
    else:  # no gRPC status: OK, or CANCELLED for a client that left
        cancelled = 1 if status == CLIENT_CLOSED_STATUS else 0
        attributes["rpc.grpc.status_code"] = grpc_status if grpc_status is not None else cancelled
    if code is not None:
        attributes["error.type"] = code
    span.set_attributes(attributes)
    if status >= 500:  # a server span's 4xx is the client's error, not ours
        span.set_status(Status(StatusCode.ERROR, code or str(status)))
    span.end()
    RECORDING.reset(tokens[1])
    otel_context.detach(tokens[0])


Attributes = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


def _evaluated(attributes: Attributes | None) -> Mapping[str, Any] | None:
    return attributes() if callable(attributes) else attributes


def annotate(attributes: Attributes) -> None:
    """Attributes on the current span of a recorded request; a no-op otherwise (a function given as
    `attributes` is not even called)."""
    if RECORDING.get():
        trace.get_current_span().set_attributes(_evaluated(attributes) or {})


def recording_span():
    """The current span of a recorded request (for work done later on its behalf), else None."""
    return trace.get_current_span() if RECORDING.get() else None


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, for log lines; None outside a valid span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


# What `span` and `shared_span` return outside a recorded request: one shared context manager whose
# span (OpenTelemetry's own non-recording one) drops what it is given. Entering it is the whole cost
# of an instrumented stage when tracing is off or the request is not sampled.
_NOT_RECORDING = contextlib.nullcontext(trace.INVALID_SPAN)


def span(name: str, attributes: Attributes | None = None) -> ContextManager[Any]:
    """An INTERNAL child of the current span, current while the `with` block runs; the shared no-op
    outside a recorded request. `attributes` may be a function: it is called only when the span
    records, so attributes that take work to compute cost nothing otherwise."""
    if not RECORDING.get():
        return _NOT_RECORDING
    return tracer.start_as_current_span(name, attributes=_evaluated(attributes))


# ---- shared work: predictor calls, the write-behind --------------------------------------------------
def _distinct(spans: Iterable[Any]) -> list[Any]:
    seen: dict[int, Any] = {}
    for member in spans:
        if member is not None and id(member) not in seen:
            seen[id(member)] = member
    return list(seen.values())


def _sampled(member) -> bool:
    return member.get_span_context().trace_flags.sampled


def shared_span(name: str, requests: Iterable[Any], attributes: Attributes,
                kind: str = "INTERNAL") -> ContextManager[Any]:
    """A span for work done for several requests (each given by its span, None for one that is not
    recorded): a child of the first sampled one, linked to the others, which link back to it.
    Current while the block runs; the shared no-op when none of them is recorded."""
    members = _distinct(requests)
    if not members:
        return _NOT_RECORDING
    return _shared(name, members, _evaluated(attributes) or {}, kind)


@contextlib.contextmanager
def _shared(name: str, members: list[Any], attributes: Mapping[str, Any], kind: str) -> Iterator[Any]:
    sampled = [member for member in members if _sampled(member)]
    parent = sampled[0] if sampled else members[0]
    others = [member for member in members if member is not parent]
    links = [Link(member.get_span_context()) for member in others if member.get_span_context().is_valid]
    attributes = {**attributes, "sentiment.requests": len(members)}
    with tracer.start_as_current_span(
            name, context=trace.set_span_in_context(parent),
            kind=getattr(SpanKind, kind), links=links, attributes=attributes) as current:
        if current.is_recording():
            call = current.get_span_context()
            for member in others:
                member.add_link(call)  # a no-op on a request that is not sampled
        token = RECORDING.set(current.is_recording())
        try:
            yield current
        finally:
            RECORDING.reset(token)


def outgoing_headers() -> dict[str, str] | None:
    """`traceparent` (and `tracestate`) of the current span, to pass to Triton; None when the span is
    not sampled: Triton traces every call that carries a valid traceparent, sampled flag or not, so
    only sampled calls may carry one (then Triton's spans follow our sampler)."""

    if not trace.get_current_span().get_span_context().trace_flags.sampled:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None
