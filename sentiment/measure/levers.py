"""`sentiment bench --levers`: the effect of each serving knob on the every-text-new workload.

Each lever is one change against the defaults (int8, 2 ms batching delay, max batch 64, two Triton
instances with one ORT thread each, padding to multiples of 8, gRPC, uvloop, tokenization in a thread);
every configuration runs the same short k6 workload on a fresh stack, one after the other.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from sentiment.measure.k6 import LoadResult, LoadShape, run_k6
from sentiment.markdown import markdown_table
from sentiment.measure.report import MarkdownReport
from sentiment.model.export_options import ExportOptions
from sentiment.model.triton_repository import MODEL_NAME, TritonModelSpec, bundle_dir, serving_version, write_repository
from sentiment.paths import default_model_repository


@dataclass(frozen=True)
class Lever:
    name: str
    description: str
    spec: dict = field(default_factory=dict)          # Triton config changes
    transformer_args: tuple[str, ...] = ()
    protocol: str = "grpc-v2"
    variant: str | None = None                        # "fp32": re-export the other ONNX variant


LEVERS = [
    Lever("default", "defaults: int8, delay 2 ms, max batch 64, 2 instances × 1 ORT thread, pad 8, gRPC, uvloop, "
                     "calls of at most 512 padded tokens, 3 in flight"),
    Lever("fp32", "fp32 ONNX instead of int8", variant="fp32"),
    Lever("delay-0", "no dynamic-batching delay (0 µs)", spec={"max_queue_delay_us": 0}),
    Lever("delay-10ms", "dynamic-batching delay 10 ms", spec={"max_queue_delay_us": 10_000}),
    Lever("max-batch-16", "Triton max batch 16", spec={"max_batch_size": 16}),
    Lever("1x2-threads", "1 Triton instance × 2 ORT threads", spec={"instance_count": 1, "intra_op_threads": 2}),
    Lever("3x1-threads", "3 Triton instances × 1 ORT thread", spec={"instance_count": 3, "intra_op_threads": 1}),
    Lever("1x1-thread", "1 instance × 1 ORT thread (a core left to the transformer)",
          spec={"instance_count": 1, "intra_op_threads": 1}),
    Lever("pad-1", "no length bucketing (pad to the longest text only)", transformer_args=("--pad_to_multiple", "1")),
    Lever("pad-32", "pad token length to multiples of 32", transformer_args=("--pad_to_multiple", "32")),
    Lever("rest", "REST v2 to Triton instead of gRPC", protocol="v2"),
    Lever("asyncio", "asyncio event loop instead of uvloop", transformer_args=("--event-loop", "asyncio")),
    Lever("inline-tokenize", "tokenize on the event loop instead of a thread",
          transformer_args=("--tokenizer_threads", "0")),
    Lever("call-1024", "at most 1,024 padded tokens per Triton call",
          transformer_args=("--max_batch_tokens", "1024")),
    Lever("call-4096", "at most 4,096 padded tokens per Triton call", transformer_args=("--max_batch_tokens", "4096")),
    Lever("calls-2", "2 Triton calls in flight (one per instance)", transformer_args=("--max_concurrent_batches", "2")),
    Lever("calls-4", "4 Triton calls in flight", transformer_args=("--max_concurrent_batches", "4")),
]


@dataclass(frozen=True)
class LeverOptions:
    names: tuple[str, ...] = ()       # only these levers (empty: all)
    hold: str = "30s"                 # hold of each run
    rounds: int = 1                   # interleaved rounds; the median round is reported
    section: str = "lever-results"    # the BENCHMARKS.md section (marker) to write

    def chosen(self) -> list[Lever]:
        return [lever for lever in LEVERS if not self.names or lever.name in self.names]

    def shape(self, bench_shape: LoadShape) -> LoadShape:
        """The bench's load, with the short ramps and the hold each lever run gets."""
        return replace(bench_shape, ramp_up="5s", hold=self.hold, ramp_down="2s")


