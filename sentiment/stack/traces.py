"""The local trace backend: an OTLP/HTTP receiver that writes spans as JSON lines, and their reader.

No trace backend (Jaeger, Tempo, an OpenTelemetry Collector) installs from PyPI, Debian or npm
here, so `sentiment up --with-tracing` runs this receiver: the transformer's exporter and Triton's
OpenTelemetry tracer both POST `ExportTraceServiceRequest`s to `http://127.0.0.1:PORT/v1/traces`
(protobuf, or OTLP JSON), decoded with `opentelemetry-proto`, one span per line in `traces.jsonl`:

    {"trace_id", "span_id", "parent_span_id", "name", "kind", "service", "start_ns", "end_ns",
     "duration_ms", "status", "attributes", "events", "links"}

`sentiment traces` prints the span tree of one trace (the latest, or `--trace ID`).
"""

from __future__ import annotations

import base64
import gzip
import json
import sys
import threading
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterable, Iterator

from sentiment.stack.processes import ManagedProcess, http_ok

TRACES_FILE = "traces.jsonl"
TRACES_PATH = "/v1/traces"
MAX_BODY_BYTES = 32 << 20
_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


# ---- decoding (pure) ------------------------------------------------------------------------------
def _value(any_value):
    """An OTLP AnyValue as plain JSON."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    value = getattr(any_value, kind)
    if kind == "array_value":
        return [_value(item) for item in value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in value.values}
    if kind == "bytes_value":
        return value.hex()
    return value


def _attributes(key_values) -> dict:
    return {item.key: _value(item.value) for item in key_values}


_ID_FIELDS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}


def _ids_as_base64(node):
    """OTLP JSON writes trace and span ids in hex (Triton's exporter does), where protobuf's JSON
    mapping expects base64: convert them before parsing."""
    if isinstance(node, list):
        return [_ids_as_base64(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {}
    for key, value in node.items():
        size = _ID_FIELDS.get(key)
        if size is not None and isinstance(value, str) and len(value) == 2 * size:
            try:
                value = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                pass  # not hex: already base64
        converted[key] = _ids_as_base64(value)
    return converted


def decode_request(body: bytes, content_type: str = "application/x-protobuf") -> list[dict]:
    """The spans of one ExportTraceServiceRequest (protobuf or OTLP JSON), flattened."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    if "json" in content_type:
        json_format.ParseDict(_ids_as_base64(json.loads(body)), request, ignore_unknown_fields=True)
    else:
        request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append({
                    "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(), "name": span.name,
                    "kind": _KINDS.get(span.kind, str(span.kind)),
                    "service": resource.get("service.name", ""), "scope": scope_spans.scope.name,
                    "start_ns": span.start_time_unix_nano, "end_ns": span.end_time_unix_nano,
                    "duration_ms": round((span.end_time_unix_nano - span.start_time_unix_nano) / 1e6, 3),
                    "status": _STATUS.get(span.status.code, str(span.status.code)),
                    "status_message": span.status.message,
                    "attributes": _attributes(span.attributes),
                    "events": [{"name": event.name, "time_ns": event.time_unix_nano,
                                "attributes": _attributes(event.attributes)} for event in span.events],
                    "links": [{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex(),
                               "attributes": _attributes(link.attributes)} for link in span.links],
                })
    return spans


def _inflate(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


# ---- the receiver ---------------------------------------------------------------------------------
class SpanFile:
    """Appends spans as JSON lines; one writer, many request threads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, spans: Iterable[dict]) -> None:
        lines = "".join(json.dumps(span, separators=(",", ":")) + "\n" for span in spans)
        with self._lock, self.path.open("a") as out:
            out.write(lines)


class _Handler(BaseHTTPRequestHandler):
    server: "OtlpHttpReceiver"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(200 if self.path == "/health" else 404, b"{}", "application/json")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("content-length") or 0)
        if self.path != TRACES_PATH or not 0 <= length <= MAX_BODY_BYTES:
            self.rfile.read(min(length, MAX_BODY_BYTES))
            return self._answer(404 if self.path != TRACES_PATH else 413, b"{}", "application/json")
        content_type = self.headers.get("content-type", "application/x-protobuf")
        try:
            body = _inflate(self.rfile.read(length), self.headers.get("content-encoding", ""))
            spans = decode_request(body, content_type)
        except Exception as error:  # noqa: BLE001 - a bad export is the sender's problem, answered 400
            return self._answer(400, json.dumps({"error": str(error)}).encode(), "application/json")
        self.server.spans.write(spans)
        if "json" in content_type:
            return self._answer(200, b"{}", "application/json")
        self._answer(200, b"", "application/x-protobuf")  # an empty ExportTraceServiceResponse

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:  # one line per export would drown the log
        pass


class OtlpHttpReceiver(ThreadingHTTPServer):
    """OTLP/HTTP on host:port: POST /v1/traces appends the spans to `path`; GET /health answers 200."""

    daemon_threads = True

    def __init__(self, port: int, path: Path, host: str = "127.0.0.1"):
        super().__init__((host, port), _Handler)
        self.spans = SpanFile(path)

    @property
    def endpoint(self) -> str:
        """The OTLP/HTTP base endpoint (OTEL_EXPORTER_OTLP_ENDPOINT); traces go to endpoint + /v1/traces."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def receiver_process(port: int, path: Path, log_file: Path, python: str = sys.executable) -> ManagedProcess:
    """The receiver as a child process of the stack, not yet started; ready once /health answers."""
    command = [python, "-m", "sentiment.stack.traces", "--port", str(port), "--file", str(path)]
    return ManagedProcess("traces", command, log_file, ready=lambda: http_ok(f"http://127.0.0.1:{port}/health"),
                          ready_timeout_s=20)


# ---- reading ----------------------------------------------------------------------------------------
def read_spans(path: Path) -> list[dict]:
    """Every span in a traces file (a line cut by a crash is skipped)."""
    spans = []
    with Path(path).open() as lines:
        for line in lines:
            try:
                spans.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return spans


def traces(spans: Iterable[dict]) -> dict[str, list[dict]]:
    """trace id -> its spans, by start time."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    for span in spans:
        grouped[span["trace_id"]].append(span)
    return {trace_id: sorted(members, key=lambda s: s["start_ns"]) for trace_id, members in grouped.items()}


@dataclass
class SpanNode:
    span: dict
    children: list["SpanNode"]


def span_tree(spans: list[dict]) -> list[SpanNode]:
    """The roots of one trace's spans (a span whose parent is not in the trace is a root too)."""
    nodes = {span["span_id"]: SpanNode(span, []) for span in spans}
    roots = []
    for node in sorted(nodes.values(), key=lambda n: n.span["start_ns"]):
        parent = nodes.get(node.span["parent_span_id"])
        (parent.children if parent is not None else roots).append(node)
    return roots


_SHOWN = ("http.route", "http.response.status_code", "rpc.method", "rpc.grpc.status_code", "sentiment.")


def _shown_attributes(attributes: dict) -> str:
    kept = {k: v for k, v in attributes.items() if k.startswith(_SHOWN)}
    return " ".join(f"{k.removeprefix('sentiment.')}={v}" for k, v in kept.items())


def render_tree(spans: list[dict]) -> Iterator[str]:
    """One line per span, indented under its parent: offset from the trace's start, duration, name,
    service, the span's own attributes."""
    if not spans:
        return
    origin = min(span["start_ns"] for span in spans)

    def lines(node: SpanNode, depth: int) -> Iterator[str]:
        span = node.span
        status = " ERROR" if span["status"] == "ERROR" else ""
        links = f" links={len(span['links'])}" if span.get("links") else ""
        yield (
            f"{(span['start_ns'] - origin) / 1e6:8.2f} ms {span['duration_ms']:8.2f} ms  {'  ' * depth}{span['name']}"
            f" [{span['service']}]{status} {_shown_attributes(span['attributes'])}{links}"
        ).rstrip()
        for child in node.children:
            yield from lines(child, depth + 1)

    for root in span_tree(spans):
        yield from lines(root, 0)


def show_trace(path: Path, trace_id: str | None = None, out=sys.stdout) -> int:
    """`sentiment traces`: the tree of one trace (default: the one whose root started last)."""
    if not Path(path).exists():
        print(f"no traces file at {path}: start the stack with `sentiment up --with-tracing` and send a request",
              file=sys.stderr)
        return 1
    grouped = traces(read_spans(path))
    if not grouped:
        print(f"{path} has no spans yet", file=sys.stderr)
        return 1
    if trace_id is None:
        trace_id = max(grouped, key=lambda t: grouped[t][0]["start_ns"])
    elif trace_id not in grouped:
        print(f"trace {trace_id} is not in {path}", file=sys.stderr)
        return 1
    print(f"trace {trace_id}", file=out)
    for line in render_tree(grouped[trace_id]):
        print(line, file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m sentiment.stack.traces --port P --file F`: run the receiver until SIGTERM."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="OTLP/HTTP receiver writing spans as JSON lines")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    receiver = OtlpHttpReceiver(args.port, Path(args.file), args.host)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=receiver.shutdown).start())
    print(f"{time.strftime('%H:%M:%S')} OTLP/HTTP receiver on {receiver.endpoint}{TRACES_PATH}, spans -> {args.file}",
          flush=True)
    receiver.serve_forever(poll_interval=0.2)
    receiver.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
