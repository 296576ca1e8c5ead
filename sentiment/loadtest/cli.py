"""`sentiment loadtest`: k6 against the local stack for several cache hit rates, plus a comparison report."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Iterator

from sentiment.paths import REPO_ROOT


def service_healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/project/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def local_stack_if_needed(base_url: str, logs: Path, start: bool) -> Iterator[None]:
    """Use a service that already answers at base_url; else start the default local stack for the run."""
    if service_healthy(base_url):
        yield
        return
    if not start:
        raise SystemExit(f"nothing healthy at {base_url}: start it (`make run`) or pass --start-stack")
    from sentiment.model.build import build
    from sentiment.paths import default_model_repository
    from sentiment.stack.up import Stack, StackConfig

    port = urllib.parse.urlsplit(base_url).port or 8000
    build(default_model_repository())
    stack = Stack(StackConfig(model_repository=default_model_repository(), logs=logs, port=port))
    print(f"starting the local stack for the load test (logs in {logs}) ...", flush=True)
    try:
        stack.start()
        yield
    finally:
        stack.stop()


def _cmd_loadtest(args: argparse.Namespace) -> int:
    from sentiment.loadtest.k6 import run_k6
    from sentiment.loadtest.report import comparison_markdown, write_charts

    out = Path(args.out or REPO_ROOT / "loadtest" / "results" / datetime.now().strftime("%Y%m%d-%H%M%S"))
    rates = [float(rate) for rate in args.rates.split(",")]
    base_env = {
        "BASE_URL": args.base_url, "SCENARIO": args.scenario, "VUS": args.vus, "TEXTS_PER_REQUEST": args.texts,
        "RAMP_UP": args.ramp_up, "HOLD": args.hold, "RAMP_DOWN": args.ramp_down, "HIT_GRANULARITY": args.granularity,
        "HEALTH_RATE": args.health_rate, "RUN_ID": str(int(time.time())),
    }
    results = []
    with local_stack_if_needed(args.base_url, out / "stack-logs", args.start_stack):
        for rate in rates:
            label = f"hit rate {rate:g}"
            print(f"k6: {label} ({args.scenario}, {args.vus} VUs, {args.texts} texts/request) ...", flush=True)
            result = run_k6(out / f"rate-{rate:g}", label, base_env | {"CACHE_HIT_RATE": rate}, html_report=not args.no_html)
            results.append(result)
            print(f"  {result.requests_per_s:.1f} req/s, {result.texts_per_s:.0f} texts/s, p50 {result.p50_ms:.1f} ms, "
                  f"p99 {result.p99_ms:.1f} ms, failed {result.failed_rate * 100:.2f} %", flush=True)
    write_charts(results, out, "sentiment /project/bulk-predict")
    command = "sentiment loadtest " + shlex.join(sys.argv[2:]) if len(sys.argv) > 2 else "sentiment loadtest"
    settings = (f"k6 {args.scenario}, {args.vus} VUs, ramp {args.ramp_up} / hold {args.hold} / down {args.ramp_down}, "
                f"{args.texts} texts per request, hit granularity {args.granularity}")
    (out / "comparison.md").write_text(comparison_markdown(results, command, settings))
    (out / "results.json").write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
    print(f"report: {out / 'comparison.md'}")
    return 0 if all(r.thresholds_ok for r in results) else 99


def add_loadtest_command(commands) -> None:
    parser = commands.add_parser(
        "loadtest", help="k6 load test of the local stack at several cache hit rates, with a comparison report",
        description="Runs loadtest/simulate.js with k6 for each cache hit rate and writes, per run, the k6 summary "
                    "and HTML report, and one comparison report (markdown + PNG charts). Uses the service at "
                    "--base-url, or starts the local stack when nothing answers there.")
    parser.add_argument("--base-url", default="http://localhost:8000")
    parser.add_argument("--rates", default="0,1", help="comma-separated cache hit rates (default 0,1)")
    parser.add_argument("--granularity", choices=["request", "text"], default="request",
                        help="a hit is the whole warm request (default) or each text from a warm pool")
    parser.add_argument("--scenario", choices=["closed", "open", "saturation", "smoke"], default="closed")
    parser.add_argument("--vus", type=int, default=10)
    parser.add_argument("--texts", type=int, default=10, help="texts per request (default 10)")
    parser.add_argument("--ramp-up", default="30s")
    parser.add_argument("--hold", default="60s")
    parser.add_argument("--ramp-down", default="15s")
    parser.add_argument("--health-rate", type=float, default=5, help="health checks per second alongside (default 5)")
    parser.add_argument("--out", help="results folder (default loadtest/results/<timestamp>)")
    parser.add_argument("--no-html", action="store_true", help="skip k6's HTML report")
    parser.add_argument("--start-stack", action=argparse.BooleanOptionalAction, default=True,
                        help="start the local stack when nothing answers at --base-url (default on)")
    parser.set_defaults(handler=_cmd_loadtest)