def lever_repository(lever: Lever, work: Path, checkpoint: Path) -> Path:
    """A model repository for this lever: the default one, re-configured or re-exported."""
    source = default_model_repository()
    if lever.variant:
        from sentiment.model.export import export

        target = work / f"repo-{lever.name}"
        export(checkpoint, target, ExportOptions(variant=lever.variant), evaluate=False)
        return target
    if not lever.spec:
        return source
    from transformer.bundle import ModelBundle

    version = serving_version(source)
    bundle = ModelBundle.load(bundle_dir(source, version))
    spec_fields = {"input_names": tuple(bundle.input_names), "num_labels": len(bundle.labels),
                   "fingerprints": {version: bundle.fingerprint}, "max_sequence_length": bundle.max_length} | lever.spec
    target = work / f"repo-{lever.name}"
    write_repository(target, source / MODEL_NAME / version / "model.onnx", TritonModelSpec(**spec_fields), version)
    shutil.copytree(bundle_dir(source, version), bundle_dir(target, version), dirs_exist_ok=True)
    if "max_batch_size" in lever.spec:  # the transformer splits misses by the bundle's max batch size
        (bundle_dir(target, version) / "bundle.json").write_text(
            bundle.model_copy(update={"max_batch_size": lever.spec["max_batch_size"]}).model_dump_json(indent=2))
    return target


def _median(results: list[LoadResult]) -> LoadResult:
    """The run with the median throughput (rounds interleave the levers, so drift hits all alike)."""
    return sorted(results, key=lambda r: r.texts_per_s)[len(results) // 2]


def run_levers(options: LeverOptions, shape: LoadShape, checkpoint: Path,
               out: Path) -> list[tuple[Lever, LoadResult, list[float]]]:
    chosen = options.chosen()
    runs: dict[str, list[LoadResult]] = {lever.name: [] for lever in chosen}
    with tempfile.TemporaryDirectory(prefix="sentiment-levers-") as scratch:
        repositories = {lever.name: lever_repository(lever, Path(scratch), checkpoint) for lever in chosen}
        for round_index in range(options.rounds):
            for lever in chosen:
                result = _run_lever(options.shape(shape), lever, repositories[lever.name], out / f"round-{round_index}")
                runs[lever.name].append(result)
    return [(lever, _median(runs[lever.name]), [r.texts_per_s for r in runs[lever.name]]) for lever in chosen]


def _run_lever(shape: LoadShape, lever: Lever, repository: Path, out: Path) -> LoadResult:
    from sentiment.stack.up import Stack, StackConfig

    stack = Stack(StackConfig.on_free_ports(repository, out / "levers" / lever.name, protocol=lever.protocol,
                                            transformer_args=lever.transformer_args))
    try:
        stack.start()
        print(f"lever {lever.name}: {lever.description} ...", flush=True)
        environment = shape.environment(stack.url) | {"CACHE_HIT_RATE": 0}
        result = run_k6(out / "levers" / lever.name / "k6", lever.name, environment, html_report=False)
        print(f"  {result.texts_per_s:.0f} texts/s, p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms", flush=True)
    finally:
        stack.stop()
    return result


def levers_report(results: list[tuple[Lever, LoadResult, list[float]]], command: str, rounds: int) -> MarkdownReport:
    baseline = next((r for lever, r, _ in results if lever.name == "default"), None)
    rows = []
    for lever, result, rounds_seen in results:
        ratio = f"×{result.texts_per_s / baseline.texts_per_s:.2f}" if baseline and baseline.texts_per_s else "-"
        health = f"{result.health_p99_ms:.1f}" if result.health_p99_ms is not None else "-"
        rows.append((lever.description, f"{result.texts_per_s:.0f}", ratio, f"{result.p50_ms:.0f}",
                     f"{result.p99_ms:.0f}", health, ", ".join(f"{v:.0f}" for v in rounds_seen)))
    report = MarkdownReport(f"Levers (`{command}`)", command, level=2, facts={
        "workload": f"every text new, 10 VUs, 10 texts per request; each lever on a fresh stack; {rounds} round(s), "
                    "the levers interleaved in each, the median round shown (all rounds' texts/s in the last column)"})
    return report.add(markdown_table(("lever", "texts/s", "vs default", "p50 ms", "p99 ms", "health p99 ms",
                                       "texts/s per round"), rows, text_columns=(6,)))


def run_levers_report(options: LeverOptions, shape: LoadShape, report_file: Path, out: Path, command: str) -> str:
    """Measure the levers on the default model and write their section of BENCHMARKS.md; returns it."""
    from sentiment.model.build import build

    checkpoint = build(default_model_repository()).checkpoint
    results = run_levers(options, shape, checkpoint, out)
    return levers_report(results, command, options.rounds).replace_section(report_file, options.section)
