"""`sentiment bench`: this stack against the classic FastAPI + pipeline service, side by side in one run.

Runs (1) the model alone (ONNX Runtime on the served ONNX file, batch 1/8/32/64), (2) the classic
service (`classic_service.py`) and (3) this stack under the same k6 workloads, plus a saturation
run of the stack, and writes BENCHMARKS.md with the command, machine, tables and ratios. The
mixed-length workload (`mixed`: 80 % short texts, 15 % of 100-400 tokens, 5 % of 1,000-3,000) is
measured in tokens/s against the model alone on the same texts and has its own section
(`mixed-results`); the other workloads' section (`bench-results`) is rewritten only by a run of all
of them.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sentiment.measure.k6 import LoadResult, LoadShape, run_k6
from sentiment.measure.loadtest import service_healthy
from sentiment.markdown import markdown_table
from sentiment.measure.report import MarkdownReport
from sentiment.model.triton_repository import serving_version
from sentiment.paths import REPO_ROOT, default_model_repository
from sentiment.stack.processes import ManagedProcess, free_port
from sentiment.stack.redis_server import redis_process, redis_url

if TYPE_CHECKING:
    from sentiment.measure.stack_probe import StackProbe


@dataclass(frozen=True)
class Workload:
    environment: dict
    description: str
    pool: bool = False  # k6 reads the run's text pool (TEXT_POOL_FILE) instead of making up its texts


WORKLOADS = {
    "new": Workload({"CACHE_HIT_RATE": 0, "HIT_GRANULARITY": "request"}, "every text new (CACHE_HIT_RATE 0)"),
    "repeat": Workload({"CACHE_HIT_RATE": 1, "HIT_GRANULARITY": "request"}, "same request repeated (CACHE_HIT_RATE 1)"),
    "mix80": Workload({"CACHE_HIT_RATE": 0.8, "HIT_GRANULARITY": "text", "WARM_POOL_SIZE": 50},
                      "80 % of texts from a 50-sentence warm pool"),
    "mixed": Workload({"CACHE_HIT_RATE": 0}, "mixed lengths (80 % short, 15 % 100-400 tokens, 5 % 1,000-3,000), "
                      "every text new", pool=True),
}
MIXED_SECTION, GENERAL_SECTION = "mixed-results", "bench-results"


@dataclass(frozen=True)
class SaturationSteps:
    """Open model, every text new: one constant arrival rate per step, stepped up past capacity."""

    start: int = 40   # requests/s of the first step
    step: int = 20
    steps: int = 6

    def rates(self) -> list[int]:
        return [self.start + index * self.step for index in range(self.steps)]


@dataclass(frozen=True)
class BenchOptions:
    workloads: tuple[str, ...] = tuple(WORKLOADS)
    shape: LoadShape = LoadShape(vus=10, ramp_up="10s", hold="60s", ramp_down="5s")
    threads: int = 2                                 # inference threads of the classic service and the model alone
    classic: bool = True                             # also measure the classic service
    saturation: SaturationSteps | None = SaturationSteps()
    transformer_args: tuple[str, ...] = ()
    report: Path = REPO_ROOT / "BENCHMARKS.md"
    text_pool: Path | None = None                    # the mixed workload's pool (written by run_bench)

    def general_workloads(self) -> list[str]:
        return [name for name in self.workloads if not WORKLOADS[name].pool]

    def writes_general_section(self) -> bool:
        """Only a run of every k6-generated workload replaces their section (a partial run keeps the last full one)."""
        return set(self.general_workloads()) == {n for n, w in WORKLOADS.items() if not w.pool}


@dataclass
class ServiceRun:
    name: str
    results: dict[str, LoadResult] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def bench_texts(count: int, seed: int = 1764300000) -> list[str]:
    """Sentences shaped like the k6 workload's new texts (same generator, unique tails)."""
    subjects = ["The film", "This movie", "The plot", "The acting", "The soundtrack", "The script", "The ending"]
    predicates = ["is a joy from start to finish", "is a tedious, muddled mess", "left me cold and bored",
                  "is warm, funny and beautifully made", "never rises above its clichés", "feels lazy and overlong"]
    return [f"{subjects[i % len(subjects)]} {predicates[(i // 7) % len(predicates)]}. ({seed}-{i % 10}-{i}-{i % 10})"
            for i in range(count)]


