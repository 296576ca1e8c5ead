"""The one markdown report writer of the measurements, and the load-test charts (matplotlib).

`sentiment loadtest`, `sentiment bench` and `sentiment bench --levers` all write a `MarkdownReport`:
the same header (title, date, machine, command, what was run), then their tables.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from sentiment.markdown import markdown_table
from sentiment.measure.k6 import LoadResult

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
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}"


@dataclass
class MarkdownReport:
    """A report: the shared header (title, date, machine, command, facts), then its blocks."""

    title: str
    command: str
    facts: dict[str, str] = field(default_factory=dict)  # extra "- key: value" lines under the header
    level: int = 1                                        # heading level of the title
    lines: list[str] = field(default_factory=list)

    def add(self, *blocks: str | Sequence[str]) -> "MarkdownReport":
        """Append paragraphs or line lists, each followed by a blank line."""
        for block in blocks:
            self.lines += [block] if isinstance(block, str) else list(block)
            self.lines.append("")
        return self

    def heading(self, text: str) -> "MarkdownReport":
        return self.add("#" * (self.level + 1) + " " + text)

    def render(self) -> str:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        header = [f"{'#' * self.level} {self.title}", "", f"- date: {now}", f"- machine: {machine_description()}",
                  f"- command: `{self.command}`", *(f"- {key}: {value}" for key, value in self.facts.items()), ""]
        return "\n".join(header + self.lines).rstrip("\n") + "\n"

    def write(self, path: Path) -> str:
        text = self.render()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return text

    def replace_section(self, path: Path, marker: str) -> str:
        """Rewrite the part of `path` after `<!-- marker -->` up to the next marker (or the end)."""
        section, tag = self.render(), f"<!-- {marker} -->"
        text = path.read_text() if path.exists() else "# Benchmarks\n"
        if tag not in text:
            text = text.rstrip("\n") + f"\n\n{tag}\n"
        head, _, tail = text.partition(tag)
        rest = tail.split("<!-- ", 1)
        after = "<!-- " + rest[1] if len(rest) == 2 else ""
        path.write_text(head + tag + "\n" + section + ("\n" + after if after else ""))
        return section


# ---- load-test comparison -------------------------------------------------------------------------
def results_table(results: Sequence[LoadResult]) -> str:
    rows = [(r.label, f"{r.requests_per_s:.1f}", f"{r.texts_per_s:.0f}", f"{r.failed_rate * 100:.2f} %",
             f"{r.p50_ms:.1f}", f"{r.p90_ms:.1f}", f"{r.p95_ms:.1f}", f"{r.p99_ms:.1f}",
             f"{r.health_p99_ms:.1f}" if r.health_p99_ms is not None else "-") for r in results]
    header = ("run", "requests/s", "texts/s", "failed", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "health p99 ms")
    return "\n".join(markdown_table(header, rows))


def reduction_table(baseline: LoadResult, other: LoadResult) -> str:
    """Relative latency reduction per percentile of `other` against `baseline` (e.g. cache off vs on)."""
    rows = []
    for name, attribute in PERCENTILES:
        before, after = getattr(baseline, attribute), getattr(other, attribute)
        reduction = (1 - after / before) * 100 if before else 0.0
        rows.append((name, f"{before:.1f} ms", f"{after:.1f} ms", f"{reduction:.1f} %"))
    ratio = other.requests_per_s / baseline.requests_per_s if baseline.requests_per_s else float("nan")
    rows.append(
        ("throughput", f"{baseline.requests_per_s:.1f} req/s", f"{other.requests_per_s:.1f} req/s", f"×{ratio:.1f}")
    )
    return "\n".join(markdown_table(("percentile", baseline.label, other.label, "reduction"), rows))


def comparison_title(results: Sequence[LoadResult]) -> str:
    """What was compared, from the runs themselves (e.g. "hit rate 0 vs hit rate 1")."""
    return "Load test: " + " vs ".join(r.label for r in results)


def comparison_markdown(results: Sequence[LoadResult], command: str, settings: str) -> str:
    report = MarkdownReport(comparison_title(results), command, facts={"workload": settings})
    report.add(results_table(results))
    if len(results) >= 2:
        report.add(f"Relative change of **{results[-1].label}** against **{results[0].label}**:",
                   reduction_table(results[0], results[-1]))
    report.add("![latency percentiles](latency.png)", "![throughput and errors](throughput.png)")
    return report.render()


# ---- charts -----------------------------------------------------------------------------------------
def latency_label(ms: float) -> str:
    """A bar's label, as precise as the report's table (0.1 ms): 0.8 ms and 1.5 ms keep their digits."""
    return f"{ms:.2f}" if ms < 0.1 else f"{ms:.1f}"


def log_axis_floor(values: Sequence[float]) -> float:
    """Where log-scale bars start: the 1-2-5 step at or below the smallest value, so every bar has a
    visible height that means something (a bar's top is its value; its bottom is the axis floor)."""
    smallest = min((v for v in values if v > 0), default=1.0)
    decade = 10 ** math.floor(math.log10(smallest))
    return max(step * decade for step in (1, 2, 5) if step * decade <= smallest)


def write_charts(results: Sequence[LoadResult], out_dir: Path, title: str, workload: str = "") -> list[Path]:
    """latency.png (percentiles per run, log scale) and throughput.png (texts/s and failed %) in out_dir;
    `workload` (VUs, texts per request, durations) goes under the title so a chart says what it measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, PercentFormatter

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [r.label for r in results]
    heading = f"{title}\n{workload}" if workload else title
    figure, axis = plt.subplots(figsize=(9, 5))
    width = 0.8 / len(PERCENTILES)
    values = [getattr(r, attribute) for r in results for _name, attribute in PERCENTILES]
    floor = log_axis_floor(values)
    for index, (name, attribute) in enumerate(PERCENTILES):
        heights = [getattr(r, attribute) for r in results]
        positions = [i + (index - (len(PERCENTILES) - 1) / 2) * width for i in range(len(results))]
        bars = axis.bar(positions, [h - floor for h in heights], width, bottom=floor, label=name)
        axis.bar_label(bars, labels=[latency_label(h) for h in heights], fontsize=8)
    axis.set_xticks(range(len(results)), labels)
    axis.set_yscale("log")
    axis.set_ylim(floor, max(values) * 2.5)  # headroom for the labels of the tallest bars
    axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
    axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    axis.yaxis.set_minor_formatter(FuncFormatter(lambda _value, _pos: ""))
    axis.set_ylabel("latency (ms, log scale)")
    axis.set_title(f"{heading}\nlatency percentiles of /project/bulk-predict (health probes excluded)", fontsize=10)
    axis.legend(loc="upper right")
    figure.tight_layout()
    latency = out_dir / "latency.png"
    figure.savefig(latency, dpi=120)
    plt.close(figure)

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    texts = [r.texts_per_s for r in results]
    bars = left.bar(labels, texts, color="tab:green")
    left.bar_label(bars, labels=[f"{t:,.0f}" for t in texts])
    left.set_ylim(0, max(texts, default=1) * 1.15 or 1)
    left.set_ylabel("texts/s")
    left.set_title("texts answered per second")
    failed = [r.failed_rate * 100 for r in results]
    bars = right.bar(labels, failed, color="tab:red")
    right.bar_label(bars, labels=[f"{f:.2f} %" for f in failed])
    right.set_ylim(0, max(1.0, max(failed, default=0) * 1.2))
    right.yaxis.set_major_formatter(PercentFormatter(xmax=100, decimals=1))
    right.set_ylabel("failed requests")
    right.set_title("failed requests (% of requests)")
    figure.suptitle(heading, fontsize=10)
    figure.tight_layout()
    throughput = out_dir / "throughput.png"
    figure.savefig(throughput, dpi=120)
    plt.close(figure)
    return [latency, throughput]
