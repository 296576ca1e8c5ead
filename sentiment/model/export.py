"""Export an HF `*ForSequenceClassification` checkpoint to ONNX (fp32 and int8) and a Triton repository.

The default variant is chosen on the dev split (never the test split): int8 when it loses at most
`max_int8_loss` accuracy points against fp32, else fp32. The int8 model is quantized statically:
activation ranges calibrated once on training texts, so a text's answer never depends on the
texts batched with it (dynamic quantization scales activations per batch; it is used only where no
training texts are at hand). Dev accuracy and calibration per source and the speed of both
variants, and the test figures of the variant served (the test split is scored once), go into
`<repository>/sentiment/<version>/bundle/export_report.json`, which the model card is written from
(`sentiment.model.card`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sentiment.model.answers import WindowAnswers, fit_document_temperatures
from sentiment.model.calibration import fit_temperature
from sentiment.model.checkpoint import CheckpointInfo, ExportError, inspect_checkpoint
from sentiment.model.data import Example, read_split
from sentiment.model.evaluation import accuracy, predict_in_length_order, split_report
from sentiment.model.export_options import ExportOptions
from sentiment.model.fingerprint import sha256_file
from sentiment.model.triton_repository import (FIRST_VERSION, MODEL_NAME, OUTPUT_NAME, TritonModelSpec, read_spec,
                                                write_repository)
from transformer.bundle import ModelBundle
from transformer.core.lexical import LEXICAL_FILE, LexicalHead, content_ids
from transformer.core.tokenization import REPLACEMENTS_FILE, TextEncoder
from transformer.core.windows import DEFAULT_AGGREGATION

log = logging.getLogger(__name__)

OPSET = 18
__all__ = ["ExportError", "ExportOptions", "OnnxClassifier", "export", "inspect_checkpoint"]


def export_onnx(checkpoint: Path, info: CheckpointInfo, out_file: Path) -> None:
    """Trace the classifier to ONNX with dynamic batch and sequence axes; output `logits` only."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, attn_implementation="eager")
    model.eval()
    names = list(info.input_names)
    accepted = set(inspect.signature(model.forward).parameters)
    if not set(names) <= accepted:
        raise ExportError(f"{model.__class__.__name__}.forward does not take {sorted(set(names) - accepted)}")

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors):
            return self.inner(**dict(zip(names, tensors))).logits

    # A padded sample: tracing with an all-ones mask could let the model skip masking altogether.
    input_ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 1012, 102, 0], [101, 7592, 102, 0, 0, 0, 0, 0]])
    mask = (input_ids != 0).long()
    sample = (input_ids, mask, torch.zeros_like(input_ids))[: len(names)]
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(
            LogitsOnly(model), sample, str(out_file),
            input_names=names, output_names=[OUTPUT_NAME],
            dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )


CALIBRATION_TEXTS = 256    # training texts that fix the int8 activation ranges
CALIBRATION_BATCH = 16


# How an int8 variant was quantized (`VariantReport.quantization`), as the model card words it.
STATIC, OUTLIER_SAFE, DYNAMIC = "static", "static-outlier-safe", "dynamic"


def feed_forward_down_projections(onnx_file: Path) -> list[str]:
    """The MatMuls whose weight maps more features to fewer: each layer's feed-forward down-projection
    (4H to H; attention projections are square and the up-projection widens). Their inputs are the
    GELU's outputs, where encoders such as MPNet carry rare activations 30x their 99.9th percentile:
    one per-tensor int8 range cannot hold both. Told apart by the weights' shapes, so it holds for
    any BERT-like export whatever its node names."""
    import onnx

    model = onnx.load(str(onnx_file), load_external_data=False)
    shapes = {tensor.name: tuple(tensor.dims) for tensor in model.graph.initializer}
    return [node.name for node in model.graph.node if node.op_type == "MatMul"
            and len(shape := shapes.get(node.input[1], ())) == 2 and shape[0] > shape[1]]


