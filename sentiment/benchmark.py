"""`sentiment bench`: this stack against the classic FastAPI + pipeline service, side by side in one run.

Runs (1) the model alone (ONNX Runtime on the served ONNX file, batch 1/8/32/64), (2) the classic
service (bench/classic_service.py) and (3) this stack under the same k6 workloads, plus a
saturation run of the stack, and writes BENCHMARKS.md with the command, machine, tables and ratios.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sentiment.loadtest.cli import service_healthy
from sentiment.loadtest.k6 import LoadResult, run_k6
from sentiment.loadtest.report import machine_description
from sentiment.paths import REPO_ROOT, default_model_repository
from sentiment.stack.processes import ManagedProcess, free_port
from sentiment.stack.redis_server import redis_ping, redis_process

WORKLOADS = {
    # name: (k6 environment, description)
    "new": ({"CACHE_HIT_RATE": 0, "HIT_GRANULARITY": "request"}, "every text new (CACHE_HIT_RATE 0)"),
    "repeat": ({"CACHE_HIT_RATE": 1, "HIT_GRANULARITY": "request"}, "same request repeated (CACHE_HIT_RATE 1)"),
    "mix80": ({"CACHE_HIT_RATE": 0.8, "HIT_GRANULARITY": "text", "WARM_POOL_SIZE": 50},
              "80 % of texts from a 50-sentence warm pool"),
}


def bench_texts(count: int, seed: int = 1764300000) -> list[str]:
    """Sentences shaped like the k6 workload's new texts (same generator, unique tails)."""
    subjects = ["The film", "This movie", "The plot", "The acting", "The soundtrack", "The script", "The ending"]
    predicates = ["is a joy from start to finish", "is a tedious, muddled mess", "left me cold and bored",
                  "is warm, funny and beautifully made", "never rises above its clichés", "feels lazy and overlong"]
    return [f"{subjects[i % len(subjects)]} {predicates[(i // 7) % len(predicates)]}. ({seed}-{i % 10}-{i}-{i % 10})"
            for i in range(count)]


def model_alone(onnx_file: Path, bundle_dir: Path, threads: int, batches=(1, 8, 32, 64), seconds: float = 3.0) -> dict[int, float]:
    from sentiment.model.export import OnnxClassifier
    from transformer.bundle import ModelBundle
    from transformer.core.tokenization import TextEncoder

    bundle = ModelBundle.load(bundle_dir)
    encoder = TextEncoder(bundle_dir / bundle.tokenizer_file, bundle.max_length, bundle.uses_token_type_ids)
    runner = OnnxClassifier(onnx_file, encoder, threads=threads)
    texts = bench_texts(640)
    return {b: runner.sentences_per_second(texts, b, min_seconds=seconds) for b in batches}


@dataclass
class ServiceRun:
    name: str
    results: dict[str, LoadResult] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def k6_environment(args, base_url: str) -> dict:
    """The k6 settings every benchmark run shares (10 texts per request, health probes alongside)."""
    return {"BASE_URL": base_url, "VUS": args.vus, "TEXTS_PER_REQUEST": 10, "RAMP_UP": args.ramp_up,
            "HOLD": args.hold, "RAMP_DOWN": "5s", "HEALTH_RATE": 5, "RUN_ID": f"{int(time.time())}"}


def run_classic(args, checkpoint: Path, out: Path) -> ServiceRun:
    run = ServiceRun("classic")
    redis = redis_process(free_port(), out / "classic" / "redis-data", out / "classic" / "redis.log").start()
    redis_port = int(redis.command[redis.command.index("--port") + 1])
    redis.wait_ready(lambda: redis_ping(redis_port), 20)
    port = free_port()
    service = ManagedProcess("classic", [sys.executable, str(REPO_ROOT / "bench" / "classic_service.py"),
                                         "--checkpoint", str(checkpoint), "--port", str(port),
                                         "--redis-url", f"redis://127.0.0.1:{redis_port}/0", "--threads", str(args.threads)],
                             out / "classic" / "service.log").start()
    url = f"http://127.0.0.1:{port}"
    try:
        service.wait_ready(lambda: service_healthy(url), 180)
        for name in args.workloads:
            env, description = WORKLOADS[name]
            print(f"classic service: {description} ...", flush=True)
            run.results[name] = run_k6(out / "classic" / name, description, k6_environment(args, url) | env, html_report=False)
            _print(run.results[name])
    finally:
        service.stop()
        redis.stop()
    return run