def model_alone(
    onnx_file: Path, bundle_dir: Path, threads: int, batches=(1, 8, 32, 64), seconds: float = 3.0
) -> dict[int, float]:
    from sentiment.model.export import OnnxClassifier
    from transformer.bundle import ModelBundle
    from transformer.core.tokenization import TextEncoder

    bundle = ModelBundle.load(bundle_dir)
    encoder = TextEncoder(bundle_dir / bundle.tokenizer_file, bundle.max_length, bundle.uses_token_type_ids)
    runner = OnnxClassifier(onnx_file, encoder, threads=threads)
    texts = bench_texts(640)
    return {b: runner.sentences_per_second(texts, b, min_seconds=seconds) for b in batches}


def print_result(result: LoadResult) -> None:
    health = result.health_p99_ms if result.health_p99_ms is not None else float("nan")
    print(
        f"  {result.requests_per_s:.1f} req/s, {result.texts_per_s:.0f} texts/s, p50 {result.p50_ms:.1f} ms, "
        f"p99 {result.p99_ms:.1f} ms, failed {result.failed_rate * 100:.2f} %, health p99 {health:.1f} ms",
        flush=True,
    )
    if result.tokens_per_s is not None:
        short = f"{result.short_p99_ms:.1f} ms" if result.short_p99_ms is not None else "-"
        whole = f"{result.request_p99_ms:.1f} ms" if result.request_p99_ms is not None else "-"
        print(
            f"  {result.tokens_per_s:,.0f} tokens/s, request p99 {whole} (retries included), short-request p99 "
            f"{short} ({result.short_requests} requests), shed attempts {result.shed_by_size or {}}, "
            f"given up {result.given_up}, "
            f"texts sent twice {result.wrapped_texts}",
            flush=True,
        )


def run_workloads(run: ServiceRun, options: BenchOptions, url: str, out: Path, who: str,
                  probe: Callable[[], StackProbe] | None = None, special_tokens: int = 2) -> None:
    for name in options.workloads:
        workload = WORKLOADS[name]
        print(f"{who}: {workload.description} ...", flush=True)
        environment = options.shape.environment(url) | workload.environment
        if workload.pool:
            if options.text_pool is None:
                raise ValueError(f"workload {name!r} needs a text pool (BenchOptions.text_pool)")
            environment |= {"TEXT_POOL_FILE": str(options.text_pool)}
        watcher = probe() if probe is not None else contextlib.nullcontext()
        with watcher:
            run.results[name] = run_k6(out / name, workload.description, environment, html_report=False)
        if probe is not None:
            run.extra.setdefault("diagnostics", {})[name] = watcher.summary(
                run.results[name].duration_s, special_tokens
            )
        print_result(run.results[name])


def run_classic(options: BenchOptions, checkpoint: Path, out: Path, max_length: int = 128) -> ServiceRun:
    run, logs, port = ServiceRun("classic"), out / "classic", free_port()
    redis_port = free_port()
    redis = redis_process(redis_port, logs / "redis-data", logs / "redis.log").start()
    url = f"http://127.0.0.1:{port}"
    service = ManagedProcess("classic", [sys.executable, "-m", "sentiment.measure.classic_service",
                                         "--checkpoint", str(checkpoint), "--port", str(port),
                                         "--redis-url", redis_url(redis_port), "--threads", str(options.threads),
                                         "--max-length", str(max_length)],
                             logs / "service.log", ready=lambda: service_healthy(url), ready_timeout_s=180).start()
    try:
        redis.wait_ready()
        service.wait_ready()

        def probe() -> StackProbe:  # CPU seconds of the service and the machine over each workload
            from sentiment.measure.stack_probe import StackProbe

            return StackProbe(pids={"classic service": service.pid, "redis": redis.pid})

        run_workloads(run, options, url, logs, "classic service", probe)
    finally:
        service.stop()
        redis.stop()
    return run


def run_stack(options: BenchOptions, out: Path, special_tokens: int = 2) -> ServiceRun:
    import psutil

    from sentiment.measure.stack_probe import StackProbe
    from sentiment.stack.up import Stack, StackConfig

    run = ServiceRun("stack")
    stack = Stack(StackConfig.on_free_ports(default_model_repository(), out / "stack",
                                            transformer_args=options.transformer_args))
    started = time.monotonic()
    try:
        stack.start()
        run.extra["cold_start_s"] = round(time.monotonic() - started, 2)

        def probe() -> StackProbe:  # the stack's own counters and CPU seconds over each workload
            pids = {name: stack.process(name).pid for name in ("transformer", "triton", "redis")
                    if any(p.name == name for p in stack.processes)}
            return StackProbe(f"{stack.url}/metrics", f"http://127.0.0.1:{stack.config.triton.metrics}/metrics", pids)

        run_workloads(run, options, stack.url, out / "stack", "this stack", probe, special_tokens)
        run.extra["transformer_rss_mb"] = round(
            psutil.Process(stack.process("transformer").pid).memory_info().rss / 1e6, 1
        )
        if options.saturation:
            run.extra["saturation"] = run_saturation(
                options, options.saturation, stack.url, out / "stack" / "saturation"
            )
    finally:
        stack.stop()
    return run