def quantize_int8(fp32_file: Path, int8_file: Path, calibration: Sequence[dict] = (),
                  outlier_safe: bool = False) -> str:
    """Quantize to int8 with onnxruntime; returns the method used (`STATIC`, `OUTLIER_SAFE`, `DYNAMIC`).

    With `calibration` (model input batches) it is static: MatMul weights int8 per channel, activation
    ranges fixed by those batches (MinMax), QDQ format, so a row's answer is the same in any batch; the
    embedding tables are stored in 8 bits too (Gather: the file shrinks by about 35 MB). Measured on
    recipe 3's checkpoint (dev, mean over sources, against fp32): this loses 0.08 points. Leaving the
    feed-forward down-projections in fp32 lost 0.10 and was slower than fp32 at batch 1; percentile
    calibration (99.99) lost 0.32, gaining on movie snippets and losing 2.2 points on IMDB reviews.

    `outlier_safe` is the export's second try for encoders that plain static int8 breaks (MPNet-base
    read movie snippets at chance): the feed-forward down-projections stay fp32
    (`feed_forward_down_projections`), and weights use 7 bits (`reduce_range`), because on CPUs
    without VNNI (AVX2 only) onnxruntime's u8 x s8 kernels add pairs of products in 16 bits, which
    larger weights overflow. On 400 dev movie snippets of an MPNet fine-tuned on them (fp32 0.943),
    each alone left it at 0.520 and 0.768, together 0.938.
    The default MiniLM needs neither, and 7-bit weights alone would cost it 0.4 dev points (recipe 5's
    network, first windows: 0.8798 to 0.8760), so it is only the second try.

    Without `calibration`, dynamic (activations scaled per batch at run time): only for checkpoints
    that come with no training texts."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(progress(calibration, desc="calibrate int8", unit="batch"))

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # the quantizer logs one INFO line per tensor on the root logger
    try:
        if not calibration:
            quantize_dynamic(str(fp32_file), str(int8_file), weight_type=QuantType.QInt8, per_channel=False)
            return DYNAMIC
        quantize_static(str(fp32_file), str(int8_file), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        op_types_to_quantize=["MatMul", "Gather"],
                        nodes_to_exclude=feed_forward_down_projections(fp32_file) if outlier_safe else None,
                        reduce_range=outlier_safe,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        return OUTLIER_SAFE if outlier_safe else STATIC
    finally:
        root.setLevel(level)


def calibration_batches(encoder: TextEncoder, texts: Sequence[str], count: int = CALIBRATION_TEXTS,
                        seed: int = 0) -> list[dict]:
    """Model inputs for static quantization: `count` of `texts` drawn with a fixed seed, in batches."""
    if not texts:
        return []
    rng = np.random.default_rng(seed)
    chosen = [texts[i] for i in sorted(rng.choice(len(texts), min(count, len(texts)), replace=False))]
    return [dict(encoder.encode_batch(chosen[i:i + CALIBRATION_BATCH]))
            for i in range(0, len(chosen), CALIBRATION_BATCH)]


def answers_report(answers: WindowAnswers, examples: Sequence[Example], document_temperature: float = 1.0,
                   temperature: float | None = None) -> dict:
    """`split_report` of `answers` as the service gives them (the default aggregation, a multi-window
    answer divided by `document_temperature`); with `temperature`, the whole one their logits were
    divided by, also the calibration error with no temperature anywhere (`uncalibrated_ece`)."""
    result = split_report(answers.log_scores(DEFAULT_AGGREGATION, document_temperature), examples)
    uncalibrated = answers.log_scores_before(temperature)
    if uncalibrated is not None:
        before = split_report(uncalibrated, examples)
        result["uncalibrated_ece"] = {"all": before["ece"], **{name: s["ece"] for name, s in before["sources"].items()}}
    return result


def divide_output_layer(onnx_file: Path, temperature: float) -> bool:
    """Divide the weights and bias of the Gemm that produces the logits by `temperature`, in place, so
    the file's softmax is calibrated (argmax unchanged); False where the logits come from another op.
    The head is a float Gemm in both variants (static int8 quantizes MatMuls and Gathers only)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_file))
    producers = {output: node for node in model.graph.node for output in node.output}
    node = producers.get(OUTPUT_NAME)
    while node is not None and node.op_type == "Identity":
        node = producers.get(node.input[0])
    initializers = {init.name: init for init in model.graph.initializer}
    if node is None or node.op_type != "Gemm" or not all(name in initializers for name in node.input[1:3]):
        return False
    for name in node.input[1:3]:
        scaled = numpy_helper.to_array(initializers[name]) / np.float32(temperature)
        initializers[name].CopyFrom(numpy_helper.from_array(scaled.astype(np.float32), name))
    onnx.save(model, str(onnx_file))
    return True


class OnnxClassifier:
    """ONNX Runtime session plus the serving tokenizer (and the lexical head beside it, if the model
    has one): evaluation as the service answers, and the model-alone benchmark."""

    def __init__(self, onnx_file: Path, encoder: TextEncoder, threads: int = 2):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        self.encoder = encoder
        self.head = LexicalHead.beside(encoder.tokenizer_file)
        self.name = Path(onnx_file).stem

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """The network's logits of each text's first window (no lexical head)."""
        batch = self.encoder.encode_batch(texts)
        return self.session.run([OUTPUT_NAME], batch)[0]

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[int]:
        """The label index the service answers for each text (chunk mode, the default aggregation, the
        lexical head combined where the model has one); the network's own first-window label otherwise."""
        if self.head is not None and self.head.combines:
            return [int(row.argmax()) for row in self.window_answers(texts, batch_size).log_scores()]
        return predict_in_length_order(texts, len, self.logits, batch_size)

    def accuracy(self, examples: Sequence[Example]) -> float:
        return accuracy(self.predict([e.text for e in examples]), examples)

    def window_answers(self, texts: Sequence[str], batch_size: int = 64) -> WindowAnswers:
        """Every window's logits of every text, windowed as the service windows them (chunk mode)."""
        windowed = self.encoder.windows(texts)
        flat = [(t, i, window) for t, w in enumerate(windowed) for i, window in enumerate(w.windows)]
        flat.sort(key=lambda item: len(item[2].ids))
        logits = [np.zeros((len(w.windows), 0), dtype=np.float32) for w in windowed]
        for start in progress(range(0, len(flat), batch_size), desc=f"evaluate {self.name}", unit="batch"):
            chunk = flat[start:start + batch_size]
            out = self.session.run([OUTPUT_NAME], self.encoder.pad([window for _, _, window in chunk]))[0]
            for (t, i, _), row in zip(chunk, out):
                if logits[t].shape[1] == 0:
                    logits[t] = np.zeros((len(windowed[t].windows), len(row)), dtype=np.float32)
                logits[t][i] = row
        margins = None if self.head is None else np.array(
            [self.head.margin(content_ids(w.windows, w.new_tokens)) for w in windowed])
        return WindowAnswers(logits, [np.asarray(w.new_tokens) for w in windowed], margins, self.head)

    def report(self, examples: Sequence[Example], document_temperature: float = 1.0,
               temperature: float | None = None) -> dict:
        """Accuracy and calibration error per source, as the service answers (chunk mode, the default
        aggregation, with the bundle's `document_temperature` for it); with `temperature`, the whole
        one the logits were divided by, also the calibration error before any (`uncalibrated_ece`)."""
        return answers_report(self.window_answers([e.text for e in examples]), examples, document_temperature,
                              temperature)

    def sentences_per_second(self, texts: Sequence[str], batch_size: int, min_seconds: float = 2.0) -> float:
        """Throughput over whole batches of `texts` (tokenization included), after one warm-up batch."""
        batches = [texts[i:i + batch_size] for i in range(0, len(texts) - batch_size + 1, batch_size)] or [texts]
        self.logits(batches[0])
        done, started = 0, time.perf_counter()
        while True:
            for batch in batches:
                self.logits(batch)
                done += len(batch)
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                return done / elapsed


