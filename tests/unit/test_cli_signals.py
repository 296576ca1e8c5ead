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
        print(child.pid, flush=True)
        try:
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
