"""Latency bounds that hold on any CPU: measure the unloaded cost of the same work in the same run,
then bound the loaded figure by a multiple of it (absolute speed belongs in the benchmarks)."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def timed(call: Callable[[int], object], times: int) -> np.ndarray:
    """Seconds each of `times` sequential calls took (`call(i)`: the i-th, so each can send new texts)."""
    seconds = []
    for i in range(times):
        started = time.monotonic()
        call(i)
        seconds.append(time.monotonic() - started)
    return np.array(seconds)


def p99(seconds) -> float:
    return float(np.percentile(seconds, 99))


def median(seconds) -> float:
    return float(np.percentile(seconds, 50))
