"""The one settings object of the transformer, built from flags, then environment, then defaults.

KServe's own flags (`--model_name`, `--predictor_host`, `--predictor_protocol`, `--http_port`,
`--grpc_port`, ...) come from `kserve.model_server.parser`, which the KServe controller fills in a
pod; ours extend it with the same underscore style. No other module reads the environment, with
one exception by design: tracing is switched on here (OTEL_TRACES_EXPORTER, OTEL_SDK_DISABLED), and
the OpenTelemetry SDK then reads the other standard OTEL_* variables itself (see `tracing`).
"""

from __future__ import annotations

import argparse
import os
from typing import Literal, Mapping

from pydantic import BaseModel, Field, field_validator

DEFAULT_BUNDLE = "model_repository/sentiment/1/bundle"


class Settings(BaseModel):
    """Every knob of the transformer; each has a default that works for the local stack."""

    model_config = {"frozen": True, "protected_namespaces": ()}

    model_name: str = "sentiment"
    model_bundle: str = Field(DEFAULT_BUNDLE, description="directory with bundle.json and tokenizer.json")
    predictor_host: str = Field("127.0.0.1:8001", description="Triton host:port (gRPC port for grpc-v2)")
    predictor_protocol: Literal["grpc-v2", "v2"] = "grpc-v2"
    predictor_use_ssl: bool = False
    predictor_timeout_s: float = Field(10.0, gt=0, description="per predictor call; requests never wait longer")
    predictor_check_interval_s: float = Field(1.0, gt=0, description="predictor readiness / fingerprint probe period")
    redis_url: str | None = Field(None, description="redis:// or rediss:// URL; unset -> in-process LRU")
    redis_timeout_ms: int = Field(50, gt=0, le=1000, description="socket timeout of every Redis call")
    redis_pool_size: int = Field(32, gt=0)
    cache_ttl_s: int = Field(86400, gt=0)
    cache_prefix: str = "sentiment"
    local_cache_size: int = Field(50_000, ge=0, description="entries of the in-process LRU (no Redis); about 550 B each")
    hot_cache_size: int = Field(10_000, ge=0, description="entries of the in-process tier in front of Redis; 0 = off")
    breaker_failures: int = Field(3, gt=0, description="consecutive Redis errors that open the circuit")
    breaker_reset_s: float = Field(2.0, gt=0, description="seconds the circuit stays open before a retry")
    max_texts: int = Field(256, gt=0, description="texts per request (413 above)")
    max_text_chars: int = Field(50_000, gt=0, description="characters per text (413 above); a whole review or article")
    max_request_tokens: int = Field(65_536, gt=0, description="tokens the model runs for one request's new texts (413 above)")
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0, description="request body bytes, HTTP and gRPC (413 above)")
    max_inflight: int = Field(256, gt=0, description="requests being served at once before shedding with 503")
    max_queue_wait_ms: int = Field(500, gt=0, description="shed new work (503) when its expected wait for the model is longer")
    request_timeout_s: float = Field(30.0, gt=0, description="an admitted request is answered within this (504 after)")
    body_timeout_s: float = Field(10.0, gt=0, description="a request body must arrive within this (408 after)")
    header_timeout_s: float = Field(10.0, gt=0, description="request headers must arrive within this (connection closed)")
    truncation: Literal["chunk", "head", "error"] = Field("chunk", description="default for texts over the model's window")
    window_stride: int = Field(0, ge=0, description="tokens shared by consecutive windows of a long text (measured: 0)")
    aggregation: str = Field("mean_logits", description="how a long text's windows are combined (measured: mean_logits)")
    max_batch_tokens: int = Field(512, gt=0, description="padded tokens per predictor call (rows x length)")
    max_concurrent_batches: int = Field(3, gt=0, description="predictor calls in flight at once")
    pad_to_multiple: int = Field(8, ge=1, description="pad token length to a multiple of this (Triton batches equal shapes)")
    tokenizer_threads: int = Field(1, ge=0, description="threads that tokenize off the event loop; 0 = on the loop")
    access_log: bool = Field(False, description="one log line per request (uvicorn's access log)")
    control_file: str | None = Field(None, description="on SIGHUP, switch to the bundle this JSON file names (rollout)")
    replay_sample_size: int = Field(1000, ge=0, description="recent texts kept in memory to warm and compare a new version")
    switch_timeout_s: float = Field(60.0, gt=0, description="how long a switch waits for the predictor to serve the version")
    traces_exporter: str = Field("none", description="OTEL_TRACES_EXPORTER: otlp (OTLP/HTTP protobuf) and/or console "
                                 "turn tracing on; none = off")
    prediction_log_sample_rate: float = Field(0.0, ge=0, le=1, description="fraction of answers written to the "
                                              "prediction log (JSON lines); 0 = off")
    prediction_log_text: bool = Field(False, description="put the raw text in prediction log lines (off: only its "
                                      "hashed cache key)")

    @field_validator("aggregation")
    @classmethod
    def _known_aggregation(cls, value: str) -> str:
        from transformer.core.windows import AGGREGATIONS

        if value not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}")
        return value

    @field_validator("traces_exporter")
    @classmethod
    def _known_exporters(cls, value: str) -> str:
        from transformer.tracing import EXPORTERS

        names = [name.strip().lower() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in (*EXPORTERS, "none")]
        if unknown:
            raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter(s) {', '.join(unknown)}; this service "
                             f"exports with {', '.join(EXPORTERS)} or none")
        return ",".join(name for name in names if name != "none") or "none"

    @property
    def trace_exporters(self) -> tuple[str, ...]:
        """The exporters tracing uses; empty: tracing is off."""
        return () if self.traces_exporter == "none" else tuple(self.traces_exporter.split(","))

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value