@dataclass
class VariantReport:
    name: str
    size_mb: float
    dev_accuracy: float | None = None   # mean over sources (each source counts once)
    test_accuracy: float | None = None  # the served variant only: the test split is scored once
    sentences_per_second: dict[str, float] | None = None
    dev: dict | None = None             # per source: rows, accuracy, ece (`evaluation.split_report`)
    test: dict | None = None
    quantization: str | None = None     # int8 only: STATIC, OUTLIER_SAFE or DYNAMIC
    serving_temperature: float | None = None  # the served variant: what the export divided its output layer by
    # The served variant, per aggregation: what a multi-window answer is divided by (the bundle's copy)
    document_temperatures: dict[str, float] | None = None
    # The served variant with a lexical head: its combinations, its dev figures combined (`dev` is the
    # network's, as for every variant) and the network's test figures alone (`test` is as served, combined)
    lexical: dict | None = None


def progress(items, **options):
    """A progress bar on stderr for one stage of the build (sparse when stderr is not a terminal)."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(items, dynamic_ncols=True, leave=False, mininterval=0.2 if sys.stderr.isatty() else 15.0, **options)


def training_temperature(checkpoint: Path) -> float | None:
    """The temperature the training run divided the head by (`metrics.json`), if it calibrated."""
    try:
        return float(json.loads((checkpoint / "metrics.json").read_text())["calibration"]["temperature"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class HeldOut:
    """What the export measures on, read once: the checkpoint's dev examples, where its test split is
    (scored once, on the served variant), and the temperature the training already divided the head
    by (reports state calibration against the logits before any temperature)."""

    splits_dir: Path
    dev: list[Example]
    training_temperature: float | None

    @classmethod
    def of(cls, checkpoint: Path) -> "HeldOut | None":
        """The checkpoint's held-out splits; None when it has none (a user's checkpoint)."""
        splits_dir = checkpoint / "splits"
        if not (splits_dir / "dev.tsv").is_file():
            return None
        return cls(splits_dir, read_split(splits_dir / "dev.tsv"), training_temperature(checkpoint))

    @property
    def dev_labels(self) -> np.ndarray:
        return np.array([e.label for e in self.dev])

    def with_serving(self, serving_temperature: float | None = None) -> float | None:
        """The whole temperature the served logits were divided by: the training's, then the export's
        (None: neither divided them)."""
        if self.training_temperature is None and serving_temperature is None:
            return None
        return (self.training_temperature or 1.0) * (serving_temperature or 1.0)


SPEED_TEXT_TOKENS = 64   # the speed is measured on dev texts up to this long (sentences, not documents)


def _evaluate_dev(onnx_file: Path, encoder: TextEncoder, name: str, held_out: HeldOut | None,
                  speed_batches: Sequence[int], threads: int, dev_answers: dict[str, WindowAnswers]) -> VariantReport:
    """A variant's size, dev accuracy and calibration per source, and speed: what the choice between
    variants reads (its dev window logits go into `dev_answers`, for calibration). The test split is
    left for the variant chosen (`_evaluate_test`)."""
    report = VariantReport(name=name, size_mb=round(onnx_file.stat().st_size / 1e6, 1))
    if held_out is None:
        return report
    runner = OnnxClassifier(onnx_file, encoder, threads=threads)
    texts = [e.text for e in held_out.dev]
    answers = dev_answers[name] = runner.window_answers(texts)
    report.dev = answers_report(answers, held_out.dev, temperature=held_out.with_serving())
    report.dev_accuracy = report.dev["mean_accuracy"]
    lengths = [len(e.ids) for e in encoder.tokenize(texts)]
    texts = [t for t, n in zip(texts, lengths) if n <= SPEED_TEXT_TOKENS] or texts
    report.sentences_per_second = {
        str(b): round(runner.sentences_per_second(texts, b, min_seconds=1.5), 1) for b in speed_batches
    }
    return report


def _evaluate_test(report: VariantReport, onnx_file: Path, encoder: TextEncoder, held_out: HeldOut,
                   threads: int) -> None:
    """The served variant's test accuracy and calibration per source, measured once, as served."""
    runner = OnnxClassifier(onnx_file, encoder, threads=threads)
    test = read_split(held_out.splits_dir / "test.tsv")
    answers = runner.window_answers([e.text for e in test])
    document_temperature = (report.document_temperatures or {}).get(DEFAULT_AGGREGATION, 1.0)
    whole = held_out.with_serving(report.serving_temperature)
    report.test = answers_report(answers, test, document_temperature, whole)
    report.test_accuracy = report.test["mean_accuracy"]
    if answers.combined and report.lexical is not None:
        report.lexical["test_network"] = answers_report(answers.with_head(None), test, document_temperature, whole)


