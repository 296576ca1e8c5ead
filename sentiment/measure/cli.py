"""`sentiment loadtest` and `sentiment bench`: their flags, turned into typed options at this boundary."""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime
from pathlib import Path

from sentiment.measure import bench
from sentiment.measure.bench import WORKLOADS, BenchOptions, SaturationSteps
from sentiment.measure.k6 import LoadShape
from sentiment.measure.levers import LeverOptions
from sentiment.measure.loadtest import LoadtestOptions
from sentiment.paths import LOADTEST_DIR


def _command_line(name: str) -> str:
    """The command as the user typed it, for the report header."""
    return f"sentiment {name} " + shlex.join(sys.argv[2:]) if len(sys.argv) > 2 else f"sentiment {name}"


def _results_folder(explicit: str | None, prefix: str = "") -> Path:
    """The raw results of one run: --out, else loadtest/results/<prefix><timestamp> (git-ignored)."""
    return (
        Path(explicit) if explicit else LOADTEST_DIR / "results" / (prefix + datetime.now().strftime("%Y%m%d-%H%M%S"))
    )


# ---- loadtest -------------------------------------------------------------------------------------
def loadtest_options(args: argparse.Namespace) -> LoadtestOptions:
    shape = LoadShape(scenario=args.scenario, vus=args.vus, texts_per_request=args.texts, ramp_up=args.ramp_up,
                      hold=args.hold, ramp_down=args.ramp_down, health_rate=args.health_rate)
    return LoadtestOptions(base_url=args.base_url, rates=tuple(float(rate) for rate in args.rates.split(",")),
                           granularity=args.granularity, shape=shape, html_report=not args.no_html,
                           start_stack=args.start_stack)


def _cmd_loadtest(args: argparse.Namespace) -> int:
    from sentiment.measure.loadtest import run_loadtest

    results = run_loadtest(loadtest_options(args), _results_folder(args.out), _command_line("loadtest"))
    return 0 if all(r.thresholds_ok for r in results) else 99


def add_loadtest_command(commands) -> None:
    defaults = LoadtestOptions()
    parser = commands.add_parser(
        "loadtest", help="k6 load test of the local stack at several cache hit rates, with a comparison report",
        description="Runs loadtest/simulate.js with k6 for each cache hit rate and writes, per run, the k6 summary "
                    "and HTML report, and one comparison report (markdown + PNG charts). Uses the service at "
                    "--base-url, or starts the local stack when nothing answers there.")
    parser.add_argument("--base-url", default=defaults.base_url,
                        help="the service under test (default %(default)s)")
    parser.add_argument("--rates", default="0,1", help="comma-separated cache hit rates (default 0,1)")
    parser.add_argument("--granularity", choices=["request", "text"], default=defaults.granularity,
                        help="a hit is the whole warm request (default) or each text from a warm pool")
    parser.add_argument("--scenario", choices=["closed", "open", "saturation", "smoke"],
                        default=defaults.shape.scenario,
                        help="closed: ramp up to --vus users, hold, ramp down (default); open: constant arrival rate; "
                             "saturation: arrival rate stepped up; smoke: a few seconds")
    parser.add_argument("--vus", type=int, default=defaults.shape.vus,
                        help="virtual users, each sending its next request when the last is answered "
                             "(default %(default)s)")
    parser.add_argument("--texts", type=int, default=defaults.shape.texts_per_request,
                        help="texts per request (default %(default)s)")
    parser.add_argument(
        "--ramp-up",
        default=defaults.shape.ramp_up,
        help="k6 duration from 0 to --vus users (default %(default)s); with --hold and --ramp-down it "
        "sets how long each rate runs: e.g. --ramp-up 2s --hold 10s --ramp-down 2s for a quick look",
    )
    parser.add_argument("--hold", default=defaults.shape.hold, help="k6 duration at --vus users (default %(default)s)")
    parser.add_argument("--ramp-down", default=defaults.shape.ramp_down,
                        help="k6 duration from --vus users to 0 (default %(default)s)")
    parser.add_argument("--health-rate", type=float, default=defaults.shape.health_rate,
                        help="health checks per second alongside (default %(default)s)")
    parser.add_argument("--out", help="results folder (default loadtest/results/<timestamp>)")
    parser.add_argument("--no-html", action="store_true", help="skip k6's HTML report")
    parser.add_argument("--start-stack", action=argparse.BooleanOptionalAction, default=defaults.start_stack,
                        help="start the local stack when nothing answers at --base-url (default on)")
    parser.set_defaults(handler=_cmd_loadtest)


