"""The per-machine build lock: one build, export or prune of the cache at a time (a test run and
`make run` may start together). Its own module: the build and the export cache both take it."""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    """One build per machine at a time (a test run and `make run` may start together)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "build.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