def _calibrate_served(chosen: ChosenVariant, dev_answers: WindowAnswers, held_out: HeldOut) -> None:
    """Fit a temperature on the served variant's own dev answers (chunk mode) and divide its output
    layer by it; then fit, per aggregation, a temperature of the answers to texts read in several
    windows (the bundle's `document_temperatures`, applied by the transformer after aggregating).
    Quantization changes how confident the model is: on recipe 3's checkpoint, static int8 answered
    less confidently than the fp32 model the training's temperature was fitted on (served test ECE
    0.058 with that temperature alone; 0.80 on int8's dev answers was the best fit), so the file that
    is served is calibrated on what it answers. Whole reviews were still under-confident after that
    (IMDB test ECE 0.074): see `answers.fit_document_temperatures`."""
    labels = held_out.dev_labels
    temperature = fit_temperature(dev_answers.log_scores(), labels)
    if not divide_output_layer(chosen.file, temperature):
        log.info("the logits do not come from a Gemm with constant weights: the served file keeps its scores")
        return
    report = chosen.reports[chosen.name]
    report.serving_temperature = round(temperature, 4)
    served = dev_answers.divided(temperature)
    report.document_temperatures = fit_document_temperatures(served, labels)
    document_temperature = report.document_temperatures.get(DEFAULT_AGGREGATION, 1.0)
    report.dev = answers_report(served, held_out.dev, document_temperature, held_out.with_serving(temperature))
    log.info("calibrated the served %s file on its dev answers: output layer divided by %.3f, answers to "
             "texts read in several windows (%s) by %.3f", chosen.name, temperature, DEFAULT_AGGREGATION,
             document_temperature)
    if served.head is not None and served.margins is not None:
        _combine_lexical(chosen, served, held_out, document_temperature, held_out.with_serving(temperature))


# Which texts the lexical head answers with the network: documents only. Combined on every text it
# gained dev points on one-window texts too (recipe 4's int8 file, the combination cross-validated
# within dev: movies +1.9, tweets +2.0, UCI -0.3), but an n-gram model cannot read negation: combined,
# "not bad at all" came out NEGATIVE (0.69), which the network alone reads right. A whole review is
# where a model of every word beats the mean of 128-token windows (IMDB dev +2.0).
LEXICAL_KINDS = ("documents",)


def _combine_lexical(chosen: ChosenVariant, served: WindowAnswers, held_out: HeldOut, document_temperature: float,
                     whole_temperature: float | None) -> None:
    """Fit how the lexical head combines with the served variant's calibrated dev answers (for the
    `LEXICAL_KINDS` of text) and write the combined head beside the export's tokenizer, where the test
    evaluation and the bundle take it from; with nothing fitted (too few dev texts), the head is dropped."""
    from sentiment.model.lexical_fit import fit_combinations

    log_scores = served.with_head(None).log_scores(DEFAULT_AGGREGATION, document_temperature)
    texts, documents = fit_combinations(log_scores[:, 1] - log_scores[:, 0], served.margins, held_out.dev_labels,
                                        served.documents, LEXICAL_KINDS)
    head = served.head.with_combinations(texts, documents)
    if not head.combines:
        log.info("too few dev texts to combine the lexical head with: the bundle goes without it")
        chosen.tokenizer_file.with_name(LEXICAL_FILE).unlink()
        return
    head.write_beside(chosen.tokenizer_file)
    report = chosen.reports[chosen.name]  # its `dev` stays the network's: what the variants are compared on
    dev = answers_report(served.with_head(head), held_out.dev, document_temperature, whole_temperature)
    report.lexical = {kind: None if how is None else dataclasses.asdict(how)
                      for kind, how in (("texts", texts), ("documents", documents))}
    report.lexical["dev"] = dev
    log.info("lexical head combined with the served %s file: dev accuracy %.4f (the network alone %.4f)",
             chosen.name, dev["mean_accuracy"], report.dev["mean_accuracy"])


