"""SIGTERM to a `sentiment` command stops what the command started (no orphaned stack processes)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import psutil

# A command whose handler starts a child (as bench and loadtest start Redis, Triton, the transformer
# and k6) and stops it in `finally`, like every Stack and ManagedProcess user does.
SCRIPT = textwrap.dedent("""
    import subprocess, sys, time
    from sentiment import cli

    def handler(_args):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:  # the pid is said inside the try: the test's SIGTERM can only come after it
            print(child.pid, flush=True)
            time.sleep(60)
            return 0
        finally:
            child.terminate()
            child.wait(timeout=10)

    parser = cli.build_parser()
    original = parser.parse_args
    def parse_args(argv=None):
        args = original(["model", "check"])
        args.handler = handler
        return args
    parser.parse_args = parse_args
    cli.build_parser = lambda: parser
    sys.exit(cli.main())
""")


def test_sigterm_runs_the_commands_cleanup_and_exits_143():
    process = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(process.stdout.readline())
        assert psutil.pid_exists(child_pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 143
        deadline = time.monotonic() + 5
        while psutil.pid_exists(child_pid) and psutil.Process(child_pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the command's child outlived a SIGTERM to the command"
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()


def test_signals_that_arrive_while_a_part_is_spawned_are_delivered_after_it():
    """A SIGTERM inside `signals_deferred` (as around Popen) reaches the caller's handler only once
    the block is done, so the child's pid is never lost to an interrupt."""
    import os

    from sentiment.stack.processes import signals_deferred

    received: list[str] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: received.append("handled"))
    try:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            received.append("block done")
        time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == ["block done", "handled"]
