"""The model card, written from what the build measured: nothing in it is typed by hand.

`render` turns a built model repository (its bundle's `export_report.json` and the checkpoint's
`metrics.json`) into Markdown. The export writes it into the bundle as `MODEL_CARD.md` (with the
speeds, which belong to the machine that measured them); the README holds the same card without
the speeds between two markers, and `sentiment model card --readme README.md` rewrites it there
(a test holds the README to the build).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from sentiment.markdown import markdown_table
from sentiment.model import corpora, data, encoders
from sentiment.model.export import DYNAMIC, OUTLIER_SAFE, STATIC
from transformer.core.windows import DEFAULT_AGGREGATION

BEGIN = "<!-- model-card:begin: written by `sentiment model card --readme README.md` from the build; do not edit -->"
END = "<!-- model-card:end -->"

@dataclass(frozen=True)
class SourceCard:
    what: str
    package: str
    licence: str


SOURCES = {
    "movies": SourceCard("VADER movie-review snippets, each rated by about 20 people from -4 to +4 "
                         "(label: sign of the mean; \\|mean\\| <= 0.5 dropped)",
                         f"`{data.VADER_REQUIREMENT}` (PyPI sdist)", "MIT"),
    "tweets": SourceCard(corpora.TWEETS.origin + ", neutral ones dropped, and those whose "
                         f"label's crowd confidence is {corpora.TWEET_MIN_CONFIDENCE} or less (no majority)",
                         f"`{corpora.TWEETS.requirement}` (PyPI)", corpora.TWEETS.licence),
    "uci": SourceCard(corpora.UCI.origin + ", minus lines in the VADER judge sets",
                      f"`{corpora.UCI.requirement}` (npm)", corpora.UCI.licence),
    "imdb": SourceCard(corpora.IMDB.origin + ", `<br />` markup stripped",
                       f"`{corpora.IMDB.requirement}` (PyPI)", corpora.IMDB.licence),
}

# What the issue asked of the default model, on the held-out test splits (accuracy; ECE at most).
TARGETS = {"tweets": 0.90, "uci": 0.92, "imdb": 0.90, "movies": 0.88}
ECE_TARGET = 0.05


def _points(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _met(value: float | None, target: float, at_least: bool = True) -> str:
    if value is None:
        return "-"
    return "yes" if (value >= target if at_least else value <= target) else "**no**"


def load_build(repository: Path) -> tuple[dict, dict]:
    """The export report of `repository`'s version 1 and the metrics of the checkpoint it came from."""
    bundle_dir = repository / "sentiment" / "1" / "bundle"
    report = json.loads((bundle_dir / "export_report.json").read_text())
    source = json.loads((bundle_dir / "bundle.json").read_text()).get("source", {})
    metrics_file = Path(source.get("checkpoint", "")) / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return report, metrics


def _calibration(metrics: dict, report: dict) -> str:
    chosen = report["variants"][report["chosen"]]
    trained = (metrics.get("calibration") or {}).get("temperature")
    served = chosen.get("serving_temperature")
    parts = []
    if trained:
        parts.append(f"the head divided by T = {trained}, fitted on the dev splits' PyTorch logits in training")
    if served:
        parts.append(f"the served file's output layer divided by a further T = {served}, fitted on the served "
                     f"variant's own dev answers (quantization changes how confident the model is)")
    if not parts:
        return "none"
    total = (trained or 1.0) * (served or 1.0)
    text = "temperature scaling (log-loss): " + "; then ".join(parts) + f" (in all, logits / {total:.4f})"
    documents = chosen.get("document_temperatures") or {}
    if DEFAULT_AGGREGATION in documents:
        text += (f"; a text read in several windows has its aggregated answer divided by a further "
                 f"T = {documents[DEFAULT_AGGREGATION]} ({DEFAULT_AGGREGATION}; the bundle has one per aggregation), "
                 f"fitted on the dev texts read in several windows: their windows disagree, which pulls "
                 f"the aggregate towards chance")
    return text


