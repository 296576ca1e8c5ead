"""Child processes with a readiness probe, a log file each, and a clean stop by process group.

`sentiment up`, the benchmarks and the tests start every server through `ManagedProcess`, and
every HTTP readiness check is `http_ok`: one way to start a part and one way to ask if it is up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence


class ProcessFailed(RuntimeError):
    """A child exited or never became ready; the message ends with the tail of its log."""


_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on `host` (tests bind their servers to these), and never one this
    process handed out before: the kernel may offer a port it just offered again, and two parts of one
    stack on the same port fail in confusing ways (a probe reaching the wrong server)."""
    with _handed_out_lock:
        for _ in range(1000):
            with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise ProcessFailed("no free TCP port left that this process has not handed out already")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_holder(port: int) -> str | None:
    """Which process listens on `port`, in a few words ("pid 1234 (python3 -m transformer), part of the
    `sentiment up` with pid 1200"); None when no listener can be seen (another user's process, or psutil
    not installed)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        listeners = [c for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid]
        if not listeners:
            return None
        process = psutil.Process(listeners[0].pid)
        command = process.cmdline()
        name = process.name()
        if "-m" in command[:-1]:
            name += " -m " + command[command.index("-m") + 1]
        holder = f"pid {process.pid} ({name})"
        stack = next((parent for parent in process.parents()
                      if {"sentiment", "up"} <= {Path(part).name for part in parent.cmdline()[:4]}
                      or "sentiment.cli" in parent.cmdline() and "up" in parent.cmdline()), None)
        return holder + (f", part of the `sentiment up` with pid {stack.pid}" if stack else "")
    except (psutil.Error, OSError):
        return None


def busy_ports(ports: dict[str, int]) -> list[str]:
    """The named ports that are taken, each with the process that holds it when it can be seen."""
    busy = []
    for name, port in ports.items():
        if not port_is_free(port):
            holder = port_holder(port)
            busy.append(f"{name} {port}: " + (holder or "held by a process this user cannot see"))
    return busy


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """The readiness probe: GET `url` answers 200. Refused, timed out or any other status: False."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:  # URLError, HTTPError, ConnectionError, timeouts
        return False


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them: a KeyboardInterrupt raised
    inside `subprocess.Popen` (after the fork, before it returns) loses the child's pid, and the child,
    in a session of its own, outlives every clean-up. Main thread only (elsewhere: no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {signum: signal.signal(signum, lambda number, _frame: pending.append(number))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in pending:
            os.kill(os.getpid(), signum)  # now to the handler the caller had


@dataclass
class ManagedProcess:
    """One server process: started in its own session so that stop() reaches its children too.

    `ready` is its readiness probe (e.g. `lambda: http_ok(url)`); `start()` may be called again after
    the process died, which is how the local stack restarts a crashed part.
    """

    name: str
    command: Sequence[str]
    log_file: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    ready: Callable[[], bool] | None = None
    ready_timeout_s: float = 60.0
    process: subprocess.Popen | None = field(default=None, init=False)
    started_at: float = field(default=0.0, init=False)  # time.monotonic() of the last start

    def start(self) -> "ManagedProcess":
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_file.open("ab")
        with signals_deferred():
            self.process = subprocess.Popen(
                list(self.command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, start_new_session=True,
            )
        log.close()
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def is_ready(self) -> bool:
        """Alive and its probe answers (no probe: alive is ready)."""
        if not self.alive():
            return False
        with contextlib.suppress(Exception):
            return self.ready is None or bool(self.ready())
        return False

    def wait_ready(self, probe: Callable[[], bool] | None = None, timeout: float | None = None,
                   interval: float = 0.1) -> "ManagedProcess":
        """Poll the probe (`probe`, else `self.ready`) until it returns True; fail fast if the process exits."""
        probe = probe or self.ready or (lambda: True)
        timeout = self.ready_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ProcessFailed(f"{self.name} exited with code {self.returncode}; log {self.log_file}:\n"
                                    f"{tail(self.log_file)}")
            with contextlib.suppress(Exception):
                if probe():
                    return self
            time.sleep(interval)
        raise ProcessFailed(
            f"{self.name} was not ready after {timeout:.0f} s; log {self.log_file}:\n{tail(self.log_file)}"
        )

    def signal(self, signum: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signum)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds; returns the exit code."""
        if self.process is None:
            return None
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait(timeout=5)
        # Reap anything left in the group (e.g. Triton's Python-backend stubs).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        return self.process.returncode
