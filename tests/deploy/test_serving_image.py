"""The serving image's dependency set, without a Docker engine: a virtual environment built by the
Dockerfile's own install command from a copy holding only what the Dockerfile copies, then
`python -m transformer` from it against the real Triton, classifying a text. A runtime dependency
missing from pyproject's [project] dependencies fails here, not in a cluster."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sentiment.paths import REPO_ROOT
from sentiment.stack.processes import free_port
from sentiment.stack.transformer import TransformerLaunch, tracing_environment
from tests.conftest import TritonServer

pytestmark = pytest.mark.slow

DOCKERFILE = REPO_ROOT / "Dockerfile.transformer"
IMAGE_VENV = "/opt/venv"


def builder_stage() -> list[str]:
    """The builder stage's instructions, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text().split("\nFROM ")[1]  # [0] is the header, [1] the builder, [2] the image
    joined = re.sub(r"\\\n\s*", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [line.strip() for line in joined.splitlines() if line.strip()]


def copied_paths() -> list[str]:
    """What the builder stage COPYs from the build context (sources of every plain COPY)."""
    paths = []
    for instruction in builder_stage():
        if instruction.startswith("COPY ") and "--from" not in instruction:
            paths += instruction.split()[1:-1]
    return paths


def install_command() -> str:
    (command,) = [i[len("RUN "):] for i in builder_stage() if i.startswith("RUN ") and "install-serving-package" in i]
    return command


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory) -> Path:
    """The image's /opt/venv, built here: same Python minor version, same command, same inputs."""
    root = tmp_path_factory.mktemp("serving-image")
    context, venv = root / "src", root / "venv"
    for path in copied_paths():
        source, target = REPO_ROOT / path, context / path
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    assert not (context / "sentiment").exists() and (context / "transformer").is_dir()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    command = install_command().replace(IMAGE_VENV, str(venv))
    result = subprocess.run(["sh", "-ec", command], cwd=context, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return venv


def test_the_image_holds_the_serving_package_alone(image_venv, tmp_path):
    python = str(image_venv / "bin" / "python")
    code = ("import importlib.util as u, transformer; print(transformer.__file__); "
            "print([m for m in ('sentiment', 'torch', 'transformers', 'onnx', 'onnxruntime') if u.find_spec(m)]); "
            "import opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.http.trace_exporter")
    result = subprocess.run([python, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    location, found = result.stdout.splitlines()
    assert location.startswith(str(image_venv)), location  # the installed copy, not the checkout
    assert found == "[]"
    assert not (image_venv / "bin" / "sentiment").exists()


def test_the_image_environment_classifies_through_the_real_triton(image_venv, tiny_repositories, logs_dir, tmp_path):
    triton = TritonServer(tiny_repositories["bert"], logs_dir / "image-triton").start()
    launch = TransformerLaunch.for_repository(tiny_repositories["bert"], triton.ports, http_port=free_port(),
                                              grpc_port=free_port(), python=str(image_venv / "bin" / "python"))
    # Run outside the checkout, so that `-m transformer` can only import the installed package; with
    # tracing on (its SDK must be in the image), exporting to a port nobody listens on: serving goes on.
    server = launch.process(logs_dir / "image-transformer.log", name="image-transformer", cwd=tmp_path,
                            env={"PYTHONPATH": "", **tracing_environment(f"http://127.0.0.1:{free_port()}")})
    try:
        server.start().wait_ready(timeout=90)
        response = httpx.post(launch.url + "/project/bulk-predict", json={"text": ["i love this"]}, timeout=30)
        assert response.status_code == 200, response.text
        (ranked,) = response.json()["predictions"]
        assert {item["label"] for item in ranked} == {"NEGATIVE", "POSITIVE"}
        assert abs(sum(item["score"] for item in ranked) - 1) < 1e-4
    finally:
        server.stop()
        triton.stop()
