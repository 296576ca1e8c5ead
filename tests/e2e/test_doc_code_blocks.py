"""Every bash and python block of README.md and docs/*.md, run as written against a live stack.

The stack is the default model with Redis, started by the fixtures on free ports; the only change to a
block is the port: `localhost:8000` / `localhost:8081` become the stack's HTTP and gRPC ports. Python
blocks run in `.venv`'s interpreter, each in its own process (tritonclient.grpc and kserve cannot
share one). A block shown with its output (`<!-- output -->` below it) must print exactly that, or, where
the docs say so, the same JSON with its numbers rounded. Blocks run with a private, empty per-machine
cache (SENTIMENT_CACHE_DIR), so none can touch the machine's own. Blocks not run are marked in the docs
with the reason (`tests/unit/test_doc_blocks.py` holds the conventions).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sentiment.paths import REPO_ROOT
from tests.support.doc_blocks import Block, json_documents, rounded, with_outputs
from tests.support.stacks import supervised_stack

pytestmark = [pytest.mark.slow, pytest.mark.model]

PAIRS = with_outputs()
BLOCK_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def docs_stack(default_build, logs_dir):
    with supervised_stack(default_build.repository, logs_dir / "docs-stack") as (stack, _messages):
        yield stack


def as_written_for(stack, code: str) -> str:
    ports = {"8000": stack.config.port, "8081": stack.config.grpc_port}
    for default, port in ports.items():
        code = code.replace(f"localhost:{default}", f"localhost:{port}").replace(
            f"127.0.0.1:{default}", f"127.0.0.1:{port}"
        )
    return code


def run_block(block: Block, code: str, cache_dir) -> subprocess.CompletedProcess:
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    command = ([str(venv_python if venv_python.exists() else sys.executable), "-c", code] if block.language == "python"
               else ["bash", "-e", "-o", "pipefail", "-c", code])
    environment = os.environ | {"SENTIMENT_CACHE_DIR": str(cache_dir)}
    return subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT_S)


def shown_output(actual: str, output: Block) -> str:
    """What the docs should show for `actual` (the message of a mismatch: paste it)."""
    if output.rounding is None:
        return actual
    import json

    return "\n".join(json.dumps(rounded(document, output.rounding), separators=(",", ":"))
                     for document in json_documents(actual))


@pytest.mark.parametrize("block, output", PAIRS, ids=[block.name for block, _ in PAIRS])
def test_the_block_runs_as_written(block: Block, output: Block | None, docs_stack, tmp_path):
    result = run_block(block, as_written_for(docs_stack, block.code), tmp_path / "cache")
    assert result.returncode == 0, f"{block.name} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    if block.language == "bash" and block.code.lstrip().startswith("curl"):
        answers = json_documents(result.stdout)
        assert answers and not any(isinstance(a, dict) and "error" in a for a in answers), result.stdout
    if output is None:
        return
    if output.rounding is None:
        assert result.stdout.strip() == output.code.strip(), \
            f"{output.name} shows another output than the block prints; it prints:\n{result.stdout}"
    else:
        actual = rounded(json_documents(result.stdout), output.rounding)
        assert actual == json_documents(output.code), \
            f"{output.name} shows another output than the server gives; rounded as stated it is:\n" \
            f"{shown_output(result.stdout, output)}"


def test_the_model_card_states_what_the_build_measured(default_build):
    """The README's model card is the card the default build writes (`sentiment model card`): data
    counts, accuracies, calibration and sizes are the same on every machine (speeds are not: they stay
    in the bundle's MODEL_CARD.md)."""
    from sentiment.model.card import load_build, readme_card, render

    report, metrics = load_build(default_build.repository)
    expected = render(report, metrics)
    assert readme_card((REPO_ROOT / "README.md").read_text()) == expected, \
        "the README's model card is not this build's; run: .venv/bin/sentiment model card --readme README.md"
    bundled = (default_build.repository / "sentiment" / "1" / "bundle" / "MODEL_CARD.md").read_text()
    assert bundled.startswith(expected.rstrip("\n")) and "sentences/s" in bundled
