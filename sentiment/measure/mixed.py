"""The mixed-length workload of `sentiment bench` (`--workloads mixed`): its text pool, the model
alone on the same texts (the ceiling in tokens/s), what the stack's own metrics say while k6 runs it,
and its section of BENCHMARKS.md.

Tokens are counted one way everywhere: the serving tokenizer's tokens of each text, special tokens
excluded (`TextWindows.token_count`, what the transformer's `sentiment_text_tokens` histogram
records). k6 adds the pool's count of every text it got an answer for (`tokens_classified`); the
transformer's `sentiment_text_tokens_sum` over the run is the cross-check.
"""

from __future__ import annotations

import math
import os
import re
import resource
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sentiment.measure.k6 import LoadResult, LoadShape
from sentiment.measure.report import MarkdownReport, markdown_table
from sentiment.measure.textpool import (
    TextMix,
    TextPool,
    generate_pool,
    tokenizer_counter,
)

POOL_FILE = "text-pool.json"
POOL_TEXTS_PER_SECOND = 200  # more than any service here answers with this mix: the pool never runs out


def _seconds(duration: str) -> float:
    """k6 durations as LoadShape holds them: "30s", "2m", "1m30s"."""
    total, number = 0.0, ""
    for char in duration:
        if char.isdigit() or char == ".":
            number += char
        else:
            total += float(number or 0) * {"s": 1, "m": 60, "h": 3600}[char]
            number = ""
    return total + float(number or 0)


def pool_size(shape: LoadShape, texts_per_second: int = POOL_TEXTS_PER_SECOND) -> int:
    """Texts enough for one k6 run of `shape` (ramps included) at `texts_per_second`."""
    seconds = _seconds(shape.ramp_up) + _seconds(shape.hold) + _seconds(shape.ramp_down) + 10
    return max(2000, math.ceil(seconds * texts_per_second / 100) * 100)


def serving_encoder(bundle_dir: Path):
    """The transformer's TextEncoder for this bundle (windows of max_length, stride 0)."""
    from transformer.bundle import ModelBundle
    from transformer.core.tokenization import TextEncoder

    bundle = ModelBundle.load(bundle_dir)
    return TextEncoder(bundle_dir / bundle.tokenizer_file, bundle.max_length, bundle.uses_token_type_ids, stride=0)


def write_pool(out: Path, bundle_dir: Path, count: int, mix: TextMix = TextMix(), seed: int = 12,
               run_id: str | None = None) -> tuple[Path, TextPool]:
    """Generate the pool with the serving tokenizer and write it where k6 reads it (TEXT_POOL_FILE)."""
    pool = generate_pool(count, tokenizer_counter(serving_encoder(bundle_dir)), mix, seed,
                         run_id or str(int(time.time())))
    return pool.write(out / POOL_FILE), pool


# ---- the model alone on the same texts -----------------------------------------------------------
@dataclass(frozen=True)
class Ceiling:
    tokens_per_s: float          # the texts' tokens (special tokens excluded) per second
    window_tokens_per_s: float   # every window's tokens, special tokens included
    texts_per_s: float
    texts: int
    windows: int
    seconds: float
    batch: int
    others_cpu_s: float | None = None  # CPU seconds of every other process on the machine meanwhile


