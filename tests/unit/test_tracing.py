"""Tracing and the JSON logs, the pure parts: settings, shared spans of batched predictor calls,
what goes to Triton, the OTLP receiver's decoding and the span tree, the log lines."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from sentiment.model.build import default_base
from sentiment.paths import REPO_ROOT
from sentiment.stack import traces
from transformer import logs, tracing
from transformer.core.prediction import Prediction
from transformer.core.scheduler import BatchScheduler
from transformer.core.tokenization import TextEncoder
from transformer.settings import Settings, build_parser, settings_from


@pytest.fixture
def spans():
    """Tracing on, spans kept in memory (and off again afterwards)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.tracer = provider.get_tracer("test")
    yield exporter
    tracing.tracer = None
    provider.shutdown()


# ---- settings: off by default, the standard variables turn it on ----------------------------------
def _settings(environ: dict) -> Settings:
    return settings_from(build_parser().parse_args([]), environ)


def test_tracing_is_off_unless_an_exporter_is_named():
    assert _settings({}).trace_exporters == ()
    assert _settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}).trace_exporters == ()
    assert _settings({"OTEL_TRACES_EXPORTER": "none"}).trace_exporters == ()
    assert _settings({"OTEL_TRACES_EXPORTER": "otlp"}).trace_exporters == ("otlp",)
    assert _settings({"OTEL_TRACES_EXPORTER": "OTLP, console"}).trace_exporters == ("otlp", "console")
    assert _settings({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}).trace_exporters == ()
    with pytest.raises(ValueError, match="zipkin"):
        _settings({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_prediction_log_settings_are_off_by_default_and_bounded():
    settings = _settings({})
    assert settings.prediction_log_sample_rate == 0 and settings.prediction_log_text is False
    on = _settings({"PREDICTION_LOG_SAMPLE_RATE": "0.01", "PREDICTION_LOG_TEXT": "true"})
    assert on.prediction_log_sample_rate == 0.01 and on.prediction_log_text is True
    with pytest.raises(ValueError):
        _settings({"PREDICTION_LOG_SAMPLE_RATE": "1.5"})


def test_with_tracing_off_no_sdk_is_loaded_and_no_exporter_configured():
    code = (
        "import sys; from transformer import tracing, logs; "
        "from transformer.settings import build_parser, settings_from;"
        "s = settings_from(build_parser().parse_args([]), {'OTEL_EXPORTER_OTLP_ENDPOINT': 'http://127.0.0.1:9'});"
        "print(tracing.setup(s.trace_exporters), tracing.tracer, 'opentelemetry.sdk' in sys.modules,"
        " any(m.startswith('opentelemetry.exporter') for m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "None", "False", "False"]


def test_tracing_on_sets_up_the_otlp_exporter_from_the_standard_variables():
    code = ("from transformer import tracing; print(tracing.setup(('otlp',)));"
            "p = tracing._provider; e = p._active_span_processor._span_processors[0]._batch_processor._exporter;"
            "print(type(e).__name__, e._endpoint, p.resource.attributes['service.name'], p.sampler.get_description())")
    environ = {"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
               "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
                            env=environ)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "True"
    assert lines[1].startswith("OTLPSpanExporter http://127.0.0.1:9/v1/traces sentiment-transformer ParentBased")
    assert "0.25" in lines[1]


# ---- a predictor call shared by several requests --------------------------------------------------
class GatedPredictor:
    """Holds every call until released; records the traceparent each call would send."""

    protocol = "grpc-v2"
    version = "3"

    def __init__(self):
        self.gate = asyncio.Event()
        self.sent: list[dict | None] = []

    async def infer(self, inputs):
        self.sent.append(tracing.outgoing_headers() if tracing.RECORDING.get() else None)
        await self.gate.wait()
        rows = inputs["input_ids"].shape[0]
        return np.zeros((rows, 2), dtype=np.float32)


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(default_base() / "tokenizer.json", 64, True, pad_to_multiple_of=8)


@contextlib.contextmanager
def sampled_request(name: str):
    """A span made current the way a sampled request's is (RECORDING set)."""
    with tracing.tracer.start_as_current_span(name) as span:
        token = tracing.RECORDING.set(span.is_recording())
        try:
            yield span
        finally:
            tracing.RECORDING.reset(token)


def _by_name(exporter, name):
    return [span for span in exporter.get_finished_spans() if span.name == name]


def test_a_call_shared_by_requests_is_a_child_of_the_first_and_linked_both_ways(spans, encoder):
    predictor = GatedPredictor()
    scheduler = BatchScheduler(predictor, encoder, max_rows=8, max_batch_tokens=512, max_concurrent=1)

    async def request(name: str, texts: list[str]):
        with sampled_request(name):
            encodings = [w for text in encoder.windows(texts) for w in text.windows]
            return await asyncio.gather(*scheduler.submit(encodings))

    async def scenario():
        first = asyncio.ensure_future(request("first", ["a call of its own"]))
        await asyncio.sleep(0.01)  # its call is in flight; the next two queue and share one call
        second = asyncio.ensure_future(request("second", ["two"]))
        third = asyncio.ensure_future(request("third", ["three"]))
        await asyncio.sleep(0.01)
        predictor.gate.set()
        await asyncio.gather(first, second, third)

    asyncio.run(scenario())
    calls = _by_name(spans, "sentiment.predictor.infer")
    assert len(calls) == 2
    second, third = _by_name(spans, "second")[0], _by_name(spans, "third")[0]
    shared = next(call for call in calls if call.attributes["sentiment.requests"] == 2)
    assert shared.parent.span_id == second.context.span_id
    assert shared.context.trace_id == second.context.trace_id
    assert [link.context.span_id for link in shared.links] == [third.context.span_id]
    assert [link.context.span_id for link in third.links] == [shared.context.span_id]
    assert shared.attributes["sentiment.batch.rows"] == 2
    assert shared.attributes["sentiment.model.version"] == "3"
    assert shared.attributes["sentiment.batch.padded_tokens"] == 2 * 8
    assert shared.kind.name == "CLIENT"
    # Each call sent its own span as the parent of Triton's spans.
    assert all(headers and headers["traceparent"].split("-")[1] == f"{call.context.trace_id:032x}"
               for headers, call in zip(predictor.sent, sorted(calls, key=lambda c: c.start_time)))


def test_a_call_led_by_an_unsampled_request_belongs_to_the_sampled_one(spans, encoder):
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    predictor = GatedPredictor()
    scheduler = BatchScheduler(predictor, encoder, max_rows=8, max_batch_tokens=512, max_concurrent=1)
    unsampled = NonRecordingSpan(SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(0)))

    async def scenario():
        blocker = scheduler.submit([w for t in encoder.windows(["in flight first"]) for w in t.windows])
        with trace.use_span(unsampled):  # the leader of the next call: it came first (not RECORDING)
            not_sampled = scheduler.submit([w for t in encoder.windows(["not sampled"]) for w in t.windows])
        with sampled_request("sampled"):
            sampled = scheduler.submit([w for t in encoder.windows(["sampled"]) for w in t.windows])
        await asyncio.sleep(0.01)
        predictor.gate.set()
        await asyncio.gather(*blocker, *not_sampled, *sampled)

    asyncio.run(scenario())
    # The call's leader was not sampled: its windows carry no span; the call is the sampled request's.
    (call,) = _by_name(spans, "sentiment.predictor.infer")
    assert call.parent.span_id == _by_name(spans, "sampled")[0].context.span_id
    assert call.attributes["sentiment.batch.rows"] == 2 and call.attributes["sentiment.requests"] == 1
    assert (
        predictor.sent[0] is None and predictor.sent[1]["traceparent"].split("-")[2] == f"{call.context.span_id:016x}"
    )


def test_only_sampled_calls_carry_a_traceparent(spans):
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    with tracing.tracer.start_as_current_span("sampled") as span:
        headers = tracing.outgoing_headers()
    assert headers["traceparent"].startswith(f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-")
    with trace.use_span(NonRecordingSpan(SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(0)))):
        assert tracing.outgoing_headers() is None


def test_the_request_span_continues_the_clients_trace(spans):
    traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    scope = {"method": "POST", "headers": [(b"content-type", b"application/json"), (b"traceparent", traceparent)]}
    span, tokens = tracing.start_request("rest", "/project/bulk-predict", scope)
    assert tracing.current_ids() == ("0af7651916cd43dd8448eb211c80319c", f"{span.context.span_id:016x}")
    assert tracing.RECORDING.get() is True
    tracing.end_request(span, tokens, "rest", 503, "overloaded", None)
    assert tracing.RECORDING.get() is False
    finished = spans.get_finished_spans()[0]
    assert finished.name == "POST /project/bulk-predict"
    assert finished.parent.span_id == 0xb7ad6b7169203331 and finished.parent.is_remote
    assert finished.attributes["http.response.status_code"] == 503
    assert finished.attributes["error.type"] == "overloaded"
    assert finished.status.status_code.name == "ERROR"
    assert tracing.current_ids() is None


# ---- the JSON log lines ---------------------------------------------------------------------------
@pytest.fixture
def log_lines():
    stream = io.StringIO()
    logs.install_handler(stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logs.log.handlers = []
    logs.log.propagate = True


def test_an_error_answer_is_one_json_line_and_a_shed_request_says_so(log_lines, spans):
    import time

    logs.error_answer(
        "grpc", "ModelInfer", 422, "invalid_request", "text[0] is int, expected a string", time.perf_counter()
    )
    with tracing.tracer.start_as_current_span("request") as span:
        logs.error_answer("rest", "/project/bulk-predict", 503, "overloaded", "the model is busy", time.perf_counter())
    logs.error_answer("rest", "/project/bulk-predict", 499, None, None, time.perf_counter())  # no answer, no line
    first, shed = log_lines()
    assert first["event"] == "error_answer" and first["level"] == "warning" and first["status"] == 422
    assert first["code"] == "invalid_request" and "trace_id" not in first
    assert shed["level"] == "error" and shed["shed"] is True
    assert shed["trace_id"] == f"{span.context.trace_id:032x}" and shed["span_id"] == f"{span.context.span_id:016x}"
    assert set(shed) == {"time", "level", "event", "protocol", "route", "status", "code", "message", "duration_ms",
                         "shed", "trace_id", "span_id"}


def test_the_prediction_log_samples_and_keeps_the_text_out_unless_asked(log_lines):
    import time

    labels = ["NEGATIVE", "POSITIVE"]
    cached = {"sentiment:abc:h128:" + "1" * 64: Prediction.of([0.1, 0.9], labels)}
    computed = {"sentiment:abc:h128:" + "2" * 64: Prediction.of([0.8, 0.2], labels)}
    draws = iter([0.0, 0.9])  # the first answer is sampled, the second not
    logs.PredictionLog(0.5, False, labels, "2", chance=lambda: next(draws)).record(
        time.perf_counter(), (("cache", cached), ("model", computed)), {"x": "secret"})
    logs.PredictionLog(1.0, True, labels, "2").record(time.perf_counter(), (("model", computed),),
                                                      {next(iter(computed)): "i hated it"})
    plain, with_text = log_lines()
    assert plain["event"] == "prediction" and plain["source"] == "cache" and plain["label"] == "POSITIVE"
    assert plain["score"] == pytest.approx(0.9) and plain["version"] == "2" and plain["key"] == next(iter(cached))
    assert "text" not in plain and plain["latency_ms"] >= 0
    assert with_text["text"] == "i hated it" and with_text["source"] == "model" and with_text["label"] == "NEGATIVE"


# ---- the local receiver: decoding, the file, the tree ---------------------------------------------------
def _export_request(trace_id: bytes, spans_: list[tuple[bytes, bytes, str]]) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    resource.resource.attributes.add(key="service.name").value.string_value = "svc"
    scope = resource.scope_spans.add()
    for start, (span_id, parent, name) in enumerate(spans_):
        span = scope.spans.add(trace_id=trace_id, span_id=span_id, parent_span_id=parent, name=name, kind=2,
                               start_time_unix_nano=1_000_000 * (start + 1), end_time_unix_nano=1_000_000 * (start + 3))
        attribute = span.attributes.add(key="sentiment.texts")
        attribute.value.int_value = 2
    return request.SerializeToString()


def test_protobuf_and_tritons_hex_json_decode_to_the_same_spans():
    trace_id, root, child = bytes.fromhex("0af7651916cd43dd8448eb211c80319c"), bytes(range(1, 9)), bytes(range(11, 19))
    decoded = traces.decode_request(_export_request(trace_id, [(root, b"", "root"), (child, root, "child")]))
    assert [(s["name"], s["trace_id"], s["parent_span_id"]) for s in decoded] == [
        ("root", trace_id.hex(), ""), ("child", trace_id.hex(), root.hex())]
    assert decoded[0]["service"] == "svc" and decoded[0]["attributes"] == {"sentiment.texts": 2}
    assert decoded[0]["kind"] == "SERVER" and decoded[0]["duration_ms"] == 2.0
    # Triton's exporter sends OTLP JSON with hex ids (protobuf's JSON mapping would want base64).
    triton_json = json.dumps({"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "triton"}}]}, "scopeSpans": [{"spans": [
            {"traceId": trace_id.hex(), "spanId": child.hex(), "parentSpanId": root.hex(), "name": "InferRequest",
             "kind": 2, "startTimeUnixNano": "5", "endTimeUnixNano": "9"}]}]}]}).encode()
    (span,) = traces.decode_request(triton_json, "application/json")
    assert (span["trace_id"], span["span_id"], span["parent_span_id"]) == (trace_id.hex(), child.hex(), root.hex())
    assert span["service"] == "triton"


