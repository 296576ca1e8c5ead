"""`sentiment`: the one command line of the project (model building, local stack, load tests, benchmarks,
scoring files).

Each subcommand lives with its package (`sentiment.model.cli`, `sentiment.stack.cli`,
`sentiment.measure.cli`, `sentiment.score.cli`) and turns its arguments into typed options there: nothing below a
handler sees argparse.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Sequence

from sentiment.measure.cli import add_bench_command, add_loadtest_command
from sentiment.model.cli import add_model_commands
from sentiment.score.cli import add_score_command
from sentiment.stack.cli import add_stack_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sentiment", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    add_model_commands(commands)
    add_stack_commands(commands)
    add_loadtest_command(commands)
    add_bench_command(commands)
    add_score_command(commands)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so that every `with`/`finally` stops what it started."""


def _terminate(_signum: int, _frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Without these a SIGTERM (kill, a CI timeout) ends the process at once, and a SIGINT is lost where
    # the parent left it ignored (a script's background job): either way the Redis, Triton, transformer
    # and k6 that `up`, a benchmark or a load test started would run on as orphans.
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _terminate),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}
    try:
        return args.handler(args)
    except Terminated:
        return 143
    except KeyboardInterrupt:
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