def machine_description() -> str:
    """The CPU the speeds were measured on, e.g. "AMD EPYC, 2 cores, AVX-512" (speeds differ by machine)."""
    import os
    import platform

    model, flags = platform.processor() or platform.machine(), ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                      if line.startswith("model name")), model)
        flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
    return f"{model}, {os.cpu_count()} cores, {isa}"


def choose_variant(fp32: VariantReport, int8: VariantReport | None, max_int8_loss: float) -> tuple[str, str]:
    """Pick the served variant on dev accuracy; returns (variant, reason)."""
    if int8 is None:
        return "fp32", "int8 variant not built"
    if fp32.dev_accuracy is None or int8.dev_accuracy is None:
        return "fp32", "no dev split to measure int8 against fp32; pass --variant int8 to force it"
    loss = _int8_loss(fp32, int8)
    if loss <= max_int8_loss:
        return "int8", f"{int8_accuracy_change(loss)} (it may lose up to {max_int8_loss}){_int8_gains(fp32, int8)}"
    return "fp32", f"{int8_accuracy_change(loss)}, over the limit of {max_int8_loss}"


def _int8_gains(fp32: VariantReport, int8: VariantReport) -> str:
    """What else int8 gives, in words that hold on any machine: its size against fp32's (its speed
    is the machine's, in the bundle's MODEL_CARD.md and export_report.json)."""
    return f" and is {fp32.size_mb / int8.size_mb:.1f}x smaller" if int8.size_mb else ""


def int8_accuracy_change(loss_points: float) -> str:
    """The dev accuracy of int8 against fp32 in words: "loses 0.20 points", "gains 0.40 points"."""
    if round(loss_points, 2) == 0:
        return "int8 has the same dev accuracy as fp32"
    verb = "loses" if loss_points > 0 else "gains"
    return f"int8 {verb} {abs(loss_points):.2f} points of dev accuracy against fp32"


@dataclass(frozen=True)
class ChosenVariant:
    name: str
    reason: str
    file: Path
    reports: dict[str, VariantReport]
    tokenizer_file: Path  # the export's tokenizer.json, with what ships beside it


# What a model ships beside its tokenizer.json (each optional): everything built on that tokenizer applies them.
TOKENIZER_SIDECARS = (REPLACEMENTS_FILE, LEXICAL_FILE)


def copy_sidecars(source_dir: Path, tokenizer_file: Path) -> None:
    """The files a model ships beside its tokenizer.json, from `source_dir` to beside `tokenizer_file`."""
    for name in TOKENIZER_SIDECARS:
        if (Path(source_dir) / name).is_file():
            shutil.copyfile(Path(source_dir) / name, tokenizer_file.with_name(name))


def copy_tokenizer(source: Path, target: Path) -> Path:
    """`source` tokenizer.json to `target`, with the files the model ships beside it."""
    shutil.copyfile(source, target)
    copy_sidecars(source.parent, target)
    return target


def _save_tokenizer(checkpoint: Path, target: Path) -> Path:
    """The checkpoint's fast tokenizer as one tokenizer.json, without padding or truncation (the
    transformer pads and truncates itself), with what the checkpoint ships beside its tokenizer (text
    replacements, a lexical head)."""
    from transformers import AutoTokenizer

    backend = AutoTokenizer.from_pretrained(checkpoint, use_fast=True).backend_tokenizer
    backend.no_padding()
    backend.no_truncation()
    backend.save(str(target))
    copy_sidecars(checkpoint, target)
    return target


