"""The default build exports only when something changed, and says what: `make run` (the CLI's
`sentiment model build`, then `sentiment up`'s own check) must not export twice."""

import shutil
import subprocess
import sys
import time

import pytest

from sentiment.cli import build_parser
from sentiment.model.build import BuildStamp, build
from sentiment.model.cli import export_options
from sentiment.model.export_options import ExportOptions

pytestmark = [pytest.mark.slow, pytest.mark.model]

UP_TO_DATE_CHECK_STARTS = 4  # times the process start alone (--help): 1.0 measured, 0.7 s each


def test_the_cli_defaults_are_the_export_options_defaults():
    """The cause of the double export: the CLI's build and the API's build stamped different options."""
    assert export_options(build_parser().parse_args(["model", "build"])) == ExportOptions()
    assert export_options(build_parser().parse_args(["model", "export", "--checkpoint", "x"])) == ExportOptions()


@pytest.fixture
def built_copy(default_build, tmp_path):
    """A copy of the default model repository (as `make model` left it) in a tmp folder."""
    repository = tmp_path / "repository"
    shutil.copytree(default_build.repository, repository)
    return repository


def test_two_builds_in_a_row_the_second_exports_nothing(built_copy):
    onnx = built_copy / "sentiment" / "1" / "model.onnx"
    before = onnx.stat().st_mtime_ns
    started = time.monotonic()  # the baseline: the same process start and imports, with nothing to check
    assert subprocess.run([sys.executable, "-m", "sentiment.cli", "model", "build", "--help"],
                          capture_output=True, timeout=120).returncode == 0
    start_seconds = time.monotonic() - started
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "sentiment.cli", "model", "build", "--out", str(built_copy)],
                            capture_output=True, text=True, timeout=120)
    cli_seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "default model up to date" in result.stdout
    assert "exporting" not in result.stderr
    again = build(built_copy)  # what `sentiment up` runs next
    assert (again.exported, again.trained) == (False, False)
    assert onnx.stat().st_mtime_ns == before
    print(f"\n[build] up-to-date check through the CLI: {cli_seconds:.1f} s (process start included; "
          f"the same process with --help: {start_seconds:.1f} s)")
    # Reading a few files and hashing the base encoder: no export (a minute), no torch import.
    assert cli_seconds < UP_TO_DATE_CHECK_STARTS * start_seconds


def test_the_stamp_reads_back_what_it_wrote(default_build):
    stamp = BuildStamp.of_repository(default_build.repository)
    assert stamp is not None and stamp.options == ExportOptions().resolved(default_build.checkpoint)
    assert stamp.reasons_to_export(stamp) == []
