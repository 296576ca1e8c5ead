"""`python -m transformer`: start KServe's ModelServer with the sentiment transformer.

Takes KServe's own flags (the controller passes --model_name, --predictor_host, --http_port, ...)
plus ours (see `python -m transformer --help`); every flag has an environment variable too.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys

from transformer.settings import build_parser, settings_from


def install_event_loop(choice: str) -> None:
    """KServe runs its servers under asyncio.run(), so uvicorn's --loop never applies: install
    uvloop as the policy here (the default "auto" and "uvloop"), or keep asyncio's loop."""
    if choice == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())  # KServe calls get_event_loop() before asyncio.run()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
    except ValueError as error:
        parser.error(str(error))

    from kserve import PredictorConfig

    from transformer import logs, tracing
    from transformer.api_keys import ApiKeyFileError
    from transformer.bundle import BundleError
    from transformer.server import SentimentModelServer
    from transformer.transport.kserve_model import SentimentModel

    if args.workers != 1:
        # kserve 0.21 loses the PredictorConfig in spawned workers (HTTP 501); scale with replicas instead.
        logging.getLogger("transformer").warning("--workers %s ignored: the transformer runs one worker", args.workers)
    model = SentimentModel(settings)
    try:
        model.load()
    except (BundleError, ApiKeyFileError) as error:
        logging.getLogger("transformer").error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        return 2
    # KServe's own predictor client is unused (our transports call Triton through the core), but its
    # config must exist; the timeout is whole seconds there, at least one.
    predictor_config = PredictorConfig(
        predictor_host=settings.predictor_host,
        predictor_protocol=settings.predictor_protocol,
        predictor_use_ssl=settings.predictor_use_ssl,
        predictor_request_timeout_seconds=max(1, math.ceil(settings.predictor_timeout_s)),
        predictor_request_retries=0,
        predictor_health_check=args.enable_predictor_health_check,
    )
    server = SentimentModelServer(
        settings,
        http_port=args.http_port, grpc_port=args.grpc_port, workers=1,
        enable_grpc=args.enable_grpc,
        enable_latency_logging=args.enable_latency_logging,
        timeout_keep_alive=args.timeout_keep_alive,
        predictor_config=predictor_config,
    )
    # Per-request log lines (KServe's timing trace, uvicorn's access log) cost about 15 % of the CPU of
    # a cache hit; /metrics counts every request by route and status. --access_log turns the log on.
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    if not settings.access_log:
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    install_event_loop(args.event_loop)
    ours = logging.getLogger("transformer")
    ours.handlers = list(logging.getLogger("kserve").handlers)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    logs.install_handler()  # error answers and the prediction log: one JSON document per line
    tracing.setup(settings.trace_exporters)  # off unless OTEL_TRACES_EXPORTER names an exporter
    server.start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