def run_saturation(options: BenchOptions, steps: SaturationSteps, url: str, out: Path) -> list[dict]:
    """Open model, every text new: one constant arrival rate per step, stepped up past capacity."""
    measured = []
    for rate in steps.rates():
        print(f"this stack: saturation step {rate} requests/s (every text new) ...", flush=True)
        environment = options.shape.environment(url) | {"SCENARIO": "open", "RATE": rate, "DURATION": "15s",
                                                         "MAX_VUS": 300, "CACHE_HIT_RATE": 0, "HEALTH_RATE": 0,
                                                         "P99_MS": 2000}
        result = run_k6(out / f"rate-{rate}", f"{rate} req/s", environment, html_report=False)
        dropped = json.loads((out / f"rate-{rate}" / "summary.json").read_text())["metrics"].get(
            "dropped_iterations", {}).get("values", {}).get("count", 0)
        measured.append({"offered": rate, "achieved": round(result.requests_per_s, 1),
                         "texts_per_s": round(result.texts_per_s), "p50_ms": round(result.p50_ms, 1),
                         "p99_ms": round(result.p99_ms, 1), "failed": round(result.failed_rate, 4),
                         "shed": result.shed, "dropped": int(dropped)})
        print_result(result)
    return measured


def saturation_point(steps: list[dict]) -> dict | None:
    """The highest offered rate still met: achieved within 5 %, nothing failed, p99 under 2 s."""
    met = [s for s in steps if s["achieved"] >= 0.95 * s["offered"] and s["failed"] == 0 and s["p99_ms"] < 2000]
    return max(met, key=lambda s: s["offered"]) if met else None


# ---- the report -----------------------------------------------------------------------------------
def _services_table(classic: ServiceRun | None, stack: ServiceRun) -> list[str]:
    rows = []
    for name, workload in WORKLOADS.items():
        if workload.pool:
            continue  # its own section
        for run in (classic, stack):
            if run is None or name not in run.results:
                continue
            r = run.results[name]
            rows.append((workload.description, run.name, f"{r.requests_per_s:.1f}", f"{r.texts_per_s:.0f}",
                         f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}", f"{r.failed_rate * 100:.2f} %",
                         f"{r.health_p99_ms:.1f}" if r.health_p99_ms is not None else "-"))
    return markdown_table(("workload", "service", "requests/s", "texts/s", "p50 ms", "p99 ms", "failed",
                           "health p99 ms"), rows, numeric_from=2)


def _ratios_table(classic: ServiceRun, stack: ServiceRun, ceiling: float) -> list[str]:
    rows = []
    for name, workload in WORKLOADS.items():
        if not workload.pool and name in classic.results and name in stack.results:
            c, s = classic.results[name], stack.results[name]
            rows.append((workload.description, f"×{s.texts_per_s / c.texts_per_s:.1f}", f"{s.p99_ms / c.p99_ms:.2f}",
                         f"{s.texts_per_s / ceiling * 100:.0f} %"))
    return markdown_table(("workload", "texts/s ratio", "p99 ratio", "stack texts/s vs model-alone ceiling"), rows)


def _saturation_block(report: MarkdownReport, steps: list[dict]) -> None:
    point = saturation_point(steps)
    rows = [(s["offered"], s["achieved"], s["texts_per_s"], s["p50_ms"], s["p99_ms"], f"{s['failed'] * 100:.2f} %",
             s["shed"], s["dropped"]) for s in steps]
    report.heading("Saturation (this stack, open model: constant arrival rate, every text new, 15 s per step)")
    report.add(markdown_table(("offered req/s", "achieved req/s", "texts/s", "p50 ms", "p99 ms", "failed",
                               "shed (503)", "not started by k6"), rows, numeric_from=0))
    report.add(f"Saturation point: **{point['offered']} requests/s ({point['texts_per_s']} texts/s)**, the highest "
               "offered rate served in full with p99 under 2 s." if point else "No step was served in full.")


