"""The exports of users' checkpoints (`sentiment up --checkpoint`) in the per-machine cache, and
their pruning: each is a whole model repository (as large as its ONNX file, tens to hundreds of MB), one
per checkpoint state and export option set, so they pile up as a checkpoint is retrained; nothing else
removes them."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from sentiment.model.build_lock import build_lock
from sentiment.paths import cache_home

LAST_USED = ".last-used"  # touched on every use: its age is what pruning goes by


def exports_home() -> Path:
    """`<cache>/exports/`: one folder per exported checkpoint state, named by its key."""
    return cache_home() / "exports"


def mark_used(repository: Path) -> None:
    (repository / LAST_USED).touch()


def last_used(repository: Path) -> float:
    """When the export was last served (its stamp), else when it was written (older exports had no stamp)."""
    stamp = repository / LAST_USED
    return (stamp if stamp.exists() else repository).stat().st_mtime


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


@dataclass(frozen=True)
class CachedExport:
    path: Path
    size_bytes: int
    idle_days: float


def cached_exports(now: float | None = None) -> list[CachedExport]:
    """Every export in the cache, the longest unused first."""
    home, now = exports_home(), time.time() if now is None else now
    if not home.is_dir():
        return []
    found = [CachedExport(path, folder_bytes(path), (now - last_used(path)) / 86400)
             for path in home.iterdir() if path.is_dir()]
    return sorted(found, key=lambda export: -export.idle_days)


def prune_exports(older_than_days: float, dry_run: bool = False) -> list[CachedExport]:
    """Remove the exports not served for `older_than_days` (0: all); returns what was (or would be) removed.
    Holds the build lock, so an export being written or served right now by `sentiment up` is not cut."""
    with build_lock(cache_home()):
        doomed = [export for export in cached_exports() if export.idle_days >= older_than_days]
        if not dry_run:
            for export in doomed:
                shutil.rmtree(export.path)
    return doomed