def mixed_ceiling(onnx_file: Path, bundle_dir: Path, pool: TextPool, threads: int, batch: int = 32,
                  chunk: int = 640, min_seconds: float = 12.0) -> Ceiling:
    """ONNX Runtime on the served ONNX file: the pool's texts in order, `chunk` at a time, each chunk
    tokenized and cut into the transformer's windows (stride 0), its windows sorted by length and run
    in batches of `batch`, tokenization included, until `min_seconds` have passed."""
    from sentiment.model.export import OnnxClassifier
    from sentiment.model.triton_repository import OUTPUT_NAME

    encoder = serving_encoder(bundle_dir)
    runner = OnnxClassifier(onnx_file, encoder, threads=threads)
    texts = [t.text for t in pool.texts]
    warm = sorted((w for text in encoder.windows(texts[:batch]) for w in text.windows), key=lambda e: len(e.ids))
    runner.session.run([OUTPUT_NAME], encoder.pad(warm[-batch:]))
    done = tokens = window_tokens = windows = 0
    machine, own = _machine_cpu(), resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    while True:
        part = [texts[(done + i) % len(texts)] for i in range(chunk)]
        split = encoder.windows(part)
        ordered = sorted((w for text in split for w in text.windows), key=lambda e: len(e.ids))
        for first in range(0, len(ordered), batch):
            runner.session.run([OUTPUT_NAME], encoder.pad(ordered[first:first + batch]))
        done += len(part)
        tokens += sum(text.token_count for text in split)
        window_tokens += sum(text.cost for text in split)
        windows += len(ordered)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            mine = resource.getrusage(resource.RUSAGE_SELF)
            others = _machine_cpu() - machine - (mine.ru_utime + mine.ru_stime - own.ru_utime - own.ru_stime)
            return Ceiling(tokens / elapsed, window_tokens / elapsed, done / elapsed, done, windows, elapsed, batch,
                           round(max(others, 0.0), 1))


def _machine_cpu() -> float:
    import psutil

    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "system", "nice", "irq", "softirq"))


