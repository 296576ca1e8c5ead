"""loadtest/simulate.js as k6 users run it: k6's own --vus / --duration size a run (the default
export), and the script's own scenarios still work."""

import json
import os
import subprocess
import time

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
    environment = os.environ | {"BASE_URL": tiny_service.url, "SUMMARY_FILE": str(summary_file),
                                "TEXTS_PER_REQUEST": "2"}
    result = subprocess.run([k6_binary(), "run", "--quiet", "--no-usage-report", "--vus", "2", "--duration", "3s",
                             str(SCRIPT)], env=environment, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "function 'default' not found" not in result.stderr
    assert "scenario=default (k6 flags)" in result.stdout
    metrics = json.loads(summary_file.read_text())["metrics"]
    assert metrics["http_reqs"]["values"]["count"] > 5
    assert metrics["http_req_failed"]["values"]["rate"] == 0
    assert metrics["texts_classified"]["values"]["count"] == 2 * metrics["http_reqs"]["values"]["count"]


def test_k6_run_directly_leaves_no_file_and_says_when_its_flags_dropped_the_health_probe(tiny_service, tmp_path):
    """`k6 run loadtest/simulate.js` as the docs show it: no summary.json left in the working directory
    (only an explicit SUMMARY_FILE writes one), and k6's --vus/--duration say that no probe ran."""
    environment = os.environ | {"BASE_URL": tiny_service.url, "TEXTS_PER_REQUEST": "2"}
    environment.pop("SUMMARY_FILE", None)
    result = subprocess.run([k6_binary(), "run", "--quiet", "--no-usage-report", "--vus", "1", "--duration", "2s",
                             str(SCRIPT)], env=environment, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no health probes: k6's --vus/--duration/--iterations replaced" in result.stdout
    assert list(tmp_path.iterdir()) == [], "k6 run directly left files in the working directory"


def test_the_scripts_own_variables_size_a_run_and_keep_the_health_probe(tiny_service, tmp_path):
    summary_file = tmp_path / "out.json"
    environment = os.environ | {"BASE_URL": tiny_service.url, "TEXTS_PER_REQUEST": "2",
                                "SUMMARY_FILE": str(summary_file)}
    result = subprocess.run([k6_binary(), "run", "--quiet", "--no-usage-report", "-e", "VUS=2", "-e", "RAMP_UP=0s",
                             "-e", "HOLD=3s", "-e", "RAMP_DOWN=0s", str(SCRIPT)],
                            env=environment, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads(summary_file.read_text())["metrics"]
    assert metrics["http_reqs{scenario:health}"]["values"]["count"] >= 5  # 5/s for 3 s
    assert metrics["http_reqs{scenario:load}"]["values"]["count"] > 5
    assert "health p99" in result.stdout and "no health probes" not in result.stdout


def test_the_scripts_own_scenarios_still_run(tiny_service, tmp_path):
    result = run_k6(tmp_path, "smoke", {"BASE_URL": tiny_service.url, "SCENARIO": "smoke", "DURATION": "2s",
                                        "TEXTS_PER_REQUEST": 2}, html_report=False)
    assert result.requests > 5 and result.failed_rate == 0 and result.thresholds_ok


# ---- the mixed-length workload: texts from a pool that `sentiment bench` writes ----------------------
def _pool(repository, tmp_path, count: int):
    from sentiment.measure.textpool import write_pool
    from sentiment.model.triton_repository import bundle_dir

    # a run id of its own: texts another test sent would be cache hits here
    return write_pool(tmp_path, bundle_dir(repository), count, seed=5, run_id=f"{tmp_path.name}-{time.time_ns()}")


def _k6_flags(service, pool_file, tmp_path, *flags: str) -> tuple[dict, subprocess.CompletedProcess]:
    summary_file = tmp_path / "summary.json"
    environment = os.environ | {"BASE_URL": service.url, "SUMMARY_FILE": str(summary_file),
                                "TEXT_POOL_FILE": str(pool_file), "TEXTS_PER_REQUEST": "10"}
    result = subprocess.run([k6_binary(), "run", "--quiet", "--no-usage-report", *flags, str(SCRIPT)], env=environment,
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    summary = json.loads(summary_file.read_text())
    # 99: a threshold crossed; allowed only for 503s (shed, then sent again, as a client does)
    metrics = summary["metrics"]
    failed = metrics["http_req_failed"]["values"]["passes"]
    assert result.returncode == 0 or (result.returncode == 99 and failed == metrics.get(
        "shed_requests", {}).get("values", {}).get("count")), result.stdout + result.stderr
    return summary, result


def test_the_mixed_workload_sends_the_pool_in_order_and_counts_its_tokens(tiny_service, tiny_repositories, tmp_path):
    from sentiment.measure.k6 import parse_summary

    pool_file, pool = _pool(tiny_repositories["distilbert"], tmp_path, 600)
    before = {name: tiny_service.metric(name) for name in ("sentiment_text_tokens_sum", "sentiment_text_tokens_count")}
    summary, run = _k6_flags(tiny_service, pool_file, tmp_path, "--vus", "2", "--iterations", "40")
    result = parse_summary(summary, "mixed")
    metrics = summary["metrics"]

    sent = pool.texts[:400]  # 40 requests of the next 10 texts each, no text twice
    assert metrics["texts_classified"]["values"]["count"] == 400 and result.wrapped_texts == 0
    assert metrics["tokens_classified"]["values"]["count"] == sum(t.tokens for t in sent)
    # the transformer computed exactly these texts and counts their tokens the same way
    assert tiny_service.metric("sentiment_text_tokens_count") - before["sentiment_text_tokens_count"] == 400
    assert tiny_service.metric("sentiment_text_tokens_sum") - before["sentiment_text_tokens_sum"] == sum(
        t.tokens for t in sent
    )
    sizes = {"short": 0, "medium": 0, "long": 0}
    order = list(sizes)
    for first in range(0, 400, 10):
        sizes[max((t.size for t in sent[first:first + 10]), key=order.index)] += 1
    assert result.requests_by_size == {size: count for size, count in sizes.items() if count}
    assert result.tokens_per_s > 0 and result.request_p99_ms > 0
    assert (result.short_p99_ms is not None) == (sizes["short"] > 0)
    assert "text pool" in run.stdout and "tokens/s" in run.stdout


def test_a_pool_that_runs_out_starts_again_with_new_texts(tiny_service, tiny_repositories, tmp_path):
    pool_file, _ = _pool(tiny_repositories["distilbert"], tmp_path, 20)
    before = tiny_service.metric("sentiment_texts_total", source="model")
    summary, _ = _k6_flags(tiny_service, pool_file, tmp_path, "--vus", "1", "--iterations", "5")
    assert summary["metrics"]["pool_wrapped_texts"]["values"]["count"] == 30
    assert tiny_service.metric("sentiment_texts_total", source="model") - before == 50  # a round mark: still new


def test_the_mixed_workload_runs_in_the_scripts_own_scenario(tiny_service, tiny_repositories, tmp_path):
    pool_file, _ = _pool(tiny_repositories["distilbert"], tmp_path, 3000)
    result = run_k6(tmp_path, "mixed", {"BASE_URL": tiny_service.url, "SCENARIO": "smoke", "DURATION": "2s",
                                        "TEXTS_PER_REQUEST": 10, "TEXT_POOL_FILE": str(pool_file)}, html_report=False)
    assert round(result.failed_rate * result.requests) == result.shed and result.wrapped_texts == 0  # failed: shed only
    assert result.tokens_per_s > 0 and sum(result.requests_by_size.values()) == result.requests - result.shed > 3


def test_answers_neither_served_nor_shed_are_logged_with_their_status_and_body(tiny_service, tmp_path):
    """A failed rate alone does not say what failed: the run names the first unexpected answers."""
    result = run_k6(tmp_path, "wrong path", {"BASE_URL": f"{tiny_service.url}/nowhere", "SCENARIO": "smoke",
                                             "DURATION": "1s", "TEXTS_PER_REQUEST": 1, "UNEXPECTED_LOG_LIMIT": 2},
                    html_report=False)
    assert result.failed_rate == 1 and result.requests > 2
    assert 1 <= len(result.unexpected) <= 2 * 2  # at most the limit per VU (the smoke scenario runs 2 VUs at most)
    assert all(line.startswith("unexpected answer: status 404 ") for line in result.unexpected), result.unexpected
    assert result.unexpected[0].endswith('"code":"not_found"}'), result.unexpected  # the whole message, no k6 framing