def run_stack(args, out: Path) -> ServiceRun:
    import psutil

    from sentiment.stack.up import Stack, StackConfig

    run = ServiceRun("stack")
    config = StackConfig.on_free_ports(default_model_repository(), out / "stack",
                                       transformer_args=list(args.transformer_arg or []))
    stack = Stack(config)
    started = time.monotonic()
    url = f"http://127.0.0.1:{config.port}"
    try:
        stack.start()
        run.extra["cold_start_s"] = round(time.monotonic() - started, 2)
        for name in args.workloads:
            env, description = WORKLOADS[name]
            print(f"this stack: {description} ...", flush=True)
            run.results[name] = run_k6(out / "stack" / name, description, k6_environment(args, url) | env, html_report=False)
            _print(run.results[name])
        transformer = next(p for p in stack.processes if p.name == "transformer")
        run.extra["transformer_rss_mb"] = round(psutil.Process(transformer.pid).memory_info().rss / 1e6, 1)
        if args.saturation:
            run.extra["saturation"] = run_saturation(args, url, out / "stack" / "saturation")
    finally:
        stack.stop()
    return run


def run_saturation(args, url: str, out: Path) -> list[dict]:
    """Open model, every text new: one constant arrival rate per step, stepped up past capacity."""
    steps = []
    for index in range(args.saturation_steps):
        rate = args.saturation_start + index * args.saturation_step
        print(f"this stack: saturation step {rate} requests/s (every text new) ...", flush=True)
        env = k6_environment(args, url) | {"SCENARIO": "open", "RATE": rate, "DURATION": "15s", "MAX_VUS": 300,
                                    "CACHE_HIT_RATE": 0, "HEALTH_RATE": 0, "P99_MS": 2000}
        result = run_k6(out / f"rate-{rate}", f"{rate} req/s", env, html_report=False)
        dropped = json.loads((out / f"rate-{rate}" / "summary.json").read_text())["metrics"].get(
            "dropped_iterations", {}).get("values", {}).get("count", 0)
        steps.append({"offered": rate, "achieved": round(result.requests_per_s, 1), "texts_per_s": round(result.texts_per_s),
                      "p50_ms": round(result.p50_ms, 1), "p99_ms": round(result.p99_ms, 1),
                      "failed": round(result.failed_rate, 4), "shed": result.shed, "dropped": int(dropped)})
        _print(result)
    return steps


def saturation_point(steps: list[dict]) -> dict | None:
    """The highest offered rate still met: achieved within 5 %, nothing failed, p99 under 2 s."""
    met = [s for s in steps if s["achieved"] >= 0.95 * s["offered"] and s["failed"] == 0 and s["p99_ms"] < 2000]
    return max(met, key=lambda s: s["offered"]) if met else None


def _print(result: LoadResult) -> None:
    print(f"  {result.requests_per_s:.1f} req/s, {result.texts_per_s:.0f} texts/s, p50 {result.p50_ms:.1f} ms, "
          f"p99 {result.p99_ms:.1f} ms, failed {result.failed_rate * 100:.2f} %, health p99 "
          f"{result.health_p99_ms if result.health_p99_ms is not None else float('nan'):.1f} ms", flush=True)