def _boolean(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


# (field, flag, environment variable, type)
_SOURCES: list[tuple[str, str, str, type]] = [
    ("model_bundle", "--model_bundle", "MODEL_BUNDLE", str),
    ("predictor_timeout_s", "--predictor_timeout", "PREDICTOR_TIMEOUT_SECONDS", float),
    ("predictor_check_interval_s", "--predictor_check_interval", "PREDICTOR_CHECK_INTERVAL_SECONDS", float),
    ("redis_url", "--redis_url", "REDIS_URL", str),
    ("redis_timeout_ms", "--redis_timeout_ms", "REDIS_TIMEOUT_MS", int),
    ("redis_pool_size", "--redis_pool_size", "REDIS_POOL_SIZE", int),
    ("cache_ttl_s", "--cache_ttl", "CACHE_TTL_SECONDS", int),
    ("cache_prefix", "--cache_prefix", "CACHE_PREFIX", str),
    ("local_cache_size", "--local_cache_size", "LOCAL_CACHE_SIZE", int),
    ("hot_cache_size", "--hot_cache_size", "HOT_CACHE_SIZE", int),
    ("breaker_failures", "--breaker_failures", "CACHE_BREAKER_FAILURES", int),
    ("breaker_reset_s", "--breaker_reset", "CACHE_BREAKER_RESET_SECONDS", float),
    ("max_texts", "--max_texts", "MAX_TEXTS_PER_REQUEST", int),
    ("max_text_chars", "--max_text_chars", "MAX_TEXT_CHARS", int),
    ("max_body_bytes", "--max_body_bytes", "MAX_BODY_BYTES", int),
    ("max_request_tokens", "--max_request_tokens", "MAX_REQUEST_TOKENS", int),
    ("max_inflight", "--max_inflight", "MAX_INFLIGHT_REQUESTS", int),
    ("max_queue_wait_ms", "--max_queue_wait_ms", "MAX_QUEUE_WAIT_MS", int),
    ("request_timeout_s", "--request_timeout", "REQUEST_TIMEOUT_SECONDS", float),
    ("body_timeout_s", "--body_timeout", "BODY_TIMEOUT_SECONDS", float),
    ("header_timeout_s", "--header_timeout", "HEADER_TIMEOUT_SECONDS", float),
    ("truncation", "--truncation", "TRUNCATION", str),
    ("window_stride", "--window_stride", "WINDOW_STRIDE", int),
    ("aggregation", "--aggregation", "AGGREGATION", str),
    ("max_batch_tokens", "--max_batch_tokens", "MAX_BATCH_TOKENS", int),
    ("max_concurrent_batches", "--max_concurrent_batches", "MAX_CONCURRENT_BATCHES", int),
    ("pad_to_multiple", "--pad_to_multiple", "PAD_TO_MULTIPLE", int),
    ("tokenizer_threads", "--tokenizer_threads", "TOKENIZER_THREADS", int),
    ("access_log", "--access_log", "ACCESS_LOG", _boolean),
    ("control_file", "--control_file", "CONTROL_FILE", str),
    ("replay_sample_size", "--replay_sample_size", "REPLAY_SAMPLE_SIZE", int),
    ("switch_timeout_s", "--switch_timeout", "SWITCH_TIMEOUT_SECONDS", float),
    ("prediction_log_sample_rate", "--prediction_log_sample_rate", "PREDICTION_LOG_SAMPLE_RATE", float),
    ("prediction_log_text", "--prediction_log_text", "PREDICTION_LOG_TEXT", _boolean),
]
# OpenTelemetry's standard variables that decide whether tracing is on (environment only, no flag).
TRACES_EXPORTER_ENV = "OTEL_TRACES_EXPORTER"
SDK_DISABLED_ENV = "OTEL_SDK_DISABLED"
# KServe's flags we also read, with the environment variable that may stand in for them.
_KSERVE_SOURCES: list[tuple[str, str, str]] = [
    ("model_name", "model_name", "MODEL_NAME"),
    ("predictor_host", "predictor_host", "PREDICTOR_HOST"),
    ("predictor_protocol", "predictor_protocol", "PREDICTOR_PROTOCOL"),
    ("predictor_use_ssl", "predictor_use_ssl", "PREDICTOR_USE_SSL"),
]


def environment_variables() -> frozenset[str]:
    """Every environment variable the transformer reads itself (the OpenTelemetry SDK reads the other
    OTEL_* ones): what a manifest may set (tests/deploy/test_container_image.py checks it)."""
    return frozenset([env for _field, _flag, env, _kind in _SOURCES] + [env for _field, _flag, env in _KSERVE_SOURCES]
                     + [TRACES_EXPORTER_ENV, SDK_DISABLED_ENV])


def build_parser() -> argparse.ArgumentParser:
    """KServe's model-server parser extended with the transformer's flags (all default to None)."""
    from kserve.model_server import parser as kserve_parser

    parser = argparse.ArgumentParser(
        prog="python -m transformer", parents=[kserve_parser],
        description="Sentiment transformer: tokenization, per-text cache, KServe V1/V2 and /project routes.",
    )
    for field_name, flag, env, kind in _SOURCES:
        description = Settings.model_fields[field_name].description or ""
        parser.add_argument(flag, dest=field_name, type=kind, default=None,
                            help=f"{description} [env {env}; default {Settings.model_fields[field_name].default}]")
    # None = "not given": the environment, then our defaults, fill in. Per-request latency log lines
    # cost CPU on the hot path, so they are off unless asked for.
    parser.set_defaults(model_name=None, predictor_host=None, predictor_protocol=None, enable_latency_logging=False)
    return parser


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Merge: explicit flag > environment variable > default."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for field_name, _flag, env, _kind in _SOURCES:
        value = getattr(args, field_name, None)
        if value is None and environ.get(env) not in (None, ""):
            value = environ[env]
        if value is not None:
            values[field_name] = value
    for field_name, attribute, env in _KSERVE_SOURCES:
        value = getattr(args, attribute, None)
        if value is None or (attribute == "predictor_use_ssl" and value is False):
            value = environ.get(env) or None
        if value is not None:
            values[field_name] = value
    if environ.get(TRACES_EXPORTER_ENV):
        values["traces_exporter"] = environ[TRACES_EXPORTER_ENV]
    if environ.get(SDK_DISABLED_ENV, "").strip().lower() == "true":
        values["traces_exporter"] = "none"
    if values.get("predictor_protocol") == "v1":
        raise ValueError("--predictor_protocol v1 is not supported: Triton speaks v2 (use grpc-v2 or v2)")
    return Settings(**values)
