"""Choose how a long text's windows are aggregated, and their stride, by measurement.

    python -m sentiment.model.long_eval [--repository model_repository] [--count 300] [--out FILE]

The served ONNX model (`<repository>/sentiment/1/model.onnx`, with its bundle's tokenizer,
max_length and token_type_ids) classifies every window of long documents built by
`sentiment.model.long_documents` from the TRAINING side only (`--choose-on`, default `dev`: the
dev split's sentences, which training never fitted, with the training half of the neutral filler;
`--check-on train` repeats the table on the train split's sentences, which the model was fitted
on, as a sensitivity check). For
each stride (tokens shared by consecutive windows) and each candidate in
`transformer.core.windows.AGGREGATIONS`, plus `head` (the first window only: what the service did
before), it measures the accuracy per document kind, the mean over kinds, and the cost (windows and
model tokens per document).

Choice rule: among all (aggregation, stride) rows whose mean accuracy is within `--tolerance`
(default 0.5 points) of the best, take the cheapest (fewest windows per document), then the
highest mean, then the order of AGGREGATIONS. Only then are test-side documents (the test split's
sentences, the test half of the filler) classified, once, with `head` and the chosen row: those
numbers are what the integration tests' thresholds are based on; they play no part in the choice.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sentiment.markdown import markdown_table
from sentiment.model.data import LABELS
from sentiment.model.long_documents import KINDS, LongDocument, build_documents
from sentiment.model.triton_repository import bundle_dir as served_bundle

DEFAULT_STRIDES = (0, 16, 32, 64)
HEAD = "head"


@dataclass(frozen=True)
class WindowedLogits:
    """Every window's logits of each document at one stride."""

    stride: int
    logits: list[np.ndarray]       # per document: [windows, labels]
    new_tokens: list[np.ndarray]   # per document: [windows]
    tokens: list[int]              # per document: tokens the model runs (all windows)
    first_tokens: list[int]        # per document: tokens of its first window (what `head` runs)
    verdict_past_head: list[bool | None]  # per document: verdict sentence entirely outside window 1


def _classify_windows(classifier, encoder, documents: Sequence[LongDocument], batch_size: int) -> WindowedLogits:
    texts = [d.text for d in documents]
    windowed = encoder.windows(texts)
    flat = [(doc, index, window) for doc, w in enumerate(windowed) for index, window in enumerate(w.windows)]
    flat.sort(key=lambda item: len(item[2].ids))  # similar lengths share a batch: little padding
    labels = len(LABELS)
    logits = [np.zeros((len(w.windows), labels), dtype=np.float32) for w in windowed]
    for start in range(0, len(flat), batch_size):
        chunk = flat[start:start + batch_size]
        batch = encoder.pad([window for _, _, window in chunk])
        out = classifier.session.run(["logits"], batch)[0]
        for (doc, index, _), row in zip(chunk, out):
            logits[doc][index] = row
    past = []
    for document, w in zip(documents, windowed):
        if not document.verdict:  # no verdict, or the verdict comes first
            past.append(None)
            continue
        # Character offsets of the verdict in the text; the first window's last content offset.
        start = sum(len(p) + 1 for p in document.parts[: document.verdict])
        head_end = max(
            (end for (_, end), special in zip(w.windows[0].offsets, w.windows[0].special_tokens_mask) if not special),
            default=0,
        )
        past.append(start >= head_end)
    return WindowedLogits(
        stride=encoder.stride,
        logits=logits,
        new_tokens=[np.asarray(w.new_tokens, dtype=np.int64) for w in windowed],
        tokens=[w.cost for w in windowed],
        first_tokens=[len(w.windows[0].ids) for w in windowed],
        verdict_past_head=past,
    )


def _predict(name: str, windowed: WindowedLogits) -> np.ndarray:
    from transformer.core.windows import aggregate, softmax

    if name == HEAD:
        return np.array([int(softmax(logits[0]).argmax()) for logits in windowed.logits])
    return np.array([int(aggregate(name, logits, n).argmax())
                     for logits, n in zip(windowed.logits, windowed.new_tokens)])


def _row(name: str, windowed: WindowedLogits, documents: Sequence[LongDocument], kinds: Sequence[str]) -> dict:
    predictions = _predict(name, windowed)
    truth = np.array([d.label for d in documents])
    kind_of = np.array([d.kind for d in documents])
    head_only = name == HEAD
    accuracy = {k: float((predictions[kind_of == k] == truth[kind_of == k]).mean()) for k in kinds}
    sizes = {k: int((kind_of == k).sum()) for k in kinds}
    # Binomial standard error of the mean over kinds (documents are independent draws).
    error = float(np.sqrt(sum(a * (1 - a) / sizes[k] for k, a in accuracy.items())) / len(kinds))
    windows = [1 if head_only else len(logits) for logits in windowed.logits]
    tokens = windowed.first_tokens if head_only else windowed.tokens
    return {
        "aggregation": name,
        "stride": None if head_only else windowed.stride,
        "accuracy": accuracy,
        "mean_accuracy": float(np.mean(list(accuracy.values()))),
        "mean_standard_error": error,
        "windows_per_document": float(np.mean(windows)),
        "tokens_per_document": float(np.mean(tokens)),
    }