def _build_variants(checkpoint: Path, info: CheckpointInfo, encoder: TextEncoder, scratch: Path,
                    options: ExportOptions, evaluate, dev_answers: dict[str, WindowAnswers]) -> ChosenVariant:
    """ONNX fp32 (and int8 unless fp32 is forced), each evaluated on dev (`evaluate` files each
    variant's dev answers in `dev_answers` under its name), and the one to serve."""
    fp32_file, int8_file = scratch / "model.fp32.onnx", scratch / "model.int8.onnx"
    export_onnx(checkpoint, info, fp32_file)
    reports = {"fp32": evaluate(fp32_file, "fp32")}
    if options.variant in ("auto", "int8"):
        train_file = checkpoint / "splits" / "train.tsv"
        texts = [e.text for e in read_split(train_file)] if train_file.is_file() else []
        log.info("quantizing to int8 (%s)", "static, calibrated on training texts" if texts else
                 "dynamic: no training texts next to the checkpoint to calibrate on")
        calibration = calibration_batches(encoder, texts)
        method = quantize_int8(fp32_file, int8_file, calibration)
        reports["int8"] = evaluate(int8_file, "int8")
        reports["int8"].quantization = method
        if method == STATIC and _int8_loss(reports["fp32"], reports["int8"]) > options.max_int8_loss:
            int8_file = _quantize_outlier_safe(fp32_file, int8_file, calibration, reports, evaluate, dev_answers)
    if options.variant == "auto":
        name, reason = choose_variant(reports["fp32"], reports.get("int8"), options.max_int8_loss)
    else:
        name, reason = options.variant, f"--variant {options.variant}"
    return ChosenVariant(name, reason, fp32_file if name == "fp32" else int8_file, reports, encoder.tokenizer_file)


def _int8_loss(fp32: VariantReport, int8: VariantReport) -> float:
    """Dev accuracy points int8 loses against fp32 (0 when either was not measured)."""
    if fp32.dev_accuracy is None or int8.dev_accuracy is None:
        return 0.0
    return (fp32.dev_accuracy - int8.dev_accuracy) * 100


def _quantize_outlier_safe(fp32_file: Path, plain_file: Path, calibration: Sequence[dict],
                           reports: dict[str, VariantReport], evaluate, dev_answers: dict[str, WindowAnswers]) -> Path:
    """Plain static int8 lost too much: quantize again with `outlier_safe` and keep, as "int8", the
    better of the two on dev (its dev answers too, which calibration reads); the other stays in the
    report as "int8-plain" or "int8-outlier-safe", so the card shows what was tried. Returns the file of
    the int8 kept."""
    plain = reports["int8"]
    log.info("plain static int8: %s; quantizing again with 7-bit weights and the feed-forward down-projections "
             "in fp32", int8_accuracy_change(_int8_loss(reports["fp32"], plain)))
    safe_file = plain_file.with_name("model.int8-outlier-safe.onnx")
    method = quantize_int8(fp32_file, safe_file, calibration, outlier_safe=True)
    safe = reports["int8-outlier-safe"] = evaluate(safe_file, "int8-outlier-safe")
    safe.quantization = method
    if (safe.dev_accuracy or 0.0) < (plain.dev_accuracy or 0.0):
        return plain_file
    del reports["int8-outlier-safe"]
    reports["int8"], reports["int8-plain"] = dataclasses.replace(safe, name="int8"), dataclasses.replace(
        plain, name="int8-plain")
    dev_answers["int8-plain"], dev_answers["int8"] = dev_answers["int8"], dev_answers.pop("int8-outlier-safe")
    return safe_file


def _beside_served(repository: Path, spec: TritonModelSpec, version: str) -> TritonModelSpec:
    """The spec serving `version` beside the versions already served; refuses a model that one
    configuration cannot describe together with them."""
    served = read_spec(repository)
    if version in served.fingerprints or (repository / MODEL_NAME / version).exists():
        raise ExportError(f"version {version} already exists in {repository}; a version is never overwritten")
    for field_name in ("input_names", "num_labels", "max_sequence_length"):
        if getattr(served, field_name) != getattr(spec, field_name):
            raise ExportError(f"the new model's {field_name} ({getattr(spec, field_name)}) differ from the served "
                              f"model's ({getattr(served, field_name)}): one Triton configuration describes every "
                              "version, so serve it under another model name instead")
    return dataclasses.replace(served, fingerprints={**served.fingerprints, **spec.fingerprints})


