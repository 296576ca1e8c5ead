"""The build's decision to export, and the reasons it gives, without training or exporting: the
checkpoint is a config.json, the repository's stamp is set by the test, the export is recorded."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from sentiment.model import build as build_module
from sentiment.model import export as export_module
from sentiment.model.build import BuildStamp, build
from sentiment.model.export_options import ExportOptions
from sentiment.model.train import TrainConfig


@pytest.fixture
def checkpoint(tmp_path):
    """A cached checkpoint as far as the build reads it: its config."""
    path = tmp_path / "checkpoints" / "0123456789abcdef"
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 512,
                                                  "id2label": {"0": "NEGATIVE", "1": "POSITIVE"}}))
    return path


@pytest.fixture
def stamped(checkpoint, tmp_path, monkeypatch):
    """The repository's stamp (None: no built repository) and the exports the build ran."""
    state = {"stamp": None, "exports": []}
    monkeypatch.setattr(build_module, "cache_home", lambda: tmp_path)
    monkeypatch.setattr(build_module, "ensure_checkpoint", lambda config: (checkpoint, False))
    monkeypatch.setattr(build_module, "export_code_version", lambda: "code-1")
    monkeypatch.setattr(BuildStamp, "of_repository", classmethod(lambda cls, repository: state["stamp"]))
    monkeypatch.setattr(export_module, "export", lambda checkpoint, repository, options, **kw:
                        state["exports"].append(options))
    return state


def test_a_build_says_why_it_exports(stamped, checkpoint, tmp_path):
    default = ExportOptions().max_queue_delay_us
    resolved = ExportOptions().resolved(checkpoint)
    config = TrainConfig(base=str(tmp_path))
    stamped["stamp"] = BuildStamp(checkpoint.name, "code-1", replace(resolved, max_queue_delay_us=3000))
    result = build(tmp_path / "repository", config=config)
    assert result.exported and result.reasons == (f"options changed: max_queue_delay_us: 3000 -> {default}",)
    assert stamped["exports"] == [resolved]

    stamped["stamp"] = BuildStamp("another", "0" * 16, replace(resolved, max_queue_delay_us=3000))
    assert build(tmp_path / "repository", config=config).reasons == (
        "checkpoint changed", "export code changed", f"options changed: max_queue_delay_us: 3000 -> {default}")
    stamped["stamp"] = None
    assert build(tmp_path / "repository", config=config).reasons == ("no built model repository yet",)


def test_an_up_to_date_build_exports_nothing(stamped, checkpoint, tmp_path):
    stamped["stamp"] = BuildStamp(checkpoint.name, "code-1", ExportOptions().resolved(checkpoint))
    result = build(tmp_path / "repository", config=TrainConfig(base=str(tmp_path)))
    assert (result.exported, result.trained, result.reasons) == (False, False, ())
    assert stamped["exports"] == []


def test_the_export_is_redone_when_any_code_that_decides_its_output_changes():
    """What the bundle holds is computed by more than export.py: the temperatures (calibration.py,
    answers.py), the aggregation they are fitted through (windows.py), the card (card.py). A change to
    any of them must make the repository stale; training code and the serving path must not."""
    root = Path(build_module.__file__).resolve().parents[2]
    sources = {path.relative_to(root).as_posix() for path in build_module.export_code_sources()}
    for deciding in ("sentiment/model/export.py", "sentiment/model/answers.py", "sentiment/model/calibration.py",
                     "sentiment/model/card.py", "sentiment/model/evaluation.py", "transformer/core/windows.py",
                     "transformer/core/tokenization.py", "transformer/bundle.py",
                     "sentiment/model/triton_python_model.py"):
        assert deciding in sources, deciding
    for unrelated in ("sentiment/model/train.py", "sentiment/model/build.py", "transformer/core/scheduler.py",
                      "transformer/server.py"):
        assert unrelated not in sources, unrelated
