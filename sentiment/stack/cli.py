"""`sentiment up`: its flags, turned into a `ModelSource` and a `StackConfig` before anything runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from sentiment.paths import LOGS_DIR
from sentiment.stack.triton import TritonPorts
from sentiment.stack.up import StackConfig


def _cmd_up(args: argparse.Namespace) -> int:
    from sentiment.stack.up import ModelSource, run_up

    source = ModelSource(checkpoint=Path(args.checkpoint) if args.checkpoint else None,
                         repository=Path(args.model_repository) if args.model_repository else None)
    return run_up(stack_config(args, source.repository_to_serve()))


def stack_config(args: argparse.Namespace, repository: Path) -> StackConfig:
    """`sentiment up`'s flags as the StackConfig that serves `repository`."""
    return StackConfig(
        model_repository=repository.resolve(), logs=Path(args.logs).resolve(), port=args.port,
        grpc_port=args.grpc_port,
        triton=TritonPorts(args.triton_http_port, args.triton_grpc_port, args.triton_metrics_port),
        redis_port=args.redis_port, redis_url=args.redis_url, use_redis=not args.no_redis, protocol=args.protocol,
        host=args.host,
        transformer_args=tuple(args.transformer_arg or ()),
        prometheus_port=args.prometheus_port if args.with_prometheus else None,
        traces_port=args.traces_port if args.with_tracing else None,
    )


def _cmd_traces(args: argparse.Namespace) -> int:
    from sentiment.stack.traces import TRACES_FILE, show_trace

    return show_trace(Path(args.file) if args.file else Path(args.logs) / TRACES_FILE, args.trace)


def add_stack_commands(commands) -> None:
    up = commands.add_parser("up", help="run redis, triton and the transformer locally until Ctrl-C",
                             description="Run the whole stack on this machine: a private redis-server, the Triton "
                                         "binary from nvidia-pytriton, and the transformer on http://localhost:8000. "
                                         "Builds the default model on first use. A crashed Redis or Triton is "
                                         "restarted with backoff; the transformer's exit stops the stack. "
                                         "Environment variables of the transformer (CACHE_TTL_SECONDS, "
                                         "MAX_TEXTS, ...) pass through.")
    defaults = StackConfig(model_repository=Path(), logs=LOGS_DIR)
    source = up.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="serve your own HF *ForSequenceClassification checkpoint directory")
    source.add_argument("--model-repository", help="serve an already exported model repository")
    up.add_argument("--port", type=int, default=defaults.port, help="transformer HTTP port (default %(default)s)")
    up.add_argument("--grpc-port", type=int, default=defaults.grpc_port,
                    help="transformer gRPC port (default %(default)s)")
    up.add_argument("--host", default=defaults.host,
                    help="address the transformer's HTTP and gRPC ports listen on (default %(default)s: this machine "
                         "only; 0.0.0.0 exposes them on every interface)")
    up.add_argument("--triton-http-port", type=int, default=defaults.triton.http,
                    help="Triton HTTP port, loopback only (default %(default)s)")
    up.add_argument("--triton-grpc-port", type=int, default=defaults.triton.grpc,
                    help="Triton gRPC port, loopback only (default %(default)s)")
    up.add_argument("--triton-metrics-port", type=int, default=defaults.triton.metrics,
                    help="Triton metrics port, loopback only (default %(default)s)")
    up.add_argument("--redis-port", type=int, default=defaults.redis_port,
                    help="port of the private redis-server (default %(default)s)")
    up.add_argument("--redis-url", help="use this Redis instead of starting one (redis:// or rediss://)")
    up.add_argument("--no-redis", action="store_true", help="no Redis: the transformer uses its in-process cache")
    up.add_argument("--protocol", choices=["grpc-v2", "v2"], default=defaults.protocol,
                    help="transformer -> Triton protocol")
    up.add_argument("--logs", default=str(LOGS_DIR), help="folder for the log files (default .logs/)")
    up.add_argument("--with-prometheus", action="store_true",
                    help="also run Prometheus (Debian's prometheus) scraping the stack and evaluating the SLO alerts")
    up.add_argument("--prometheus-port", type=int, default=StackConfig.PROMETHEUS_PORT,
                    help="Prometheus port with --with-prometheus (default %(default)s)")
    up.add_argument("--with-tracing", action="store_true",
                    help="trace every request (OpenTelemetry): the transformer and Triton export to a local OTLP/HTTP "
                         "receiver that writes the spans to <logs>/traces.jsonl (read it with `sentiment traces`)")
    up.add_argument("--traces-port", type=int, default=StackConfig.TRACES_PORT,
                    help="port of the local OTLP/HTTP receiver (default %(default)s)")
    up.add_argument("--transformer-arg", action="append", metavar="ARG",
                    help="extra flag for the transformer, repeatable (e.g. --transformer-arg=--hot_cache_size=0)")
    up.set_defaults(handler=_cmd_up)

    traces = commands.add_parser(
        "traces",
        help="print the span tree of one traced request (sentiment up --with-tracing)",
        description="Print one trace from the spans `sentiment up --with-tracing` wrote: the "
        "latest request's, or --trace ID's (a client's traceparent trace id). "
        "Columns: start offset, duration, span, service, attributes.",
    )
    traces.add_argument("--logs", default=str(LOGS_DIR), help="the stack's logs folder (default .logs/)")
    traces.add_argument(
        "--file",
        help="read spans from this JSON-lines file instead (default <logs>/traces.jsonl), e.g. "
        "a copy kept from an earlier run",
    )
    traces.add_argument("--trace", help="the trace id (32 hex digits); default: the latest trace")
    traces.set_defaults(handler=_cmd_traces)
