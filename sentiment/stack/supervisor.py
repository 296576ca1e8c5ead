"""Supervision of the local stack's parts, the way Kubernetes treats a pod's containers.

A part that may crash without taking the service down (Redis, Triton, Prometheus) is restarted with
exponential backoff; the transformer keeps serving meanwhile (it fails open for Redis, and answers
cached texts and fast 503s while Triton is away). The stack ends only when an essential part (the
transformer) dies, or a part is in a restart loop. Every decision is said on the console and
appended to the part's own log file.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol


@dataclass(frozen=True)
class RestartPolicy:
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    stable_after_s: float = 30.0   # up this long after a start: the backoff starts again from the initial one
    max_restarts: int = 5          # more restarts of one part than this within `window_s`: a restart loop
    window_s: float = 60.0


class Supervised(Protocol):
    """What the supervisor needs of a process (`ManagedProcess` is one)."""

    name: str
    log_file: Path
    started_at: float

    @property
    def returncode(self) -> int | None: ...
    @property
    def pid(self) -> int: ...
    def alive(self) -> bool: ...
    def is_ready(self) -> bool: ...
    def start(self) -> object: ...
    def stop(self, grace: float = 10.0) -> int | None: ...


@dataclass(frozen=True)
class StackEnds:
    """The verdict that stops the stack: which part, and why."""

    process: Supervised
    reason: str


@dataclass
class _PartState:
    backoff_s: float
    restarts: deque = field(default_factory=deque)   # monotonic times of the restarts in the last window
    total_restarts: int = 0
    restart_at: float | None = None                  # a restart is due at this time
    awaiting_ready: bool = False                     # restarted, not ready yet


class Supervisor:
    """One `check()` per tick: notices deaths, schedules and performs restarts, reports recoveries."""

    def __init__(self, processes: Iterable[Supervised], essential: set[str], policy: RestartPolicy,
                 say: Callable[[Supervised, str], None]):
        self.processes = list(processes)
        self.essential = essential
        self.policy = policy
        self.say = say
        self.states = {p.name: _PartState(policy.initial_backoff_s) for p in self.processes}

    def restarts(self, name: str) -> int:
        """Restarts of `name` so far (all of them, not only the last window)."""
        return self.states[name].total_restarts

    def check(self, now: float | None = None) -> StackEnds | None:
        """Look at every part once; returns why the stack must end, or None to keep going."""
        now = time.monotonic() if now is None else now
        for process in self.processes:
            reason = self._check(process, self.states[process.name], now)
            if reason:
                return StackEnds(process, reason)
        return None

    def _check(self, process: Supervised, state: _PartState, now: float) -> str | None:
        policy = self.policy
        if process.alive():
            if state.awaiting_ready and process.is_ready():
                state.awaiting_ready = False
                self.say(process, f"{process.name} is back: ready {now - process.started_at:.1f} s after its restart")
            if now - process.started_at >= policy.stable_after_s:
                state.backoff_s = policy.initial_backoff_s
            return None
        if process.name in self.essential:
            return f"{process.name} exited (code {process.returncode})"
        if state.restart_at is None:
            state.restart_at = now + state.backoff_s
            self.say(process, f"{process.name} exited (code {process.returncode}); restarting it in "
                              f"{state.backoff_s:.1f} s")
            state.backoff_s = min(state.backoff_s * 2, policy.max_backoff_s)
            return None
        if now < state.restart_at:
            return None
        while state.restarts and now - state.restarts[0] > policy.window_s:
            state.restarts.popleft()
        if len(state.restarts) >= policy.max_restarts:
            return (f"{process.name} died again after {len(state.restarts)} restarts within {policy.window_s:.0f} s: "
                    "a restart loop")
        state.restarts.append(now)
        state.total_restarts += 1
        state.restart_at = None
        process.stop(grace=0)  # reap what is left of its process group (e.g. Triton's backend stubs)
        process.start()
        state.awaiting_ready = True
        self.say(process, f"{process.name} restarted (pid {process.pid}, restart {len(state.restarts)} within "
                          f"{policy.window_s:.0f} s)")
        return None
