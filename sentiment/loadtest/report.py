"""Comparison report of several k6 runs: a markdown table and PNG charts (matplotlib)."""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from sentiment.loadtest.k6 import LoadResult

PERCENTILES = (("p50", "p50_ms"), ("p90", "p90_ms"), ("p95", "p95_ms"), ("p99", "p99_ms"))


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}"


def results_table(results: Sequence[LoadResult]) -> str:
    lines = ["| run | requests/s | texts/s | failed | p50 ms | p90 ms | p95 ms | p99 ms | health p99 ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        health = f"{r.health_p99_ms:.1f}" if r.health_p99_ms is not None else "-"
        lines.append(f"| {r.label} | {r.requests_per_s:.1f} | {r.texts_per_s:.0f} | {r.failed_rate * 100:.2f} % | "
                     f"{r.p50_ms:.1f} | {r.p90_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} | {health} |")
    return "\n".join(lines)


def reduction_table(baseline: LoadResult, other: LoadResult) -> str:
    """Relative latency reduction per percentile of `other` against `baseline` (e.g. cache off vs on)."""
    lines = [f"| percentile | {baseline.label} | {other.label} | reduction |", "|---|---:|---:|---:|"]
    for name, attribute in PERCENTILES:
        before, after = getattr(baseline, attribute), getattr(other, attribute)
        reduction = (1 - after / before) * 100 if before else 0.0
        lines.append(f"| {name} | {before:.1f} ms | {after:.1f} ms | {reduction:.1f} % |")
    ratio = other.requests_per_s / baseline.requests_per_s if baseline.requests_per_s else float("nan")
    lines.append(f"| throughput | {baseline.requests_per_s:.1f} req/s | {other.requests_per_s:.1f} req/s | ×{ratio:.1f} |")
    return "\n".join(lines)


def write_charts(results: Sequence[LoadResult], out_dir: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [r.label for r in results]
    figure, axis = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(PERCENTILES)
    for index, (name, attribute) in enumerate(PERCENTILES):
        values = [getattr(r, attribute) for r in results]
        positions = [i + (index - (len(PERCENTILES) - 1) / 2) * width for i in range(len(results))]
        bars = axis.bar(positions, values, width, label=name)
        axis.bar_label(bars, fmt="%.0f", fontsize=7)
    axis.set_xticks(range(len(results)), labels)
    axis.set_ylabel("latency (ms)")
    axis.set_yscale("log")
    axis.set_title(f"{title}: latency percentiles")
    axis.legend()
    figure.tight_layout()
    latency = out_dir / "latency.png"
    figure.savefig(latency, dpi=120)
    plt.close(figure)

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    bars = left.bar(labels, [r.texts_per_s for r in results], color="tab:green")
    left.bar_label(bars, fmt="%.0f")
    left.set_ylabel("texts/s")
    left.set_title("throughput")
    bars = right.bar(labels, [r.failed_rate * 100 for r in results], color="tab:red")
    right.bar_label(bars, fmt="%.2f")
    right.set_ylabel("failed requests (%)")
    right.set_title("error rate")
    right.set_ylim(0, max(1.0, max(r.failed_rate * 100 for r in results) * 1.2))
    figure.suptitle(title)
    figure.tight_layout()
    throughput = out_dir / "throughput.png"
    figure.savefig(throughput, dpi=120)
    plt.close(figure)
    return [latency, throughput]


def comparison_markdown(results: Sequence[LoadResult], command: str, settings: str) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# Load test: cache disabled vs enabled", "",
        f"- date: {now}", f"- machine: {machine_description()}", f"- command: `{command}`", f"- workload: {settings}", "",
        results_table(results), "",
    ]
    if len(results) >= 2:
        parts += [f"Relative change of **{results[-1].label}** against **{results[0].label}**:", "",
                  reduction_table(results[0], results[-1]), ""]
    parts += ["![latency percentiles](latency.png)", "", "![throughput and errors](throughput.png)", ""]
    return "\n".join(parts)
