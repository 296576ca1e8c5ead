"""loadtest/simulate.js as k6 users run it: k6's own --vus / --duration size a run (the default
export), and the script's own scenarios still work."""

import json
import os
import subprocess

import pytest

from sentiment.measure.k6 import SCRIPT, k6_binary, run_k6
from tests.conftest import TransformerServer, TritonServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_service(tiny_repositories, logs_dir):
    triton = TritonServer(tiny_repositories["distilbert"], logs_dir / "k6-script-triton").start()
    server = TransformerServer(triton, logs_dir).start()
    yield server
    server.stop()
    triton.stop()


def test_k6_flags_vus_and_duration_run_the_default_export(tiny_service, tmp_path):
    summary_file = tmp_path / "summary.json"
    environment = os.environ | {"BASE_URL": tiny_service.url, "SUMMARY_FILE": str(summary_file), "TEXTS_PER_REQUEST": "2"}
    result = subprocess.run([k6_binary(), "run", "--quiet", "--no-usage-report", "--vus", "2", "--duration", "3s",
                             str(SCRIPT)], env=environment, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "function 'default' not found" not in result.stderr
    assert "scenario=default (k6 flags)" in result.stdout
    metrics = json.loads(summary_file.read_text())["metrics"]
    assert metrics["http_reqs"]["values"]["count"] > 5
    assert metrics["http_req_failed"]["values"]["rate"] == 0
    assert metrics["texts_classified"]["values"]["count"] == 2 * metrics["http_reqs"]["values"]["count"]


def test_the_scripts_own_scenarios_still_run(tiny_service, tmp_path):
    result = run_k6(tmp_path, "smoke", {"BASE_URL": tiny_service.url, "SCENARIO": "smoke", "DURATION": "2s",
                                        "TEXTS_PER_REQUEST": 2}, html_report=False)
    assert result.requests > 5 and result.failed_rate == 0 and result.thresholds_ok
