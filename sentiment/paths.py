"""Where things live on disk; every path has a default and can be overridden."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout: the one place that computes it
MONITORING_DIR = REPO_ROOT / "monitoring"         # alert rules, Grafana dashboard, Prometheus config
LOADTEST_DIR = REPO_ROOT / "loadtest"             # the k6 script and its Kubernetes Job / TestRun
LOGS_DIR = REPO_ROOT / ".logs"                    # `sentiment up` logs


def cache_home() -> Path:
    """Per-machine cache for downloads and trained checkpoints (shared by all clones).

    `SENTIMENT_CACHE_DIR` wins, then `$XDG_CACHE_HOME/sentiment-serving`, then `~/.cache/...`.
    """
    explicit = os.environ.get("SENTIMENT_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "sentiment-serving"


def default_model_repository() -> Path:
    """The Triton model repository the local stack serves (`model_repository/` in the checkout)."""
    return REPO_ROOT / "model_repository"