def choose(rows: Sequence[dict], tolerance: float, order: Sequence[str]) -> dict:
    """The cheapest row within `tolerance` (accuracy, 0..1) of the best mean, then highest mean,
    then aggregation order. `head` is chosen only when no chunked row comes within `tolerance` of it."""
    best = max(r["mean_accuracy"] for r in rows)
    near = [r for r in rows if r["mean_accuracy"] >= best - tolerance - 1e-12 and r["aggregation"] != HEAD]
    if not near:
        return next(r for r in rows if r["mean_accuracy"] == best)
    rank = {name: i for i, name in enumerate(order)}
    return min(near, key=lambda r: (r["windows_per_document"], -r["mean_accuracy"], rank.get(r["aggregation"], 99)))


def accuracy_table(rows: Sequence[dict], kinds: Sequence[str], chosen: dict | None = None) -> str:
    header = ["aggregation", "stride", *kinds, "mean (± s.e.)", "windows/doc", "tokens/doc"]
    cells = [(f"`{r['aggregation']}`" + (" **(chosen)**" if chosen is not None and r is chosen else ""),
              "-" if r["stride"] is None else str(r["stride"]),
              *(f"{100 * r['accuracy'][k]:.1f}" for k in kinds),
              f"{100 * r['mean_accuracy']:.1f} ± {100 * r['mean_standard_error']:.1f}",
              f"{r['windows_per_document']:.2f}",
              f"{r['tokens_per_document']:.0f}") for r in rows]
    return "\n".join(markdown_table(header, cells))


def _table_for(classifier, encoders, documents, kinds, names, batch_size) -> tuple[list[dict], dict]:
    rows: list[dict] = []
    extra: dict = {}
    for encoder in encoders.values():
        windowed = _classify_windows(classifier, encoder, documents, batch_size)
        if not rows:
            rows.append(_row(HEAD, windowed, documents, kinds))
            flags = [p for p in windowed.verdict_past_head if p is not None]
            extra["verdict_past_first_window"] = float(np.mean(flags)) if flags else None
            extra["words_per_document"] = {
                k: float(np.mean([d.words for d in documents if d.kind == k])) for k in kinds
            }
        rows.extend(_row(name, windowed, documents, kinds) for name in names)
    return rows, extra


def evaluate(
    repository: Path,
    *,
    count: int = 300,
    seed: int = 0,
    strides: Sequence[int] = DEFAULT_STRIDES,
    kinds: Sequence[str] = KINDS,
    choose_on: str = "dev",
    check_on: Sequence[str] = (),
    tolerance: float = 0.005,
    threads: int = 2,
    batch_size: int = 64,
    splits_dir: Path | None = None,
    test: bool = True,
    log=print,
) -> dict:
    """Measure every (aggregation, stride) on training-side documents, choose, then report test-side
    `head` vs the choice once. Returns everything as a JSON-ready dict."""
    from sentiment.model.export import OnnxClassifier
    from transformer.bundle import ModelBundle
    from transformer.core.tokenization import TextEncoder
    from transformer.core.windows import AGGREGATIONS

    if choose_on == "test" or "test" in check_on:
        raise ValueError("the test side is never used to choose or check; it is reported once at the end")
    started = time.monotonic()
    repository = Path(repository)
    bundle_dir = served_bundle(repository)
    bundle = ModelBundle.load(bundle_dir)
    tokenizer_file = bundle_dir / bundle.tokenizer_file
    splits_dir = Path(splits_dir) if splits_dir else Path(bundle.source["checkpoint"]) / "splits"
    encoders = {
        s: TextEncoder(tokenizer_file, bundle.max_length, bundle.uses_token_type_ids, stride=s) for s in strides
    }
    classifier = OnnxClassifier(repository / "sentiment" / "1" / "model.onnx", encoders[strides[0]], threads=threads)
    names = [name for name in AGGREGATIONS if name != "first_window"]  # first_window == head, listed once

    result: dict = {
        "model": {"fingerprint": bundle.fingerprint, "variant": bundle.variant, "max_length": bundle.max_length,
                  "uses_token_type_ids": bundle.uses_token_type_ids, "checkpoint": bundle.source.get("checkpoint")},
        "documents": {"count_per_kind": count, "seed": seed, "kinds": list(kinds), "splits_dir": str(splits_dir)},
        "rule": (f"among all (aggregation, stride) rows whose mean accuracy over kinds is within "
                 f"{100 * tolerance:.1f} points of the best on the `{choose_on}` side, the fewest windows per "
                 "document, then the highest mean, then AGGREGATIONS order"),
        "sides": {},
    }
    for side in (choose_on, *check_on):
        log(f"[long_eval] {side}: building {count} documents per kind", file=sys.stderr)
        documents = build_documents(splits_dir, side=side, kinds=kinds, count=count, seed=seed)
        rows, extra = _table_for(classifier, encoders, documents, kinds, names, batch_size)
        result["sides"][side] = {"rows": rows, **extra}
        log(f"[long_eval] {side}: done at {time.monotonic() - started:.0f} s", file=sys.stderr)

    rows = result["sides"][choose_on]["rows"]
    chosen = choose(rows, tolerance, list(AGGREGATIONS))
    result["chosen"] = {"aggregation": chosen["aggregation"], "stride": chosen["stride"],
                        "mean_accuracy": chosen["mean_accuracy"],
                        "windows_per_document": chosen["windows_per_document"]}
    for side in result["sides"].values():
        side["chosen_row"] = next(
            (r for r in side["rows"] if r["aggregation"] == chosen["aggregation"] and r["stride"] == chosen["stride"]),
            None,
        )

    if test:
        # Once, after the choice: what the integration tests will see. Never fed back into the choice.
        log("[long_eval] test: building documents (reported once, not used to choose)", file=sys.stderr)
        documents = build_documents(splits_dir, side="test", kinds=kinds, count=count, seed=seed)
        encoder = encoders[chosen["stride"]] if chosen["stride"] is not None else encoders[strides[0]]
        windowed = _classify_windows(classifier, encoder, documents, batch_size)
        result["test"] = {
            "head": _row(HEAD, windowed, documents, kinds),
            "chosen": None if chosen["aggregation"] == HEAD
            else _row(chosen["aggregation"], windowed, documents, kinds),
            "verdict_past_first_window":
                float(np.mean([p for p in windowed.verdict_past_head if p is not None] or [0])),
        }
    result["duration_s"] = round(time.monotonic() - started, 1)
    return result


def report(result: dict) -> str:
    kinds = result["documents"]["kinds"]
    lines = [
        f"# Long-text aggregation (model {result['model']['fingerprint'][:12]}, {result['model']['variant']}, "
        f"max_length {result['model']['max_length']})",
        "",
        f"{result['documents']['count_per_kind']} documents per kind (seed {result['documents']['seed']}); "
        "accuracy in %; windows/doc and tokens/doc are the model's cost per document.",
        "",
    ]
    for name, side in result["sides"].items():
        chosen = side.get("chosen_row")
        lines += [f"## Training side: `{name}` split sentences, training half of the neutral filler", "",
                  accuracy_table(side["rows"], kinds, chosen), "",
                  f"Verdict past the first window: {100 * (side.get('verdict_past_first_window') or 0):.0f} % "
                  "of verdict_last documents; "
                  "words per document: " + ", ".join(f"{k} {v:.0f}" for k, v in side["words_per_document"].items()), ""]
    c = result["chosen"]
    lines += [f"**Chosen: `{c['aggregation']}`, stride {c['stride']}** (rule: {result['rule']}).", ""]
    if "test" in result:
        rows = [r for r in (result["test"]["head"], result["test"]["chosen"]) if r]
        lines += ["## Test side (reported once after the choice; not used to choose)", "",
                  accuracy_table(rows, kinds), ""]
    lines.append(f"_{result['duration_s']} s_")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="the exported model repository whose version 1 is evaluated (default: model_repository)")
    parser.add_argument("--splits", type=Path, default=None,
                        help="splits dir (default: <bundle source.checkpoint>/splits)")
    parser.add_argument("--count", type=int, default=300, help="documents per kind and side")
    parser.add_argument("--seed", type=int, default=0, help="seed of the document builder (default %(default)s)")
    parser.add_argument("--strides", default=",".join(map(str, DEFAULT_STRIDES)),
                        help="comma-separated window strides (tokens shared by consecutive windows) to compare "
                             "(default %(default)s)")
    parser.add_argument("--choose-on", default="dev", choices=("train", "dev"),
                        help="the split whose documents choose the aggregation (default %(default)s)")
    parser.add_argument("--check-on", default="",
                        help="comma-separated training-side splits to repeat the table on ('' for none)")
    parser.add_argument("--tolerance", type=float, default=0.5,
                        help="accuracy points within the best that count as a tie")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default %(default)s)")
    parser.add_argument("--no-test", action="store_true", help="skip the test-side report")
    parser.add_argument(
        "--out", type=Path, default=None, help="write the markdown here and the JSON next to it (.json)"
    )


def run(args: argparse.Namespace) -> int:
    """The command's boundary: arguments in, `evaluate` and `report` below."""
    check_on = tuple(s for s in args.check_on.split(",") if s and s != args.choose_on)
    result = evaluate(
        args.repository, count=args.count, seed=args.seed, strides=[int(s) for s in args.strides.split(",")],
        choose_on=args.choose_on, check_on=check_on, tolerance=args.tolerance / 100, threads=args.threads,
        splits_dir=args.splits, test=not args.no_test,
    )
    text = report(result)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sentiment model eval-long", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