def _overview(metrics: dict, report: dict) -> list[str]:
    config = metrics.get("config", {})
    rows = dict(config.get("train_rows", []))
    documents = ", ".join(config.get("document_sources", []))
    sampled = ", ".join(f"{k} {v:,}" for k, v in rows.items())
    training = (f"{config.get('epochs')} pass over {metrics.get('data', {}).get('train', 0):,} rows "
                f"(sampled, label-balanced: {sampled}; all of the rest), "
                f"AdamW lr {config.get('learning_rate')}, batch {config.get('batch_size')}, warm-up "
                f"{100 * config.get('warmup_fraction', 0):.0f} %, max length {config.get('max_length')}, "
                f"length-bucketed batches; {documents} reviews are trained on their last window")
    replaced = metrics.get("text_replacements")
    if replaced:  # what the model reads in place of characters its vocabulary lacks (training and serving alike)
        training += (f"; {replaced['characters']:,} characters the vocabulary lacks are read as words: "
                     f"{replaced['what']} (`{replaced['package']}`, BSD-3-Clause), skin tones dropped")
    base = encoders.describe(metrics["base"]) if metrics.get("base") else encoders.DEFAULT_DESCRIPTION
    rows = [("base encoder", base), ("training", training)]
    lexical = _lexical(metrics, report)
    if lexical:
        rows.append(("lexical head", lexical))
    return markdown_table(["", ""], [
        *rows,
        ("calibration", _calibration(metrics, report)),
        ("splits", f"stratified per source, seed {config.get('seed')}, written to `<checkpoint>/splits/`; dev "
                   "chooses the variant and the temperature, test is only reported"),
        ("labels", ", ".join(f"`{label}`" for label in data.LABELS)),
    ], numeric_from=2)


def _combination(how: dict) -> str:
    return f"{how['network']:.3f} x network + {how['lexical']:.3f} x lexical {how['bias']:+.3f}"


def _lexical(metrics: dict, report: dict) -> str:
    """The lexical head in words: what it reads, what it was fitted on, how it combines (empty: none)."""
    fitted, config = metrics.get("lexical_head"), (metrics.get("config") or {}).get("lexical")
    combined = report["variants"][report["chosen"]].get("lexical")
    if not fitted or not config:
        return ""
    sources = ", ".join(f"{name} {count:,}" for name, count in fitted["by_source"].items())
    text = (f"a logistic regression (C = {config['c']}, liblinear, `scikit-learn=={fitted['scikit_learn_version']}`) "
            f"over the word-piece 1- to {config['max_n']}-grams of the whole text (the ids themselves, and longer "
            f"n-grams hashed into {config['buckets']:,} buckets; sublinear tf-idf, L2-normalized), fitted on every "
            f"training-side row of every source ({fitted['rows']:,}: {sources})")
    if combined:
        kinds = (("texts read in one window", combined.get("texts")),
                 ("texts read in several windows", combined.get("documents")))
        text += ("; its margin is combined with the network's calibrated log-odds by a logistic regression "
                 "fitted on the dev split: " + ", ".join(
                     f"{kind} {_combination(how)}" if how else f"{kind} keep the network's answer"
                     for kind, how in kinds))
    return text


def _data_table(metrics: dict) -> list[str]:
    sizes = metrics.get("data", {}).get("by_source", {})
    rows = []
    for name, size in sizes.items():
        card = SOURCES.get(name, SourceCard(name, "?", "?"))
        rows.append((name, card.what, card.package, card.licence,
                     f"{size['train']:,}", f"{size['dev']:,}", f"{size['test']:,}"))
    return markdown_table(["source", "what", "package", "licence", "train", "dev", "test"], rows, numeric_from=4)


def _accuracy_table(report: dict) -> list[str]:
    chosen = report["variants"][report["chosen"]]
    served = chosen["test"]
    before = served.get("uncalibrated_ece", {})
    # With a lexical head: the network's own test accuracy beside the served (combined) one.
    network = ((chosen.get("lexical") or {}).get("test_network") or {})
    alone = {name: result["accuracy"] for name, result in network.get("sources", {}).items()}
    rows = []
    for name, result in served["sources"].items():
        target = TARGETS.get(name)
        rows.append((name, f"{result['rows']:,}", *([_points(alone.get(name))] if network else []),
                     _points(result["accuracy"]),
                     "-" if target is None else f">= {target:.2f}: {_met(result['accuracy'], target)}",
                     _points(before.get(name)), _points(result["ece"])))
    rows.append(("all (mean over sources)", f"{sum(s['rows'] for s in served['sources'].values()):,}",
                 *([_points(network.get("mean_accuracy"))] if network else []),
                 _points(served["mean_accuracy"]), "", _points(before.get("all")),
                 f"{_points(served['ece'])} (<= {ECE_TARGET}: {_met(served['ece'], ECE_TARGET, at_least=False)})"))
    accuracy = ["network alone", "accuracy served"] if network else ["accuracy"]
    return markdown_table(["test split", "rows", *accuracy, "target met", "ECE before calibration", "ECE served"],
                          rows, text_columns=(len(accuracy) + 2,))


