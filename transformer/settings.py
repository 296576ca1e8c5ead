"""The one settings object of the transformer, built from flags, then environment, then defaults.

Each setting is declared once, as a field of `Settings`: its type, default, bounds and the line that
documents it. Its flag and environment variable follow from its name: `--name` and `NAME`, where a
trailing `_s` (seconds) is dropped from the flag and spelled `_SECONDS` in the variable
(`predictor_timeout_s`: `--predictor_timeout`, `PREDICTOR_TIMEOUT_SECONDS`). A setting whose variable
was once named otherwise keeps reading that name too (`earlier=`). The settings table of
docs/configuration.md is generated from the same fields (`python -m transformer.settings`), and a
test holds the page to it.

KServe's own flags (`--model_name`, `--predictor_host`, `--predictor_protocol`, `--http_port`,
`--grpc_port`, ...) come from `kserve.model_server.parser`, which the KServe controller fills in a
pod; ours extend it with the same underscore style. No other module reads the environment, with
one exception by design: tracing is switched on here (OTEL_TRACES_EXPORTER, OTEL_SDK_DISABLED), and
the OpenTelemetry SDK then reads the other standard OTEL_* variables itself (see `tracing`).
"""

from __future__ import annotations

import argparse
import os
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any, Callable, Literal, Mapping

from pydantic import BaseModel, field_validator
from pydantic import Field as _Field
from pydantic.fields import FieldInfo

DEFAULT_BUNDLE = "model_repository/sentiment/1/bundle"


def setting(default: Any, doc: str, *, earlier: tuple[str, ...] = (), kserve: bool = False,
            env: str | None = None, **bounds: Any) -> Any:
    """A setting's one declaration: its default, the line that documents it, pydantic's bounds
    (`gt`, `ge`, `le`); `earlier`: environment variables it was read from before (still read);
    `kserve`: KServe's parser declares its flag; `env`: a variable of another standard, and no flag."""
    return _Field(default, description=doc, json_schema_extra={"earlier": list(earlier), "kserve": kserve,
                                                                "env": env}, **bounds)


