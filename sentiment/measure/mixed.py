"""The mixed-length workload's section of BENCHMARKS.md (`sentiment bench --workloads mixed`): the model
alone (`ceiling`), the classic service and this stack side by side on the same text pool (`textpool`),
the ratios, what the stack's metrics said during the run (`stack_probe`), and the every-text-new run.
"""

from __future__ import annotations

from sentiment.measure.ceiling import Ceiling
from sentiment.measure.k6 import LoadResult, LoadShape
from sentiment.markdown import markdown_table
from sentiment.measure.report import MarkdownReport
from sentiment.measure.textpool import TextPool


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
