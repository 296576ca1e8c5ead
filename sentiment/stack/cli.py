"""The `sentiment up` subcommand (later: loadtest, bench)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sentiment.paths import REPO_ROOT, default_model_repository


def _cmd_up(args: argparse.Namespace) -> int:
    from sentiment.stack.processes import ProcessFailed
    from sentiment.stack.triton import TritonPorts
    from sentiment.stack.up import Stack, StackConfig, banner, export_checkpoint_cached

    if args.checkpoint:
        print(f"exporting {args.checkpoint} (once per checkpoint) ...", flush=True)
        repository = export_checkpoint_cached(Path(args.checkpoint))
    elif args.model_repository:
        repository = Path(args.model_repository)
    else:
        from sentiment.model.build import build

        print("checking the default model (trains once per machine, about 6-8 minutes on 2 cores) ...", flush=True)
        build(default_model_repository())
        repository = default_model_repository()
    config = StackConfig(
        model_repository=repository.resolve(), logs=Path(args.logs).resolve(), port=args.port, grpc_port=args.grpc_port,
        triton=TritonPorts(args.triton_http_port, args.triton_grpc_port, args.triton_metrics_port),
        redis_port=args.redis_port, redis_url=args.redis_url, use_redis=not args.no_redis, protocol=args.protocol,
        transformer_args=args.transformer_arg or [],
        prometheus_port=args.prometheus_port if args.with_prometheus else None,
    )
    stack = Stack(config)
    print("starting redis, triton and the transformer ...", flush=True)
    code = 1
    try:
        stack.start()
        print(banner(config), flush=True)
        code = stack.wait()
    except (ProcessFailed, RuntimeError) as error:
        print(f"error: {error}", flush=True)
    except KeyboardInterrupt:
        code = 0
    finally:
        stack.stop()
    return code


def add_stack_commands(commands) -> None:
    up = commands.add_parser("up", help="run redis, triton and the transformer locally until Ctrl-C",
                             description="Run the whole stack on this machine: a private redis-server, the Triton "
                                         "binary from nvidia-pytriton, and the transformer on http://localhost:8000. "
                                         "Builds the default model on first use. Environment variables of the "
                                         "transformer (CACHE_TTL_SECONDS, MAX_TEXTS_PER_REQUEST, ...) pass through.")
    source = up.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="serve your own HF *ForSequenceClassification checkpoint directory")
    source.add_argument("--model-repository", help="serve an already exported model repository")
    up.add_argument("--port", type=int, default=8000, help="transformer HTTP port (default 8000)")
    up.add_argument("--grpc-port", type=int, default=8081, help="transformer gRPC port (default 8081)")
    up.add_argument("--triton-http-port", type=int, default=8010)
    up.add_argument("--triton-grpc-port", type=int, default=8011)
    up.add_argument("--triton-metrics-port", type=int, default=8012)
    up.add_argument("--redis-port", type=int, default=6390, help="port of the private redis-server (default 6390)")
    up.add_argument("--redis-url", help="use this Redis instead of starting one (redis:// or rediss://)")
    up.add_argument("--no-redis", action="store_true", help="no Redis: the transformer uses its in-process cache")
    up.add_argument("--protocol", choices=["grpc-v2", "v2"], default="grpc-v2", help="transformer -> Triton protocol")
    up.add_argument("--logs", default=str(REPO_ROOT / ".logs"), help="folder for the three log files (default .logs/)")
    up.add_argument("--with-prometheus", action="store_true",
                    help="also run Prometheus (Debian's prometheus) scraping the stack and evaluating the SLO alerts")
    up.add_argument("--prometheus-port", type=int, default=9090)
    up.add_argument("--transformer-arg", action="append", metavar="ARG",
                    help="extra flag for the transformer, repeatable (e.g. --transformer-arg=--hot_cache_size=0)")
    up.set_defaults(handler=_cmd_up)