class Settings(BaseModel):
    """Every knob of the transformer; each has a default that works for the local stack."""

    model_config = {"frozen": True, "protected_namespaces": ()}

    model_name: str = setting("sentiment", "model name on the routes; must equal the Triton model name",
                              kserve=True)
    predictor_host: str = setting("127.0.0.1:8001", "Triton `host:port` (its gRPC port for `grpc-v2`, HTTP port "
                                  "for `v2`)", kserve=True)
    predictor_protocol: Literal["grpc-v2", "v2"] = setting("grpc-v2", "`grpc-v2` or `v2` (REST)", kserve=True)
    predictor_use_ssl: bool = setting(False, "TLS to the predictor", kserve=True)
    model_bundle: str = setting(DEFAULT_BUNDLE, "directory with `bundle.json` and `tokenizer.json`; the bundle "
                                "names the model version every predictor call asks for")
    predictor_timeout_s: float = setting(10.0, "limit of one predictor call; a request never waits longer", gt=0)
    predictor_check_interval_s: float = setting(1.0, "period of the predictor readiness / fingerprint probe", gt=0)
    redis_url: str | None = setting(None, "`redis://[:password@]host:port/db`, or TLS: "
                                    "`rediss://:password@host:6380/0?ssl_ca_certs=/path/ca.crt&ssl_cert_reqs=required`;"
                                    " unset → in-process LRU")
    redis_timeout_ms: int = setting(50, "socket timeout of every Redis call (fail open beyond it)", gt=0, le=1000)
    redis_pool_size: int = setting(32, "Redis connections (a blocking pool: bursts wait, bounded by the timeout)",
                                   gt=0)
    cache_ttl_s: int = setting(86400, "TTL of a cached result", gt=0)
    cache_prefix: str = setting("sentiment", "key prefix (`prefix:fingerprint:mode:sha256`; `mode` names the window "
                                "length, for `chunk` the stride and aggregation, and a score function other than "
                                "softmax; `top_k` and `raw_scores` are not in it)")
    local_cache_size: int = setting(50_000, "entries of the in-process LRU used when there is no Redis (about 670 "
                                    "bytes each)", ge=0)
    hot_cache_size: int = setting(10_000, "entries of the in-process tier in front of Redis (decoded, ready to "
                                  "serve); `0` turns it off", ge=0)
    breaker_failures: int = setting(3, "consecutive Redis errors that open the circuit breaker", gt=0,
                                    earlier=("CACHE_BREAKER_FAILURES",))
    breaker_reset_s: float = setting(2.0, "seconds the breaker stays open before one trial call", gt=0,
                                     earlier=("CACHE_BREAKER_RESET_SECONDS",))
    max_texts: int = setting(256, "texts per request (413 above)", gt=0, earlier=("MAX_TEXTS_PER_REQUEST",))
    max_text_chars: int = setting(50_000, "characters per text (413 above): a whole review or article is one text",
                                  gt=0)
    max_request_tokens: int = setting(65_536, "tokens of model work for one request's new texts, every window "
                                      "counted (413 above)", gt=0)
    max_body_bytes: int = setting(4 * 1024 * 1024, "request body bytes, and gRPC message bytes (413 / "
                                  "RESOURCE_EXHAUSTED above)", gt=0)
    max_inflight: int = setting(256, "requests being served at once (bodies complete); more are shed with 503 + "
                                "`Retry-After`", gt=0, earlier=("MAX_INFLIGHT_REQUESTS",))
    max_queue_wait_ms: int = setting(
        500, "new texts whose expected wait for the model is longer are shed with 503 + `Retry-After`: the tokens "
        "queued ahead of them divided by the throughput the transformer measures, so the bound means the same "
        "latency on a fast and a slow machine; never while the waiting work fits in the next round of calls "
        "(`MAX_CONCURRENT_BATCHES` x `MAX_BATCH_TOKENS` tokens); cache hits are still served", gt=0)
    request_timeout_s: float = setting(30.0, "an admitted request not answered within this gets 504", gt=0)
    body_timeout_s: float = setting(10.0, "a request body must arrive within this (408)", gt=0)
    header_timeout_s: float = setting(10.0, "request headers must arrive within this (408, connection closed)", gt=0)
    truncation: Literal["chunk", "head", "error"] = setting(
        "chunk", "default for texts longer than the model's window: `chunk`, `head` or `error`")
    window_stride: int = setting(0, "tokens shared by consecutive windows of a long text (0 measured best)", ge=0)
    aggregation: str = setting("mean_logits", "how a long text's windows are combined: `mean_logits`, "
                               "`mean_probabilities`, `length_weighted`, `confidence_weighted`, `most_confident`, "
                               "`first_window` (each calibrated by the bundle's temperature for it, where the "
                               "export fitted one)")
    max_batch_tokens: int = setting(512, "padded tokens (rows × length) per Triton call, besides the model's "
                                    "`max_batch_size` rows: small calls keep a short request's wait short", gt=0)
    max_concurrent_batches: int = setting(3, "Triton calls in flight at once (one per instance, plus one queued so "
                                          "no instance idles)", gt=0)
    pad_to_multiple: int = setting(8, "pad token length to a multiple of this (fewer distinct shapes for Triton)",
                                   ge=1)
    tokenizer_threads: int = setting(1, "threads that tokenize off the event loop (`0`: on the loop)", ge=0)
    access_log: bool = setting(False, "one log line per request (uvicorn's access log; about 15 % of a cache hit's "
                               "CPU)")
    prediction_log_sample_rate: float = setting(0.0, "fraction of answers written to the prediction log (JSON "
                                                "lines: hashed cache key, label, score, version, source, latency); "
                                                "`0` = off", ge=0, le=1)
    prediction_log_text: bool = setting(False, "also put the raw text in prediction log lines")
    bind_address: str = setting("0.0.0.0", "address the HTTP and gRPC servers listen on; `0.0.0.0` = every "
                                "interface (gRPC: `[::]`), `127.0.0.1` = this machine only (`sentiment up`'s default)")
    api_keys: str | None = setting(None, "file of API keys, one per line: every inference and metadata route and RPC "
                                   "then needs `Authorization: Bearer KEY` (probes never); re-read on SIGHUP and "
                                   "when it changes; unset = open")
    control_file: str | None = setting(None, "JSON file naming the bundle to switch to on SIGHUP (the rollout's "
                                       "in-process switch; `sentiment up` sets it)")
    replay_sample_size: int = setting(1000, "recent distinct texts kept in memory (never logged) to warm the cache "
                                      "of a new version and compare its answers", ge=0)
    switch_timeout_s: float = setting(60.0, "how long a switch waits for the predictor to serve the new version "
                                      "before it gives up and keeps the old one", gt=0)
    traces_exporter: str = setting("none", "`otlp` or `console` turns tracing on; the SDK reads the other `OTEL_*` "
                                   "variables itself ([docs/tracing.md](tracing.md))",
                                   env="OTEL_TRACES_EXPORTER")

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

    @field_validator("bind_address")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        import ipaddress

        try:
            return str(ipaddress.ip_address(value.strip().strip("[]")))
        except ValueError:
            raise ValueError(f"BIND_ADDRESS must be an IP address (0.0.0.0, 127.0.0.1, ::), not {value!r}") from None

    @field_validator("api_keys")
    @classmethod
    def _keys_path(cls, value: str | None) -> str | None:
        return value or None

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


