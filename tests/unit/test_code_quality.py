"""The house rules that a tool can check, run with the tests so `make test` fails on a finding:
ruff (pyflakes, pycodestyle at 120 characters, bugbear) over the code and the tests, mypy over the
serving package. Their settings are in pyproject.toml."""

import subprocess
import sys

from tests.conftest import REPO_ROOT


def run(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)


def test_ruff_finds_nothing():
    result = run("ruff", "check", "--no-cache", "transformer", "sentiment", "scripts", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing_in_the_serving_package():
    result = run("mypy")  # files and options: [tool.mypy] in pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr
