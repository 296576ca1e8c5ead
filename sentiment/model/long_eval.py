"""Choose the window length, the stride and how a long text's windows are aggregated, on real reviews.

    sentiment model eval-long [--repository model_repository] [--count 300] [--out FILE]

The served ONNX model (`<repository>/sentiment/1/model.onnx`, with its bundle's tokenizer and
token_type_ids) classifies every window of whole IMDB reviews (kind `imdb`: the checkpoint's dev
split rows of source `imdb`, which training never fitted) and of documents built by
`sentiment.model.long_documents` from the TRAINING side (`verdict_last`, `verdict_first`,
`homogeneous`, `majority`, `long_majority`: movie snippets with neutral filler, as checks that a
verdict at either end holds). For each window length (`--window-lengths`, the tokens per window),
each stride (tokens shared by consecutive windows) and each candidate in
`transformer.core.windows.AGGREGATIONS`, plus `head` (the first window only), it measures the
accuracy per document kind and the cost (windows and model tokens per document). With a lexical
head beside the bundle's tokenizer, the test side also reports what the service answers: the default
aggregation combined with the head (the head was fitted for it; it plays no part in the choice).

Choice rule: the mean accuracy over the `--choose-kinds` (default: the IMDB reviews only); among
all rows within `--tolerance` (default 0.5 points) of the best that also keep every check kind
within `--check-tolerance` points of the best row on that kind, take the cheapest (fewest model
tokens per document), then the highest mean, then the order of AGGREGATIONS. Only then are
test-side documents (the test split's reviews and sentences, the test half of the filler)
classified, once, with `head` and the chosen row; they play no part in the choice.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sentiment.markdown import markdown_table
from sentiment.model.data import LABELS, read_split
from sentiment.model.long_documents import KINDS, LongDocument, build_documents
from sentiment.model.triton_repository import bundle_dir as served_bundle

DEFAULT_STRIDES = (0, 32)
HEAD = "head"
REVIEW_KIND = "imdb"        # whole IMDB reviews of the checkpoint's splits
REVIEW_SOURCE = "imdb"
ALL_KINDS = (REVIEW_KIND, *KINDS)


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


def _served_predictions(classifier, windowed: WindowedLogits, documents: Sequence[LongDocument],
                        document_temperature: float) -> np.ndarray:
    """What the service answers with the model's lexical head: the default aggregation (with the
    bundle's document temperature), combined with the head's margin for the whole document."""
    from transformer.core.lexical import content_ids
    from transformer.core.windows import DEFAULT_AGGREGATION, aggregate

    windows = classifier.encoder.windows([d.text for d in documents])
    predictions = []
    for logits, new_tokens, text in zip(windowed.logits, windowed.new_tokens, windows):
        scores = aggregate(DEFAULT_AGGREGATION, logits, new_tokens, "softmax", document_temperature)
        scores = classifier.head.combine(scores, content_ids(text.windows, text.new_tokens), len(logits) > 1)
        predictions.append(int(scores.argmax()))
    return np.array(predictions)


def _row(name: str, windowed: WindowedLogits, documents: Sequence[LongDocument], kinds: Sequence[str],
         choose_kinds: Sequence[str], window: int, predictions: np.ndarray | None = None) -> dict:
    predictions = _predict(name, windowed) if predictions is None else predictions
    truth = np.array([d.label for d in documents])
    kind_of = np.array([d.kind for d in documents])
    head_only = name == HEAD
    accuracy = {k: float((predictions[kind_of == k] == truth[kind_of == k]).mean()) for k in kinds}
    sizes = {k: int((kind_of == k).sum()) for k in kinds}
    chosen = [k for k in choose_kinds if k in accuracy]
    # Binomial standard error of the mean over the choosing kinds (documents are independent draws).
    error = float(np.sqrt(sum(accuracy[k] * (1 - accuracy[k]) / sizes[k] for k in chosen)) / len(chosen))
    windows = [1 if head_only else len(logits) for logits in windowed.logits]
    tokens = windowed.first_tokens if head_only else windowed.tokens
    return {
        "aggregation": name,
        "window": window,
        "stride": None if head_only else windowed.stride,
        "accuracy": accuracy,
        "mean_accuracy": float(np.mean([accuracy[k] for k in chosen])),
        "mean_standard_error": error,
        "windows_per_document": float(np.mean(windows)),
        "tokens_per_document": float(np.mean(tokens)),
    }


def choose(rows: Sequence[dict], tolerance: float, order: Sequence[str], check_kinds: Sequence[str] = (),
           check_tolerance: float = 1.0) -> dict:
    """The cheapest row (model tokens per document) within `tolerance` (accuracy, 0..1) of the best
    mean that keeps every check kind within `check_tolerance` of the best row on it; then the highest
    mean, then aggregation order. `head` is chosen only when no chunked row qualifies."""
    best = max(r["mean_accuracy"] for r in rows)
    best_check = {k: max(r["accuracy"][k] for r in rows) for k in check_kinds}
    near = [r for r in rows if r["mean_accuracy"] >= best - tolerance - 1e-12 and r["aggregation"] != HEAD
            and all(r["accuracy"][k] >= best_check[k] - check_tolerance - 1e-12 for k in check_kinds)]
    if not near:
        return next(r for r in rows if r["mean_accuracy"] == best)
    rank = {name: i for i, name in enumerate(order)}
    return min(near, key=lambda r: (r["tokens_per_document"], -r["mean_accuracy"], rank.get(r["aggregation"], 99)))


def accuracy_table(rows: Sequence[dict], kinds: Sequence[str], chosen: dict | None = None) -> str:
    header = ["aggregation", "window", "stride", *kinds, "choosing mean (± s.e.)", "windows/doc", "tokens/doc"]
    cells = [(f"`{r['aggregation']}`" + (" **(chosen)**" if chosen is not None and r is chosen else ""),
              str(r["window"]), "-" if r["stride"] is None else str(r["stride"]),
              *(f"{100 * r['accuracy'][k]:.1f}" for k in kinds),
              f"{100 * r['mean_accuracy']:.1f} ± {100 * r['mean_standard_error']:.1f}",
              f"{r['windows_per_document']:.2f}",
              f"{r['tokens_per_document']:.0f}") for r in rows]
    return "\n".join(markdown_table(header, cells))


def _table_for(classifier, encoders, documents, kinds, choose_kinds, names, batch_size) -> tuple[list[dict], dict]:
    rows: list[dict] = []
    extra: dict = {}
    heads: set[int] = set()
    for (window, _), encoder in encoders.items():
        windowed = _classify_windows(classifier, encoder, documents, batch_size)
        if window not in heads:
            heads.add(window)
            rows.append(_row(HEAD, windowed, documents, kinds, choose_kinds, window))
            flags = [p for p in windowed.verdict_past_head if p is not None]
            extra.setdefault("verdict_past_first_window", float(np.mean(flags)) if flags else None)
            extra.setdefault("words_per_document", {
                k: float(np.mean([d.words for d in documents if d.kind == k])) for k in kinds
            })
        rows.extend(_row(name, windowed, documents, kinds, choose_kinds, window) for name in names)
    return rows, extra


def review_documents(splits_dir: Path, side: str, count: int, seed: int) -> list[LongDocument]:
    """Up to `count` whole reviews (source `imdb`) of one split, label-balanced, in a seeded order."""
    reviews = [e for e in read_split(Path(splits_dir) / f"{side}.tsv") if e.source == REVIEW_SOURCE]
    by_label = [sorted((e for e in reviews if e.label == label), key=lambda e: e.text) for label in range(len(LABELS))]
    rng = random.Random(f"{seed}:{REVIEW_KIND}")
    per_label = min(count // len(LABELS), *(len(group) for group in by_label))
    chosen = [e for group in by_label for e in rng.sample(group, per_label)]
    return [LongDocument(e.text, e.label, REVIEW_KIND, (e.text,)) for e in chosen]


def _documents(splits_dir: Path, side: str, kinds: Sequence[str], count: int, seed: int) -> list[LongDocument]:
    built = [k for k in kinds if k != REVIEW_KIND]
    documents = build_documents(splits_dir, side=side, kinds=built, count=count, seed=seed) if built else []
    if REVIEW_KIND in kinds:
        documents += review_documents(splits_dir, side, count, seed)
    return documents


def evaluate(
    repository: Path,
    *,
    count: int = 300,
    seed: int = 0,
    strides: Sequence[int] = DEFAULT_STRIDES,
    window_lengths: Sequence[int] | None = None,
    kinds: Sequence[str] = ALL_KINDS,
    choose_kinds: Sequence[str] = (REVIEW_KIND,),
    check_kinds: Sequence[str] = ("verdict_last", "verdict_first"),
    choose_on: str = "dev",
    check_on: Sequence[str] = (),
    tolerance: float = 0.005,
    check_tolerance: float = 0.02,
    threads: int = 2,
    batch_size: int = 64,
    splits_dir: Path | None = None,
    test: bool = True,
    log=print,
) -> dict:
    """Measure every (window length, stride, aggregation) on training-side documents, choose, then
    report test-side `head` vs the choice once. Returns everything as a JSON-ready dict."""
    from sentiment.model.export import OnnxClassifier
    from transformer.bundle import ModelBundle
    from transformer.core.tokenization import TextEncoder
    from transformer.core.windows import AGGREGATIONS

    if choose_on == "test" or "test" in check_on:
        raise ValueError("the test side is never used to choose or check; it is reported once at the end")
    if not set(choose_kinds) <= set(kinds) or not set(check_kinds) <= set(kinds):
        raise ValueError("the choosing and check kinds must be among the kinds measured")
    started = time.monotonic()
    repository = Path(repository)
    bundle_dir = served_bundle(repository)
    bundle = ModelBundle.load(bundle_dir)
    tokenizer_file = bundle_dir / bundle.tokenizer_file
    splits_dir = Path(splits_dir) if splits_dir else Path(bundle.source["checkpoint"]) / "splits"
    windows = tuple(window_lengths or (bundle.max_length,))
    encoders = {
        (w, s): TextEncoder(tokenizer_file, w, bundle.uses_token_type_ids, stride=s) for w in windows for s in strides
    }
    first = next(iter(encoders.values()))
    classifier = OnnxClassifier(repository / "sentiment" / "1" / "model.onnx", first, threads=threads)
    names = [name for name in AGGREGATIONS if name != "first_window"]  # first_window == head, listed once

    result: dict = {
        "model": {"fingerprint": bundle.fingerprint, "variant": bundle.variant, "max_length": bundle.max_length,
                  "uses_token_type_ids": bundle.uses_token_type_ids, "checkpoint": bundle.source.get("checkpoint")},
        "documents": {"count_per_kind": count, "seed": seed, "kinds": list(kinds), "splits_dir": str(splits_dir),
                      "choose_kinds": list(choose_kinds), "check_kinds": list(check_kinds)},
        "rule": (f"the mean accuracy over {', '.join(choose_kinds)} on the `{choose_on}` side: among the rows within "
                 f"{100 * tolerance:.1f} points of the best that keep {', '.join(check_kinds) or 'no check kind'} "
                 f"within {100 * check_tolerance:.1f} points of their best, the fewest model tokens per document, "
                 "then the highest mean, then AGGREGATIONS order"),
        "sides": {},
    }
    for side in (choose_on, *check_on):
        log(f"[long_eval] {side}: building {count} documents per kind", file=sys.stderr)
        documents = _documents(splits_dir, side, kinds, count, seed)
        rows, extra = _table_for(classifier, encoders, documents, kinds, choose_kinds, names, batch_size)
        result["sides"][side] = {"rows": rows, **extra}
        log(f"[long_eval] {side}: done at {time.monotonic() - started:.0f} s", file=sys.stderr)

    rows = result["sides"][choose_on]["rows"]
    chosen = choose(rows, tolerance, list(AGGREGATIONS), check_kinds, check_tolerance)
    result["chosen"] = {"aggregation": chosen["aggregation"], "window": chosen["window"], "stride": chosen["stride"],
                        "mean_accuracy": chosen["mean_accuracy"],
                        "windows_per_document": chosen["windows_per_document"]}
    for side in result["sides"].values():
        side["chosen_row"] = next(
            (r for r in side["rows"] if (r["aggregation"], r["window"], r["stride"]) ==
             (chosen["aggregation"], chosen["window"], chosen["stride"])), None)

    if test:
        # Once, after the choice: what the integration tests will see. Never fed back into the choice.
        log("[long_eval] test: building documents (reported once, not used to choose)", file=sys.stderr)
        documents = _documents(splits_dir, "test", kinds, count, seed)
        key = (chosen["window"], chosen["stride"] if chosen["stride"] is not None else strides[0])
        windowed = _classify_windows(classifier, encoders[key], documents, batch_size)
        result["test"] = {
            "head": _row(HEAD, windowed, documents, kinds, choose_kinds, chosen["window"]),
            "chosen": None if chosen["aggregation"] == HEAD
            else _row(chosen["aggregation"], windowed, documents, kinds, choose_kinds, chosen["window"]),
            "verdict_past_first_window":
                float(np.mean([p for p in windowed.verdict_past_head if p is not None] or [0])),
        }
        if classifier.head is not None and classifier.head.combines:
            from transformer.core.windows import DEFAULT_AGGREGATION

            served = _served_predictions(classifier, windowed, documents,
                                         bundle.document_temperature(DEFAULT_AGGREGATION))
            result["test"]["served"] = _row(f"{DEFAULT_AGGREGATION} + lexical head (served)", windowed, documents,
                                            kinds, choose_kinds, chosen["window"], served)
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
        lines += [f"## Training side: `{name}` split reviews and sentences, training half of the neutral filler", "",
                  accuracy_table(side["rows"], kinds, chosen), "",
                  f"Verdict past the first window: {100 * (side.get('verdict_past_first_window') or 0):.0f} % "
                  "of verdict_last documents; "
                  "words per document: " + ", ".join(f"{k} {v:.0f}" for k, v in side["words_per_document"].items()), ""]
    c = result["chosen"]
    lines += [f"**Chosen: `{c['aggregation']}`, window {c['window']}, stride {c['stride']}** "
              f"(rule: {result['rule']}).", ""]
    if "test" in result:
        rows = [r for r in (result["test"]["head"], result["test"]["chosen"], result["test"].get("served")) if r]
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
    parser.add_argument("--window-lengths", default="",
                        help="comma-separated window lengths in tokens to compare (default: the bundle's max_length)")
    parser.add_argument("--choose-kinds", default=REVIEW_KIND,
                        help="comma-separated document kinds whose mean accuracy chooses (default %(default)s)")
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
        window_lengths=[int(w) for w in args.window_lengths.split(",") if w] or None,
        choose_kinds=tuple(k for k in args.choose_kinds.split(",") if k),
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