def _write_version(repository: Path, version: str, onnx_file: Path, info: CheckpointInfo, options: ExportOptions,
                   adding: bool) -> tuple[Path, TritonModelSpec]:
    """The version's model files and the configurations that serve it (beside the served versions
    when `adding`, else alone in a new repository); returns its bundle folder and the spec."""
    spec = TritonModelSpec(input_names=info.input_names, num_labels=len(info.labels),
                           fingerprints={version: sha256_file(onnx_file)}, max_sequence_length=info.max_length,
                           **options.spec_fields())
    if adding:
        spec = _beside_served(repository, spec, version)
    elif (repository / MODEL_NAME).exists():
        shutil.rmtree(repository / MODEL_NAME)
    model_dir = write_repository(repository, onnx_file, spec, version)
    bundle_dir = model_dir / version / "bundle"
    bundle_dir.mkdir(parents=True, exist_ok=True)
    return bundle_dir, spec


def export(
    checkpoint: Path,
    repository: Path,
    options: ExportOptions = ExportOptions(),
    *,
    version: str | None = None,
    threads: int = 2,
    speed_batches: Sequence[int] = (1, 8, 32),
    evaluate: bool = True,
    source: dict | None = None,
) -> ModelBundle:
    """Export `checkpoint` into `repository` (a Triton model repository root) and return the bundle.

    Without `version`, the repository is written anew with the checkpoint as version 1. With one,
    the checkpoint becomes that version beside the others, and Triton is told to serve it too (a
    rollout; its inputs, labels and window must match the served model's: one configuration
    describes every version)."""
    started = time.monotonic()
    checkpoint = Path(checkpoint)
    info = inspect_checkpoint(checkpoint, options.max_length)
    held_out = HeldOut.of(checkpoint) if evaluate else None

    with tempfile.TemporaryDirectory(prefix="sentiment-export-") as scratch_name:
        scratch = Path(scratch_name)
        tokenizer_file = _save_tokenizer(checkpoint, scratch / "tokenizer.json")
        encoder = TextEncoder(tokenizer_file, info.max_length, info.uses_token_type_ids)
        log.info("exporting %s (%s) to ONNX opset %d", checkpoint, info.model_type, OPSET)
        dev_answers: dict[str, WindowAnswers] = {}
        chosen = _build_variants(checkpoint, info, encoder, scratch, options,
                                 lambda file, name: _evaluate_dev(file, encoder, name, held_out, speed_batches,
                                                                  threads, dev_answers), dev_answers)
        if held_out is not None:
            _calibrate_served(chosen, dev_answers[chosen.name], held_out)
            _evaluate_test(chosen.reports[chosen.name], chosen.file, encoder, held_out, threads)
        adding, version = version is not None, version or FIRST_VERSION
        bundle_dir, spec = _write_version(repository, version, chosen.file, info, options, adding)
        copy_tokenizer(tokenizer_file, bundle_dir / "tokenizer.json")

    fingerprint = sha256_file(bundle_dir.parent / "model.onnx")
    bundle = ModelBundle(
        version=version,
        labels=info.labels,
        problem_type=info.problem_type,
        score_function=info.score_function,
        max_length=info.max_length,
        uses_token_type_ids=info.uses_token_type_ids,
        lowercase=encoder.lowercases,
        fingerprint=fingerprint,
        max_batch_size=spec.max_batch_size,
        variant=chosen.name,
        document_temperatures=chosen.reports[chosen.name].document_temperatures or {},
        source={"checkpoint": str(checkpoint), "model_type": info.model_type, **(source or {})},
    )
    bundle.write(bundle_dir)
    report = {"chosen": chosen.name, "reason": chosen.reason,
              "variants": {name: asdict(r) for name, r in chosen.reports.items()}, "threads": threads,
              "duration_s": round(time.monotonic() - started, 1), "fingerprint": fingerprint,
              "machine": machine_description(), "date": time.strftime("%Y-%m-%d")}
    (bundle_dir / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if held_out is not None:
        from sentiment.model.card import render

        metrics_file = checkpoint / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        (bundle_dir / "MODEL_CARD.md").write_text(render(report, metrics, speeds=True))
    log.info("exported %s variant (%s) as version %s to %s", chosen.name, chosen.reason, version, repository)
    return bundle