# ---- what the stack says about itself during a run -----------------------------------------------
_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(\{.*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as {sample name: sum over its label sets} plus {name{labels}: value}, names as
    exposed (a counter keeps its own name, `_total` or not); histogram buckets are left out."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match[1].endswith(("_bucket", "_created")):
            continue
        try:
            value = float(match[3])
        except ValueError:
            continue
        values[match[1]] = values.get(match[1], 0.0) + value
        if match[2]:
            values[match[1] + match[2]] = values.get(match[1] + match[2], 0.0) + value
    return values


def scrape(url: str, timeout: float = 5.0) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse_metrics(response.read().decode())


def _cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live children (Triton's Python-backend stubs)."""
    import psutil

    try:
        process = psutil.Process(pid)
        total = sum(process.cpu_times()[:2])
        for child in process.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0.0


@dataclass
class StackProbe:
    """Counters of the transformer and Triton before and after a k6 run, the queued-token gauge
    sampled during it, and the CPU seconds of each part of the stack."""

    transformer_metrics: str | None = (
        None  # http://host:port/metrics (None: CPU seconds only, e.g. the classic service)
    )
    triton_metrics: str | None = None
    pids: dict[str, int] = field(default_factory=dict)  # part name -> pid
    interval_s: float = 0.25
    queued: list[float] = field(default_factory=list)
    delta: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    def _counters(self) -> dict[str, float]:
        values = {f"transformer:{k}": v for k, v in scrape(self.transformer_metrics).items()} \
            if self.transformer_metrics else {}
        if self.triton_metrics:
            try:
                values |= {f"triton:{k}": v for k, v in scrape(self.triton_metrics).items()}
            except OSError:
                pass
        return values

    def _cpu(self) -> dict[str, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # k6, once run_k6 has waited for it
        return {name: _cpu_seconds(pid) for name, pid in self.pids.items()} | {
            "k6": children.ru_utime + children.ru_stime, "machine": _machine_cpu()}

    def _sample(self) -> None:
        while self.transformer_metrics and not self._stop.wait(self.interval_s):
            try:
                self.queued.append(scrape(self.transformer_metrics, timeout=2).get("sentiment_queued_tokens", 0.0))
            except OSError:
                pass

    def __enter__(self) -> StackProbe:
        self._before, self._cpu_before, self._started = self._counters(), self._cpu(), time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="stack-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.wall_s = time.monotonic() - self._started
        after, cpu_after = self._counters(), self._cpu()
        self.delta = {k: v - self._before.get(k, 0.0) for k, v in after.items()}
        self.cpu = {k: round(v - self._cpu_before.get(k, 0.0), 2) for k, v in cpu_after.items()}

    def summary(self, duration_s: float | None, special_tokens: int = 2) -> dict:
        """The numbers that say where the time goes (bench.json keeps them; the report quotes them)."""
        return stack_diagnostics(self.delta, duration_s or self.wall_s, self.queued, self.cpu, self.wall_s,
                                 special_tokens)


def stack_diagnostics(delta: dict[str, float], duration_s: float, queued: Sequence[float], cpu: dict[str, float],
                      wall_s: float, special_tokens: int = 2) -> dict:
    def d(name: str) -> float:
        return delta.get(name, 0.0)

    text_tokens, windows = d("transformer:sentiment_text_tokens_sum"), d("transformer:sentiment_windows_total")
    calls = d("transformer:sentiment_predictor_batch_size_count")
    padded = d("transformer:sentiment_predictor_batch_tokens_sum")
    window_tokens = text_tokens + special_tokens * windows
    executions = d("triton:nv_inference_exec_count")
    requests = d("triton:nv_inference_request_success")
    result = {
        "texts_computed": int(d("transformer:sentiment_text_tokens_count")),
        "text_tokens": int(text_tokens),
        "tokens_per_s": text_tokens / duration_s if duration_s else None,
        "windows": int(windows),
        "windows_per_text": windows / d("transformer:sentiment_text_tokens_count")
        if d("transformer:sentiment_text_tokens_count") else None,
        "predictor_calls": int(calls),
        "windows_per_call": d("transformer:sentiment_predictor_batch_size_sum") / calls if calls else None,
        "padded_tokens_per_call": padded / calls if calls else None,
        "real_token_share": window_tokens / padded if padded else None,   # 1 - padding
        "predictor_call_ms": d("transformer:sentiment_predictor_latency_seconds_sum") / calls * 1000 if calls else None,
        "tokenize_s": d("transformer:sentiment_tokenize_seconds_sum"),
        "shed": int(d("transformer:sentiment_shed_requests_total")),
        "triton_requests": int(requests),
        "triton_executions": int(executions),
        "triton_rows_per_execution": d("triton:nv_inference_count") / executions if executions else None,
        "triton_compute_ms_per_execution": d("triton:nv_inference_compute_infer_duration_us") / executions / 1000
        if executions else None,
        "triton_compute_s": d("triton:nv_inference_compute_infer_duration_us") / 1e6,
        "triton_queue_ms_per_request":
            d("triton:nv_inference_queue_duration_us") / requests / 1000 if requests else None,
        "triton_request_ms": d("triton:nv_inference_request_duration_us") / requests / 1000 if requests else None,
        "queued_tokens_mean": sum(queued) / len(queued) if queued else None,
        "queued_tokens_max": max(queued) if queued else None,
        "queue_empty_share": sum(q == 0 for q in queued) / len(queued) if queued else None,
        "cpu_seconds": cpu,
        "cores": os.cpu_count() or 1,
        "wall_s": round(wall_s, 1),
    }
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}


# ---- the report section ------------------------------------------------------------------------------
def _ms(value: float | None) -> str:
    return f"{value:,.1f}" if value is not None else "-"


def _pct(part: float | None, whole: float | None) -> str:
    return f"{part / whole * 100:.0f} %" if part is not None and whole else "-"


def _ratio(a: float | None, b: float | None, digits: int = 1) -> str:
    return f"×{a / b:.{digits}f}" if a is not None and b else "-"


def _cpu_line(who: str, g: dict) -> str:
    cpu = {k: v for k, v in g["cpu_seconds"].items() if k != "machine"}
    machine = g["cpu_seconds"]["machine"]
    return (f"- CPU seconds during {who} run: " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
            + f"; the machine's {machine:.0f} of {g.get('cores', 1) * g['wall_s']:.0f} available (the rest, "
            f"{machine - sum(cpu.values()):.0f}: the benchmark's own process and anything else running)")


def mixed_report(command: str, pool: TextPool, texts_per_request: int, shape: LoadShape, ceiling: Ceiling,
                 classic: LoadResult | None, stack: LoadResult | None, diagnostics: dict | None,
                 new: dict[str, LoadResult], short_ceiling: float | None, threads: int, variant: str,
                 classic_diagnostics: dict | None = None) -> MarkdownReport:
    """The mixed-length workload's section: model alone, classic service and this stack side by side,
    the ratios, what the stack's metrics say, and the every-text-new run of the same bench."""
    report = MarkdownReport("Mixed-length workload (`sentiment bench --workloads mixed`)", command, level=2, facts={
        "mix": f"{pool.mix.describe()}; {texts_per_request} texts per request, every text new (a unique tail); "
               f"pool of {len(pool.texts):,} texts (seed {pool.seed}, {pool.tokens / len(pool.texts):.0f} tokens "
               "per text on average), generated once into the run's folder and read by k6 (`TEXT_POOL_FILE`) and the "
               "model-alone run",
        "load": f"k6 closed loop, {shape.vus} VUs, ramp {shape.ramp_up} / hold {shape.hold} / down {shape.ramp_down}, "
                f"/project/health probed {shape.health_rate:g}/s alongside; rates are over the whole k6 run",
        "tokens": "the serving tokenizer's tokens of each text, special tokens excluded (what the transformer's "
                  "`sentiment_text_tokens` counts); the classic service is credited with the tokens it was sent, "
                  "though it reads only the first 128",
        "model": f"{variant} ONNX for the model alone and this stack, the same checkpoint in PyTorch for the classic "
                 f"service; {threads} threads"})
    _add_services_table(report, pool, ceiling, classic, stack)
    lines = _ceiling_and_ratio_lines(ceiling, classic, stack)
    lines += _by_size_lines(pool, classic, stack)
    if diagnostics:
        lines += _diagnostic_lines(diagnostics, stack)
    for who, g in (("the classic service's", classic_diagnostics), ("this stack's", diagnostics)):
        if g and g.get("cpu_seconds", {}).get("machine"):
            lines.append(_cpu_line(who, g))
    report.add(lines)
    if new:
        _add_every_text_new(report, new, short_ceiling)
    return report


def _add_services_table(report: MarkdownReport, pool: TextPool, ceiling: Ceiling, classic: LoadResult | None,
                        stack: LoadResult | None) -> None:
    """One row for the model alone, one for each service that ran."""
    rows = [("model alone (ONNX Runtime, windows sorted by length, batch "
             f"{ceiling.batch}, tokenization included)", f"{ceiling.texts_per_s:.1f}", f"{ceiling.tokens_per_s:,.0f}",
             "100 %", "-", "-", "-", "-", "-", "-")]
    for name, result in (("classic FastAPI + `pipeline` (truncates to 128 tokens)", classic), ("this stack", stack)):
        if result is None:
            continue
        short = f"{_ms(result.short_p99_ms)} ({result.short_requests})" if result.short_requests else "-"
        shed = result.shed_by_size or {}
        rows.append((name, f"{result.texts_per_s:.1f}", f"{result.tokens_per_s or 0:,.0f}",
                     _pct(result.tokens_per_s, ceiling.tokens_per_s), _ms(result.request_p50_ms),
                     _ms(result.request_p99_ms), short,
                     " / ".join(str(shed.get(c.name, 0)) for c in pool.mix.classes),
                     f"{result.failed_rate * 100:.2f} %", _ms(result.health_p99_ms)))
    report.add(markdown_table(("", "texts/s", "tokens/s", "of the model alone", "p50 ms", "p99 ms",
                               "short-request p99 ms (requests)",
                               "shed attempts (" + " / ".join(c.name for c in pool.mix.classes) + ")",
                               "failed attempts", "health p99 ms"), rows),
               "Latencies are per request, from its first attempt to its answer: a request shed with 503 is "
               "sent again after `Retry-After` (what a client does), so the texts answered are the pool's mix. "
               "A short request is one whose texts are all short.")


def _ceiling_and_ratio_lines(ceiling: Ceiling, classic: LoadResult | None, stack: LoadResult | None) -> list[str]:
    lines = [f"- model alone: {ceiling.texts:,} texts of the pool in order ({ceiling.windows:,} windows, "
             f"{ceiling.window_tokens_per_s:,.0f} tokens/s with the special tokens of every window) in "
             f"{ceiling.seconds:.1f} s" + (f"; other processes used {ceiling.others_cpu_s:.1f} CPU seconds meanwhile"
                                           if ceiling.others_cpu_s is not None else "")]
    if stack is not None:
        lines.append(f"- **this stack: {_pct(stack.tokens_per_s, ceiling.tokens_per_s)} of the model alone's "
                     f"tokens/s** ({stack.tokens_per_s or 0:,.0f} of {ceiling.tokens_per_s:,.0f}; target 75 %)")
    if stack is not None and classic is not None:
        lines.append(
            f"- this stack / classic service: tokens/s {_ratio(stack.tokens_per_s, classic.tokens_per_s)}, "
            f"texts/s {_ratio(stack.texts_per_s, classic.texts_per_s)}, "
            f"p99 {_ratio(stack.request_p99_ms, classic.request_p99_ms, 2)}, "
            f"short-request p99 {_ratio(stack.short_p99_ms, classic.short_p99_ms, 2)} (and the classic service "
            "judges only the first 128 tokens of each text)"
        )
    return lines


def _by_size_lines(pool: TextPool, classic: LoadResult | None, stack: LoadResult | None) -> list[str]:
    """Request p99 and shed attempts by request size, and a warning if the pool ran out."""
    lines = []
    for who, result in (("classic service", classic), ("this stack", stack)):
        if result is not None and result.p99_by_size:
            lines.append(f"- {who}, request p99 by size (requests): " + ", ".join(
                f"{size} {_ms(result.p99_by_size[size])} ms ({(result.requests_by_size or {}).get(size, 0)})"
                for size in (c.name for c in pool.mix.classes) if size in result.p99_by_size)
                + (f"; shed attempts {', '.join(f'{k} {v}' for k, v in result.shed_by_size.items() if v)}"
                   if result.shed_by_size and any(result.shed_by_size.values()) else "")
                + (f"; {result.given_up} requests still shed after 10 retries (given up)" if result.given_up else ""))
    for who, result in (("classic service", classic), ("this stack", stack)):
        if result is not None and result.wrapped_texts:
            lines.append(f"- warning: the pool ran out for the {who}: {result.wrapped_texts} texts were sent again "
                         "(with a round mark)")
    return lines


def _diagnostic_lines(g: dict, stack: LoadResult | None) -> list[str]:
    """What the transformer's and Triton's metrics say about the stack's run."""
    duration = (stack.duration_s if stack is not None else None) or g["wall_s"]
    lines = [f"- the transformer's own count (`sentiment_text_tokens_sum` over the run / the k6 run's "
             f"{duration:.0f} s): {g['tokens_per_s'] or 0:,.0f} tokens/s, "
             f"{g['texts_computed']:,} texts in {g['windows']:,} windows "
             f"({g['windows_per_text'] or 0:.2f} per text)"]
    if g.get("predictor_calls"):
        lines.append(f"- predictor calls: {g['predictor_calls']:,}, {g['windows_per_call']:.1f} windows and "
                     f"{g['padded_tokens_per_call']:.0f} padded tokens per call on average, "
                     f"{(g['real_token_share'] or 0) * 100:.0f} % of the padded tokens real; call latency "
                     f"{g['predictor_call_ms']:.1f} ms on average; tokens queued in the transformer: "
                     f"{g['queued_tokens_mean'] or 0:,.0f} on average (empty in "
                     f"{(g['queue_empty_share'] or 0) * 100:.0f} % of the samples)")
    if g.get("triton_executions"):
        lines.append(f"- Triton: {g['triton_executions']:,} model executions of "
                     f"{g['triton_rows_per_execution']:.1f} rows, {g['triton_compute_ms_per_execution']:.1f} ms "
                     f"compute each ({g['triton_compute_s']:.0f} s of compute in the run, over its instances), queue "
                     f"{g['triton_queue_ms_per_request']:.1f} ms per request")
    return lines


def _add_every_text_new(report: MarkdownReport, new: dict[str, LoadResult], short_ceiling: float | None) -> None:
    report.heading("Every text new (short sentences), the same run")
    rows = [(who, f"{r.texts_per_s:.0f}", _pct(r.texts_per_s, short_ceiling), _ms(r.p50_ms), _ms(r.p99_ms),
             f"{r.failed_rate * 100:.2f} %", _ms(r.health_p99_ms)) for who, r in new.items()]
    report.add(markdown_table(("service", "texts/s", "of the model alone (sentences/s)", "p50 ms", "p99 ms",
                               "failed", "health p99 ms"), rows),
               f"Model alone on short sentences in this run: {short_ceiling:.0f} sentences/s (best batch)."
               if short_ceiling else "")
