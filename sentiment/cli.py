"""`sentiment`: the one command line of the project (model building, local stack, load tests, benchmarks)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from sentiment.paths import default_model_repository

Handler = Callable[[argparse.Namespace], int]


def _add_export_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", choices=["auto", "fp32", "int8"], default="auto",
                        help="served ONNX variant; auto picks int8 unless it loses > --max-int8-loss dev points")
    parser.add_argument("--max-int8-loss", type=float, default=1.0, help="accuracy points int8 may lose (default 1.0)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per text (default 128, or the checkpoint's)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="Triton max_batch_size (default 64)")
    parser.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batching max queue delay (default 2000)")
    parser.add_argument("--instances", type=int, default=2,
                        help="Triton model instances (default 2: one batch per core runs in parallel; see BENCHMARKS.md)")
    parser.add_argument("--ort-threads", type=int, default=1, help="ONNX Runtime intra-op threads per instance (default 1)")


def _export_options(args: argparse.Namespace) -> dict:
    return {
        "variant": args.variant,
        "max_length": args.max_length,
        "max_int8_loss": args.max_int8_loss,
        "spec_overrides": {
            "max_batch_size": args.max_batch_size,
            "max_queue_delay_us": args.queue_delay_us,
            "instance_count": args.instances,
            "intra_op_threads": args.ort_threads,
        },
    }


def _cmd_model_train(args: argparse.Namespace) -> int:
    from sentiment.model.build import default_train_config
    from sentiment.model.train import train
    from sentiment.paths import cache_home

    config = default_train_config(base=args.base, seed=args.seed, epochs=args.epochs, learning_rate=args.learning_rate,
                                  batch_size=args.batch_size, max_length=args.max_length, threads=args.threads)
    result = train(config, Path(args.out), cache_home() / "data")
    print(json.dumps({k: result.metrics[k] for k in ("data", "dev_accuracy", "test_accuracy", "duration_s")}, indent=2))
    return 0


def _cmd_model_export(args: argparse.Namespace) -> int:
    from sentiment.model.export import export

    bundle = export(Path(args.checkpoint), Path(args.out), **_export_options(args))
    print(f"exported {bundle.variant} model {bundle.fingerprint[:12]} ({', '.join(bundle.labels)}) to {args.out}/sentiment")
    return 0


def _cmd_model_build(args: argparse.Namespace) -> int:
    from sentiment.model.build import build

    result = build(Path(args.out), force=args.force, **_export_options(args))
    state = "trained and exported" if result.trained else ("exported" if result.exported else "up to date")
    print(f"default model {state}: {result.repository}/sentiment (checkpoint {result.checkpoint})")
    return 0


def _cmd_model_check(args: argparse.Namespace) -> int:
    from sentiment.model.check import check_repository

    problems = check_repository(Path(args.repository))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.repository}: config.pbtxt, configs/local.pbtxt, model.onnx and bundle agree")
    return 1 if problems else 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sentiment", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    model = commands.add_parser("model", help="build, train, export and check the model").add_subparsers(
        dest="model_command", required=True)

    train = model.add_parser("train", help="fine-tune an encoder on the packaged movie-review sentences")
    train.add_argument("--base", default=None, help="HF encoder directory (default: packaged MiniLM-L6)")
    train.add_argument("--out", required=True, help="checkpoint directory to write")
    train.add_argument("--seed", type=int, default=13)
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--learning-rate", type=float, default=1e-4)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--max-length", type=int, default=128)
    train.add_argument("--threads", type=int, default=2)
    train.set_defaults(handler=_cmd_model_train)

    export = model.add_parser("export", help="export a checkpoint to ONNX and a Triton model repository")
    export.add_argument("--checkpoint", required=True, help="HF *ForSequenceClassification checkpoint directory")
    export.add_argument("--out", default=str(default_model_repository()), help="model repository root (default: ./model_repository)")
    _add_export_options(export)
    export.set_defaults(handler=_cmd_model_export)

    build = model.add_parser("build", help="train the default model if not cached, then export it")
    build.add_argument("--out", default=str(default_model_repository()), help="model repository root (default: ./model_repository)")
    build.add_argument("--force", action="store_true", help="retrain even if a cached checkpoint exists")
    _add_export_options(build)
    build.set_defaults(handler=_cmd_model_build)

    check = model.add_parser("check", help="check a model repository: configs vs the ONNX file vs the bundle")
    check.add_argument("--repository", default=str(default_model_repository()))
    check.set_defaults(handler=_cmd_model_check)

    from sentiment.loadtest.cli import add_loadtest_command
    from sentiment.stack.cli import add_stack_commands

    add_stack_commands(commands)
    add_loadtest_command(commands)

    from sentiment.benchmark import add_bench_command

    add_bench_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