def write_report(path: Path, command: str, ceiling: dict[int, float], classic: ServiceRun | None, stack: ServiceRun,
                 threads: int, variant: str) -> str:
    best_batch, best = max(ceiling.items(), key=lambda item: item[1])
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Results of the last `sentiment bench`", "",
        f"- date: {now}", f"- machine: {machine_description()}", f"- command: `{command}`",
        f"- model: the default model, {variant} ONNX (`model_repository/sentiment/1/model.onnx`) for this stack and the "
        f"model-alone runs; the same checkpoint in PyTorch for the classic service; {threads} threads", "",
        "### Model alone (ONNX Runtime, tokenization included, sentences like the k6 texts)", "",
        "| batch | " + " | ".join(str(b) for b in ceiling) + " |", "|---|" + "---:|" * len(ceiling),
        "| sentences/s | " + " | ".join(f"{v:.0f}" for v in ceiling.values()) + " |", "",
        f"Ceiling: **{best:.0f} sentences/s** (batch {best_batch}).", "",
        "### Services under k6 (10 texts per request, closed loop)", "",
        "| workload | service | requests/s | texts/s | p50 ms | p99 ms | failed | health p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (_env, description) in WORKLOADS.items():
        for run in (classic, stack):
            if run is None or name not in run.results:
                continue
            r = run.results[name]
            health = f"{r.health_p99_ms:.1f}" if r.health_p99_ms is not None else "-"
            lines.append(f"| {description} | {run.name} | {r.requests_per_s:.1f} | {r.texts_per_s:.0f} | "
                         f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.failed_rate * 100:.2f} % | {health} |")
    lines += ["", "### Ratios (this stack / classic service, same run)", ""]
    if classic is not None:
        lines += ["| workload | texts/s ratio | p99 ratio | stack texts/s vs model-alone ceiling |", "|---|---:|---:|---:|"]
        for name, (_env, description) in WORKLOADS.items():
            if name in classic.results and name in stack.results:
                c, s = classic.results[name], stack.results[name]
                lines.append(f"| {description} | ×{s.texts_per_s / c.texts_per_s:.1f} | {s.p99_ms / c.p99_ms:.2f} | "
                             f"{s.texts_per_s / best * 100:.0f} % |")
    lines += ["", f"- cold start of the stack (built model): {stack.extra.get('cold_start_s')} s",
              f"- transformer RSS after the workloads: {stack.extra.get('transformer_rss_mb')} MB"]
    if stack.extra.get("saturation"):
        steps = stack.extra["saturation"]
        point = saturation_point(steps)
        lines += ["", "### Saturation (this stack, open model: constant arrival rate, every text new, 15 s per step)", "",
                  "| offered req/s | achieved req/s | texts/s | p50 ms | p99 ms | failed | shed (503) | not started by k6 |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for step in steps:
            lines.append(f"| {step['offered']} | {step['achieved']} | {step['texts_per_s']} | {step['p50_ms']} | "
                         f"{step['p99_ms']} | {step['failed'] * 100:.2f} % | {step['shed']} | {step['dropped']} |")
        lines += ["", f"Saturation point: **{point['offered']} requests/s ({point['texts_per_s']} texts/s)**, the highest "
                  "offered rate served in full with p99 under 2 s." if point else "No step was served in full."]
    section = "\n".join(lines) + "\n"
    _replace_section(path, "<!-- bench-results -->", section)
    return section


def _replace_section(path: Path, marker: str, section: str) -> None:
    """Rewrite the part of `path` after `marker` up to the next marker (or the end)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if marker not in text:
        text = text.rstrip("\n") + f"\n\n{marker}\n"
    head, _, tail = text.partition(marker)
    rest = tail.split("<!-- ", 1)
    after = "<!-- " + rest[1] if len(rest) == 2 else ""
    path.write_text(head + marker + "\n" + section + ("\n" + after if after else ""))


def _cmd_bench(args: argparse.Namespace) -> int:
    from sentiment.model.build import build
    from transformer.bundle import ModelBundle

    result = build(default_model_repository())
    model_dir = default_model_repository() / "sentiment"
    out = Path(args.out or REPO_ROOT / "bench" / "results" / datetime.now().strftime("%Y%m%d-%H%M%S"))
    command = "sentiment bench " + shlex.join(sys.argv[2:]) if len(sys.argv) > 2 else "sentiment bench"
    if args.levers:
        from sentiment.levers import levers_markdown, run_levers

        results = run_levers(args, result.checkpoint, out, args.lever or None, args.rounds)
        section = levers_markdown(results, command, args.rounds)
        _replace_section(Path(args.report), f"<!-- {args.section} -->", section)
        print(section)
        return 0
    print("model alone (ONNX Runtime) ...", flush=True)
    ceiling = model_alone(model_dir / "1" / "model.onnx", model_dir / "bundle", args.threads)
    print("  " + ", ".join(f"batch {b}: {v:.0f}/s" for b, v in ceiling.items()), flush=True)
    classic = None if args.skip_classic else run_classic(args, result.checkpoint, out)
    stack = run_stack(args, out)
    variant = ModelBundle.load(model_dir / "bundle").variant
    section = write_report(Path(args.report), command, ceiling, classic, stack, args.threads, variant)
    (out / "bench.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({
        "ceiling": ceiling, "stack": {k: v.as_dict() for k, v in stack.results.items()} | {"extra": stack.extra},
        "classic": {k: v.as_dict() for k, v in classic.results.items()} if classic else None}, indent=2) + "\n")
    print(section)
    return 0


def add_bench_command(commands) -> None:
    parser = commands.add_parser("bench", help="benchmark this stack against the classic FastAPI + pipeline service",
                                 description=__doc__)
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--vus", type=int, default=10)
    parser.add_argument("--ramp-up", default="10s")
    parser.add_argument("--hold", default="60s")
    parser.add_argument("--threads", type=int, default=2, help="inference threads of the classic service and model-alone")
    parser.add_argument("--skip-classic", action="store_true", help="only this stack (and the model alone)")
    parser.add_argument("--saturation", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--saturation-start", type=int, default=40, help="first arrival rate, requests/s")
    parser.add_argument("--saturation-step", type=int, default=20)
    parser.add_argument("--saturation-steps", type=int, default=6)
    parser.add_argument("--transformer-arg", action="append", metavar="ARG", help="extra transformer flag (repeatable)")
    parser.add_argument("--levers", action="store_true", help="instead: measure each serving knob on its own")
    parser.add_argument("--lever", action="append", help="with --levers: only these levers (repeatable)")
    parser.add_argument("--lever-hold", default="30s", help="with --levers: hold of each run (default 30s)")
    parser.add_argument("--rounds", type=int, default=1, help="with --levers: interleaved rounds, median shown")
    parser.add_argument("--section", default="lever-results",
                        help="with --levers: the BENCHMARKS.md section (marker) to write (default lever-results)")
    parser.add_argument("--report", default=str(REPO_ROOT / "BENCHMARKS.md"))
    parser.add_argument("--out", help="raw results folder (default bench/results/<timestamp>)")
    parser.set_defaults(handler=_cmd_bench)