@dataclass(frozen=True)
class Source:
    """Where one setting is read from, all of it derived from its field (see the module's docstring)."""

    field: str
    flag: str | None          # None: no flag (a standard's variable); KServe's parser declares `kserve` ones
    envs: tuple[str, ...]     # the first is its name; the rest are earlier names, still read
    parse: Callable[[str], Any]
    kserve: bool

    @property
    def env(self) -> str:
        return self.envs[0]


def _parser_of(annotation: Any) -> Callable[[str], Any]:
    """How a flag's text becomes the field's type (pydantic checks bounds and choices after)."""
    kinds = set(typing.get_args(annotation)) - {type(None)} or {annotation}
    if bool in kinds:
        return _boolean
    return int if int in kinds else float if float in kinds else str


def _source(name: str, field: FieldInfo) -> Source:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if extra.get("env"):
        return Source(name, None, (str(extra["env"]),), str, False)
    stem = name[:-2] if name.endswith("_s") else name
    env = f"{stem.upper()}_SECONDS" if name.endswith("_s") else name.upper()
    earlier = tuple(str(e) for e in extra.get("earlier") or ())  # type: ignore[union-attr]
    return Source(name, f"--{stem}", (env, *earlier), _parser_of(field.annotation), bool(extra.get("kserve")))


@cache
def sources() -> tuple[Source, ...]:
    """Every setting's flag and variables, in declaration order."""
    return tuple(_source(name, field) for name, field in Settings.model_fields.items())


# OpenTelemetry's switch-off (environment only, no flag): it beats OTEL_TRACES_EXPORTER.
SDK_DISABLED_ENV = "OTEL_SDK_DISABLED"


def environment_variables() -> frozenset[str]:
    """Every environment variable the transformer reads itself (the OpenTelemetry SDK reads the other
    OTEL_* ones): what a manifest may set (tests/deploy/test_container_image.py checks it)."""
    return frozenset([env for source in sources() for env in source.envs] + [SDK_DISABLED_ENV])


def build_parser() -> argparse.ArgumentParser:
    """KServe's model-server parser extended with the transformer's flags (all default to None)."""
    from kserve.model_server import parser as kserve_parser

    parser = argparse.ArgumentParser(
        prog="python -m transformer", parents=[kserve_parser],
        description="Sentiment transformer: tokenization, per-text cache, KServe V1/V2 and /project routes.",
    )
    for source in sources():
        if source.flag is None or source.kserve:
            continue
        field = Settings.model_fields[source.field]
        described = f"{field.description} [env {' or '.join(source.envs)}; default {field.default}]"
        parser.add_argument(source.flag, dest=source.field, type=source.parse, default=None,
                            help=described.replace("%", "%%"))  # argparse formats help with %
    # None = "not given": the environment, then our defaults, fill in. Per-request latency log lines
    # cost CPU on the hot path, so they are off unless asked for.
    parser.set_defaults(model_name=None, predictor_host=None, predictor_protocol=None, enable_latency_logging=False)
    return parser


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Merge: explicit flag > environment variable (its name, then earlier names) > default."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for source in sources():
        value = getattr(args, source.field, None)
        if source.kserve and value is False:  # KServe's store_true flags default to False: not given
            value = None
        if value is None:
            value = next((environ[env] for env in source.envs if environ.get(env)), None)
        if value is not None:
            values[source.field] = value
    if environ.get(SDK_DISABLED_ENV, "").strip().lower() == "true":
        values["traces_exporter"] = "none"
    if values.get("predictor_protocol") == "v1":
        raise ValueError("--predictor_protocol v1 is not supported: Triton speaks v2 (use grpc-v2 or v2)")
    return Settings(**values)


# ---- the settings table of docs/configuration.md -----------------------------------------------------------------
TABLE_START = "<!-- settings table: generated by `python -m transformer.settings`; edit transformer/settings.py -->"
TABLE_END = "<!-- end of the settings table -->"


def _shown(default: Any) -> str:
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    return f"`{default}`"


def settings_table() -> str:
    """docs/configuration.md's table of every setting: flag, environment variable (earlier names after it),
    default and meaning, from the declarations."""
    lines = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for source in sources():
        field = Settings.model_fields[source.field]
        envs = f"`{source.env}`" + "".join(f" (or `{env}`)" for env in source.envs[1:])
        flag = f" `{source.flag}` " if source.flag else " "
        default = "unset (off)" if source.field == "traces_exporter" else _shown(field.default)
        lines.append(f"|{flag}| {envs} | {default} | {field.description} |")
    return "\n".join([TABLE_START, *lines, TABLE_END])


if __name__ == "__main__":
    print(settings_table())
