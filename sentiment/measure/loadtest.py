"""`sentiment loadtest`: k6 against the local stack for several cache hit rates, plus a comparison report."""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from sentiment.measure.k6 import LoadResult, LoadShape, run_k6
from sentiment.measure.report import comparison_markdown, write_charts
from sentiment.stack.processes import http_ok


@dataclass(frozen=True)
class LoadtestOptions:
    base_url: str = "http://localhost:8000"
    rates: tuple[float, ...] = (0.0, 1.0)   # cache hit rates, one run each
    granularity: str = "request"             # a hit is the whole warm request, or each text from a warm pool
    shape: LoadShape = LoadShape()
    html_report: bool = True
    start_stack: bool = True                 # start the local stack when nothing answers at base_url

    def settings(self) -> str:
        s = self.shape
        return (f"k6 {s.scenario}, {s.vus} VUs, ramp {s.ramp_up} / hold {s.hold} / down {s.ramp_down}, "
                f"{s.texts_per_request} texts per request, hit granularity {self.granularity}")


def service_healthy(base_url: str) -> bool:
    return http_ok(f"{base_url}/project/health")


@contextlib.contextmanager
def local_stack_if_needed(base_url: str, logs: Path, start: bool) -> Iterator[None]:
    """Use a service that already answers at base_url; else start the default local stack for the run."""
    if service_healthy(base_url):
        yield
        return
    if not start:
        raise SystemExit(f"nothing healthy at {base_url}: start it (`make run`) or pass --start-stack")
    from sentiment.stack.up import ModelSource, Stack, StackConfig

    port = urllib.parse.urlsplit(base_url).port or 8000
    stack = Stack(StackConfig(model_repository=ModelSource().repository_to_serve(), logs=logs, port=port))
    print(f"starting the local stack for the load test (logs in {logs}) ...", flush=True)
    try:
        stack.start()
        yield
    finally:
        stack.stop()


def run_loadtest(options: LoadtestOptions, out: Path, command: str) -> Sequence[LoadResult]:
    """One k6 run per cache hit rate, then the comparison report and charts in `out`."""
    shape, results = options.shape, []
    environment = shape.environment(options.base_url) | {"HIT_GRANULARITY": options.granularity}
    with local_stack_if_needed(options.base_url, out / "stack-logs", options.start_stack):
        for rate in options.rates:
            label = f"hit rate {rate:g}"
            print(f"k6: {label} ({shape.scenario}, {shape.vus} VUs, {shape.texts_per_request} texts/request) ...",
                  flush=True)
            result = run_k6(out / f"rate-{rate:g}", label, environment | {"CACHE_HIT_RATE": rate},
                            html_report=options.html_report)
            results.append(result)
            print(f"  {result.requests_per_s:.1f} req/s, {result.texts_per_s:.0f} texts/s, p50 {result.p50_ms:.1f} ms, "
                  f"p99 {result.p99_ms:.1f} ms, failed {result.failed_rate * 100:.2f} %", flush=True)
    write_charts(results, out, "sentiment /project/bulk-predict", options.settings())
    (out / "comparison.md").write_text(comparison_markdown(results, command, options.settings()))
    (out / "results.json").write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
    print(f"report: {out / 'comparison.md'}")
    return results