def test_the_receiver_takes_a_real_exporters_spans_and_the_tree_shows_them(tmp_path):
    import threading

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from sentiment.stack.processes import free_port

    path = tmp_path / traces.TRACES_FILE
    receiver = traces.OtlpHttpReceiver(free_port(), path)
    thread = threading.Thread(target=receiver.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        provider = TracerProvider(resource=Resource({"service.name": "unit"}))
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint + traces.TRACES_PATH))
        )
        tracer = provider.get_tracer("t")
        with tracer.start_as_current_span("request", attributes={"http.route": "/x"}) as root:
            with tracer.start_as_current_span("sentiment.cache.lookup", attributes={"sentiment.cache.hits": 1}):
                pass
        provider.shutdown()
    finally:
        receiver.shutdown()
        receiver.server_close()
    written = traces.read_spans(path)
    assert {span["name"] for span in written} == {"request", "sentiment.cache.lookup"}
    trace_id = f"{root.context.trace_id:032x}"
    out = io.StringIO()
    assert traces.show_trace(path, trace_id, out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == f"trace {trace_id}"
    assert "request [unit] http.route=/x" in lines[1]
    assert lines[2].endswith(" sentiment.cache.lookup [unit] cache.hits=1")
    assert lines[2].index("sentiment.cache.lookup") == lines[1].index("request") + 2  # indented under its parent


def test_a_span_whose_parent_is_elsewhere_is_a_root_of_the_tree():
    spans_ = [
        {"span_id": "b", "parent_span_id": "a", "start_ns": 2},
        {"span_id": "c", "parent_span_id": "b", "start_ns": 3},
    ]
    (root,) = traces.span_tree(spans_)
    assert root.span["span_id"] == "b" and [child.span["span_id"] for child in root.children] == ["c"]


def test_the_error_logger_keeps_kserves_format_out(log_lines):
    assert logs.log.propagate is False and isinstance(logs.log.handlers[0].formatter, logging.Formatter)
    assert logs.log.handlers[0].formatter._fmt == "%(message)s"
