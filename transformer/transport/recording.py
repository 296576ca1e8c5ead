"""What every transport records of a request, once: its metrics (protocol, route, status), the JSON
log line of an error answer, its span (tracing on), the route names of probes and scrapes, the
model-name check and the unhandled-error answer. The core never sees any of it.

`with track("rest", "/project/bulk-predict", scope) as record: ...; record.status = 200`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from transformer import logs, metrics, tracing
from transformer.errors import CLIENT_CLOSED_STATUS, ModelNotFound, ServiceError, echo

# Probes and scrapes: answered many times a minute, a "not ready" 503 is their normal answer. They are
# counted like every request, but neither traced nor logged as error answers.
PROBE_ROUTES = frozenset({"/project/health", "/project/live", "/v2/health", "/metrics",
                          "ServerLive", "ServerReady", "ModelReady"})


@dataclass(slots=True)
class RequestRecord:
    """One request's metric labels; the transport sets `status` before the record closes, and
    `code`/`message` for an error answer (`fail`)."""

    protocol: str
    route: str
    started: float
    status: int = 500
    code: str | None = None
    message: str | None = None
    grpc_status: int | None = None  # gRPC: the status code's number, for the span

    def fail(self, error: ServiceError) -> None:
        self.status = error.status_code
        self.code = error.code
        self.message = error.message
        if self.protocol == "grpc":
            self.grpc_status = error.kind.grpc_status.value[0]

    def fail_unhandled(self) -> None:
        """An error no code of ours raised on purpose: a plain 500 (the stack trace goes to the log only)."""
        self.fail(ServiceError("unhandled error (its stack trace is logged)"))


class _Tracked:
    __slots__ = ("record",)

    def __init__(self, record: RequestRecord):
        self.record = record

    def __enter__(self) -> RequestRecord:
        return self.record

    def __exit__(self, kind, error, _traceback) -> None:
        record = self.record
        if kind is not None and issubclass(kind, asyncio.CancelledError):
            record.status = CLIENT_CLOSED_STATUS  # the client went away (gRPC cancel, REST disconnect)
        metrics.REQUESTS.labels(protocol=record.protocol, route=record.route, status=str(record.status)).inc()
        metrics.REQUEST_LATENCY.labels(protocol=record.protocol, route=record.route).observe(
            time.perf_counter() - record.started)
        if record.status >= 400 and record.route not in PROBE_ROUTES:
            logs.error_answer(record.protocol, record.route, record.status, record.code, record.message, record.started)


class _TracedRequest(_Tracked):
    """`_Tracked` with the request's span current between enter and exit (tracing on)."""

    __slots__ = ("carrier", "span", "tokens")

    def __init__(self, record: RequestRecord, carrier):
        super().__init__(record)
        self.carrier = carrier

    def __enter__(self) -> RequestRecord:
        self.span, self.tokens = tracing.start_request(self.record.protocol, self.record.route, self.carrier)
        return self.record

    def __exit__(self, kind, error, traceback) -> None:
        try:
            super().__exit__(kind, error, traceback)  # the error line, inside the span: it carries its ids
        finally:
            record = self.record
            tracing.end_request(self.span, self.tokens, record.protocol, record.status, record.code, record.grpc_status)


def track(protocol: str, route: str, carrier=None) -> _Tracked:
    """The record of one request, closed (counted, logged, its span ended) when the block ends.
    `carrier`: where a client's trace context comes from (the ASGI scope; the gRPC servicer context)."""
    record = RequestRecord(protocol, route, time.perf_counter())
    if tracing.tracer is None or route in PROBE_ROUTES:
        return _Tracked(record)
    return _TracedRequest(record, carrier)


def check_model(name: str | None, version: str | None, model_name: str, served_version: str) -> None:
    """A request names this model (None: its route names none) and, if it names one, the served version."""
    if name is not None and name != model_name:
        raise ModelNotFound(f"model '{echo(name)}' is not served here; this server serves '{model_name}'")
    if version and version != served_version:
        raise ModelNotFound(f"version '{echo(version)}' of model '{model_name}' is not served here; "
                            f"this server serves version {served_version}")