# ---- bench ----------------------------------------------------------------------------------------
def bench_options(args: argparse.Namespace) -> BenchOptions:
    shape = LoadShape(vus=args.vus, ramp_up=args.ramp_up, hold=args.hold, ramp_down="5s")
    saturation = SaturationSteps(args.saturation_start, args.saturation_step, args.saturation_steps)
    return BenchOptions(workloads=tuple(args.workloads), shape=shape, threads=args.threads,
                        classic=not args.skip_classic, saturation=saturation if args.saturation else None,
                        transformer_args=tuple(args.transformer_arg or ()), report=Path(args.report))


def lever_options(args: argparse.Namespace) -> LeverOptions:
    return LeverOptions(names=tuple(args.lever or ()), hold=args.lever_hold, rounds=args.rounds, section=args.section)


def _cmd_bench(args: argparse.Namespace) -> int:
    options, out = bench_options(args), _results_folder(args.out, "bench-")
    if args.levers:
        from sentiment.measure.levers import run_levers_report

        print(run_levers_report(lever_options(args), options.shape, options.report, out, _command_line("bench")))
        return 0
    from sentiment.measure.bench import run_bench

    print(run_bench(options, out, _command_line("bench")))
    return 0


def add_bench_command(commands) -> None:
    defaults, levers = BenchOptions(), LeverOptions()
    parser = commands.add_parser("bench", help="benchmark this stack against the classic FastAPI + pipeline service",
                                 description=bench.__doc__)
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(defaults.workloads),
                        help="; ".join(f"{name}: {workload.description}" for name, workload in WORKLOADS.items())
                        .replace("%", "%%"))  # argparse formats help with %: "80 %" is text
    parser.add_argument("--vus", type=int, default=defaults.shape.vus, help="k6 virtual users (default %(default)s)")
    parser.add_argument("--ramp-up", default=defaults.shape.ramp_up, help="k6 ramp-up duration (default %(default)s)")
    parser.add_argument("--hold", default=defaults.shape.hold, help="k6 duration at --vus users (default %(default)s)")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="inference threads of the classic service and model-alone")
    parser.add_argument("--skip-classic", action="store_true", help="only this stack (and the model alone)")
    parser.add_argument("--saturation", action=argparse.BooleanOptionalAction, default=True,
                        help="also step the arrival rate up past capacity (default on)")
    parser.add_argument("--saturation-start", type=int, default=SaturationSteps.start,
                        help="first arrival rate, requests/s")
    parser.add_argument("--saturation-step", type=int, default=SaturationSteps.step, help="requests/s added per step")
    parser.add_argument("--saturation-steps", type=int, default=SaturationSteps.steps, help="number of steps")
    parser.add_argument("--transformer-arg", action="append", metavar="ARG", help="extra transformer flag (repeatable)")
    parser.add_argument("--levers", action="store_true", help="instead: measure each serving knob on its own")
    parser.add_argument("--lever", action="append", help="with --levers: only these levers (repeatable)")
    parser.add_argument(
        "--lever-hold", default=levers.hold, help="with --levers: hold of each run (default %(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=levers.rounds, help="with --levers: interleaved rounds, median shown"
    )
    parser.add_argument("--section", default=levers.section,
                        help="with --levers: the BENCHMARKS.md section (marker) to write (default %(default)s)")
    parser.add_argument(
        "--report", default=str(defaults.report), help="the markdown file to write (default BENCHMARKS.md)"
    )
    parser.add_argument("--out", help="raw results folder (default loadtest/results/bench-<timestamp>)")
    parser.set_defaults(handler=_cmd_bench)
