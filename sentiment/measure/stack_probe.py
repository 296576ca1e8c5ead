"""What the stack says about itself during a k6 run: the transformer's and Triton's counters before and
after (from their /metrics), the queued-token gauge sampled meanwhile, the CPU seconds of each part,
and the numbers derived from them (where the time goes).

Tokens are counted one way everywhere: the serving tokenizer's tokens of each text, special tokens
excluded (`TextWindows.token_count`, what the transformer's `sentiment_text_tokens` histogram
records); k6 adds the pool's count of every text it got an answer for (`tokens_classified`), and the
transformer's `sentiment_text_tokens_sum` over the run is the cross-check.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from sentiment.measure.cpu import machine_cpu_seconds, process_cpu_seconds
from sentiment.measure.metrics_page import scrape, total, totals


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
        values = {f"transformer:{k}": v for k, v in totals(scrape(self.transformer_metrics)).items()} \
            if self.transformer_metrics else {}
        if self.triton_metrics:
            try:
                values |= {f"triton:{k}": v for k, v in totals(scrape(self.triton_metrics)).items()}
            except OSError:
                pass
        return values

    def _cpu(self) -> dict[str, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # k6, once run_k6 has waited for it
        return {name: process_cpu_seconds(pid) for name, pid in self.pids.items()} | {
            "k6": children.ru_utime + children.ru_stime, "machine": machine_cpu_seconds()}

    def _sample(self) -> None:
        while self.transformer_metrics and not self._stop.wait(self.interval_s):
            try:
                self.queued.append(total(scrape(self.transformer_metrics, timeout=2), "sentiment_queued_tokens"))
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