def bench_report(command: str, ceiling: dict[int, float], classic: ServiceRun | None, stack: ServiceRun,
                 threads: int, variant: str) -> MarkdownReport:
    best_batch, best = max(ceiling.items(), key=lambda item: item[1])
    report = MarkdownReport("Results of the last `sentiment bench`", command, level=2, facts={
        "model": f"the default model, {variant} ONNX (`model_repository/sentiment/1/model.onnx`) for this stack and "
                 f"the model-alone runs; the same checkpoint in PyTorch for the classic service; {threads} threads"})
    report.heading("Model alone (ONNX Runtime, tokenization included, sentences like the k6 texts)")
    report.add(
        markdown_table(("batch", *map(str, ceiling)), [("sentences/s", *(f"{v:.0f}" for v in ceiling.values()))]),
        f"Ceiling: **{best:.0f} sentences/s** (batch {best_batch}).",
    )
    report.heading("Services under k6 (10 texts per request, closed loop)").add(_services_table(classic, stack))
    report.heading("Ratios (this stack / classic service, same run)")
    if classic is not None:
        report.add(_ratios_table(classic, stack, best))
    report.add([f"- cold start of the stack (built model): {stack.extra.get('cold_start_s')} s",
                f"- transformer RSS after the workloads: {stack.extra.get('transformer_rss_mb')} MB"])
    if stack.extra.get("saturation"):
        _saturation_block(report, stack.extra["saturation"])
    return report


def run_bench(options: BenchOptions, out: Path, command: str) -> str:
    """The whole comparison; writes the report's sections of BENCHMARKS.md and bench.json; returns them."""
    from sentiment.measure.ceiling import mixed_ceiling
    from sentiment.measure.mixed import mixed_report
    from sentiment.measure.textpool import pool_size, serving_encoder, write_pool
    from sentiment.model.build import build
    from transformer.bundle import ModelBundle

    result = build(default_model_repository())
    model_dir = result.repository / "sentiment"
    version = serving_version(model_dir.parent)
    onnx_file, bundle_dir = model_dir / version / "model.onnx", model_dir / version / "bundle"
    bundle = ModelBundle.load(bundle_dir)
    pool = mixed = None
    if any(WORKLOADS[name].pool for name in options.workloads):
        out.mkdir(parents=True, exist_ok=True)
        print("mixed workload: generating the text pool ...", flush=True)
        pool_file, pool = write_pool(out, bundle_dir, pool_size(options.shape))
        options = replace(options, text_pool=pool_file)
        print(f"  {len(pool.texts):,} texts, {pool.tokens:,} tokens ({pool_file})", flush=True)
        print("model alone (ONNX Runtime) on the mixed texts ...", flush=True)
        mixed = mixed_ceiling(onnx_file, bundle_dir, pool, options.threads)
        print(f"  {mixed.tokens_per_s:,.0f} tokens/s, {mixed.texts_per_s:.1f} texts/s "
              f"({mixed.texts} texts, {mixed.windows} windows, {mixed.seconds:.1f} s)", flush=True)
    print("model alone (ONNX Runtime) ...", flush=True)
    ceiling = model_alone(onnx_file, bundle_dir, options.threads)
    print("  " + ", ".join(f"batch {b}: {v:.0f}/s" for b, v in ceiling.items()), flush=True)
    classic = run_classic(options, result.checkpoint, out, bundle.max_length) if options.classic else None
    stack = run_stack(options, out, serving_encoder(bundle_dir).special_tokens)
    sections = []
    if options.general_workloads() and options.writes_general_section():
        report = bench_report(command, ceiling, classic, stack, options.threads, bundle.variant)
        sections.append(report.replace_section(options.report, GENERAL_SECTION))
    elif options.general_workloads():
        print(f"(a run of some workloads only: the {GENERAL_SECTION} section of {options.report.name} is left as "
              f"it was; this run's numbers are in {out / 'bench.json'})", flush=True)
    if mixed is not None:
        new = {who: run.results["new"] for who, run in (("classic", classic), ("this stack", stack))
               if run is not None and "new" in run.results}
        report = mixed_report(command, pool, options.shape.texts_per_request, options.shape, mixed,
                              classic.results.get("mixed") if classic else None, stack.results.get("mixed"),
                              stack.extra.get("diagnostics", {}).get("mixed"), new, max(ceiling.values()),
                              options.threads, bundle.variant,
                              classic.extra.get("diagnostics", {}).get("mixed") if classic else None)
        sections.append(report.replace_section(options.report, MIXED_SECTION))
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({
        "ceiling": ceiling, "mixed_ceiling": asdict(mixed) if mixed else None,
        "stack": {k: v.as_dict() for k, v in stack.results.items()} | {"extra": stack.extra},
        "classic": {k: v.as_dict() for k, v in classic.results.items()} if classic else None}, indent=2) + "\n")
    return "\n".join(sections)