# How each int8 variant was quantized (`VariantReport.quantization`), in the card's words.
QUANTIZATION_WORDS = {
    STATIC: "static quantization",
    OUTLIER_SAFE: "static quantization, 7-bit weights, feed-forward down-projections in fp32",
    DYNAMIC: "dynamic quantization",
    None: "dynamic quantization",  # reports written before the method was recorded
}


def _variant_table(report: dict) -> list[str]:
    """Dev accuracy per source of every variant built (what chose the served one), and its size."""
    variants = report["variants"]
    sources = list((variants[report["chosen"]].get("dev") or {}).get("sources", {}))
    rows = []
    for name, variant in variants.items():
        label = "fp32 ONNX" if name == "fp32" else f"int8 ONNX ({QUANTIZATION_WORDS[variant.get('quantization')]})"
        dev = (variant.get("dev") or {}).get("sources", {})
        rows.append((label + (" (served)" if name == report["chosen"] and not variant.get("lexical") else ""),
                     f"{variant['size_mb']} MB", *(_points(dev.get(source, {}).get("accuracy")) for source in sources),
                     _points(variant["dev_accuracy"])))
        combined = (variant.get("lexical") or {}).get("dev")
        if combined:  # what is served: the chosen variant with the lexical head (chosen before it was fitted)
            rows.append((label + " with the lexical head (served; its combination fitted on these dev answers)", "",
                         *(_points(combined["sources"].get(source, {}).get("accuracy")) for source in sources),
                         _points(combined["mean_accuracy"])))
    return markdown_table(["variant", "size", *(f"dev {source}" for source in sources), "dev mean"], rows)


def _speed_table(report: dict) -> list[str]:
    variants = report["variants"]
    batches = list(next(iter(variants.values())).get("sentences_per_second") or {})
    rows = [(name, *(f"{v['sentences_per_second'][b]:.0f}" for b in batches))
            for name, v in variants.items() if v.get("sentences_per_second")]
    return markdown_table(["variant", *(f"sentences/s batch {b}" for b in batches)], rows)


def render(report: dict, metrics: dict, speeds: bool = False) -> str:
    """The card as Markdown; `speeds` adds the machine's throughput table (not in the README)."""
    lines = [*_overview(metrics, report), "", "Data (every source's rows after cleaning and deduplication; the VADER "
             "tweets, Amazon and NYT sets are never trained on, only used to remove overlaps):", "",
             *_data_table(metrics), "",
             "Held-out test accuracy of the served model as it answers (chunk mode: a long review's windows are "
             "all classified and combined; the test split is scored once, on the served variant only), and "
             "the expected calibration error of the top score (15 bins):", "",
             *_accuracy_table(report), "",
             "Every variant built, on the dev splits (which chose the served one):", "",
             *_variant_table(report), "",
             f"The served default is **{report['chosen']}**: {report['reason']}. Mean accuracy counts each "
             "source once."]
    if speeds:
        lines += ["", f"Speed on {report.get('machine', 'the build machine')} ({report.get('date', '')}), ONNX Runtime "
                  f"with {report.get('threads')} threads, dev sentences of up to 64 tokens, tokenization included:",
                  "", *_speed_table(report)]
    return "\n".join(lines) + "\n"


def replace_in_readme(readme: str, card: str) -> str:
    """`readme` with the text between the card markers replaced by `card`."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no model card markers ({BEGIN} ... {END})")
    return readme[:start + len(BEGIN)] + "\n" + card + readme[end:]


def readme_card(readme: str) -> str:
    """The card text between the README's markers."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError("the README has no model card markers")
    return readme[start + len(BEGIN) + 1:end]


def main(repository: Path, readme: Path | None, sources: Sequence[str] = ()) -> str:
    report, metrics = load_build(repository)
    card = render(report, metrics)
    if readme is not None:
        readme.write_text(replace_in_readme(readme.read_text(), card))
    return card
