"""`sentiment score` as a user runs it, against the real tiny stack (Triton, redis-server, transformer):
killed with SIGKILL and interrupted with SIGINT mid-file, then resumed; every row comes out once, in
input order, with the answer the server gives for its text."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("require_redis_server")]

ROWS = 20_000
TOO_LONG_ROW = 1234  # its text is over the server's characters-per-text limit: a per-row error


def _write_input(path: Path, max_text_chars: int) -> list[str]:
    texts = [f"review {i}: the film is {'good' if i % 3 else 'bad'}, {'really ' * (i % 4)}{i * 7919 % 10007}"
             for i in range(ROWS)]
    texts[TOO_LONG_ROW] = "x" * (max_text_chars + 1)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "review", "stars"])
        writer.writerows([i, text, i % 5] for i, text in enumerate(texts))
    return texts


def _score(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sentiment.cli", "score", *argv, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rows_done(sidecar: Path) -> int:
    try:
        return json.loads(sidecar.read_text())["rows_done"]
    except (OSError, ValueError):
        return 0


def _stop_mid_file(process: subprocess.Popen, sidecar: Path, beyond: int, signum: int) -> int:
    wait_until(lambda: _rows_done(sidecar) > beyond or process.poll() is not None, timeout=120,
               interval=0.02, message=f"a checkpoint past row {beyond}")
    assert process.poll() is None, "the run ended before it could be stopped mid-file: " + process.stderr.read()
    process.send_signal(signum)
    process.wait(timeout=30)
    return _rows_done(sidecar)


def test_killed_and_interrupted_runs_resume_to_every_row_once_in_order(tiny_service, tmp_path):
    limit = httpx.get(tiny_service.url + "/project/limits").json()["max_text_chars"]
    source, output = tmp_path / "reviews.csv", tmp_path / "scored.csv"
    texts = _write_input(source, limit)
    sidecar = output.with_name(output.name + ".progress.json")
    argv = [str(source), "-o", str(output), "--url", tiny_service.url, "--batch-size", "16", "--concurrency", "2"]

    killed = _score(argv)
    at_kill = _stop_mid_file(killed, sidecar, 0, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL and 0 < at_kill < ROWS

    interrupted = _score(argv)
    at_interrupt = _stop_mid_file(interrupted, sidecar, at_kill, signal.SIGINT)
    assert interrupted.returncode == 130, interrupted.stderr.read()
    assert at_kill < at_interrupt < ROWS
    assert "run the same command again" in interrupted.stderr.read()

    finished = _score(argv)
    _, stderr = finished.communicate(timeout=300)
    assert finished.returncode == 0, stderr
    assert f"done: {ROWS} rows" in stderr and f"resumed at row {at_interrupt}" in stderr
    assert not sidecar.exists()

    with output.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["id"]) for row in rows] == list(range(ROWS))   # every row once, in input order
    assert [row["review"] for row in rows] == texts
    assert "characters" in rows[TOO_LONG_ROW]["error"] and rows[TOO_LONG_ROW]["label"] == ""
    labels = {row["label"] for i, row in enumerate(rows) if i != TOO_LONG_ROW}
    assert all(row["error"] == "" for i, row in enumerate(rows) if i != TOO_LONG_ROW)
    sample = [0, at_kill - 1, at_kill, at_interrupt, ROWS - 1]
    answers = httpx.post(tiny_service.url + "/project/bulk-predict", json={"text": [texts[i] for i in sample]}).json()
    for index, ranked in zip(sample, answers["predictions"]):
        assert rows[index]["label"] == ranked[0]["label"] and float(rows[index]["score"]) == pytest.approx(
            ranked[0]["score"]
        )
    summary = next(line for line in stderr.splitlines() if line.startswith("labels: "))
    assert labels and all(f"{label} " in summary for label in labels), summary


def test_the_second_run_of_a_file_is_served_from_the_cache_and_says_so(tiny_service, tmp_path):
    source = tmp_path / "texts.txt"
    source.write_text("".join(f"cache run text {i}\n" for i in range(500)), encoding="utf-8")
    first = subprocess.run([sys.executable, "-m", "sentiment.cli", "score", str(source), "--url", tiny_service.url,
                            "--no-progress"], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([sys.executable, "-m", "sentiment.cli", "score", str(source), "--url", tiny_service.url,
                             "--no-progress", "--restart"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    line = next(line for line in second.stderr.splitlines() if line.startswith("cache hits"))
    hits = int(line.split(":", 1)[1].split()[0])
    assert hits >= 500, line
    scored = [json.loads(line) for line in (tmp_path / "texts.scored.jsonl").read_text().splitlines()]
    assert [row["text"] for row in scored] == [f"cache run text {i}" for i in range(500)]


def test_a_missing_column_is_a_clear_error_listing_the_columns(tiny_service, tmp_path):
    source = tmp_path / "odd.csv"
    source.write_text("id,stars\n1,5\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "sentiment.cli", "score", str(source), "--url", tiny_service.url],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--column" in result.stderr and "'id', 'stars'" in result.stderr


def test_a_predictor_outage_mid_file_is_waited_out_with_retries(tiny_repositories, logs_dir, tmp_path):
    """Triton stopped mid-run: the transformer answers 503 + Retry-After, the client retries (bounded)
    until Triton is back, and the file completes with every row scored once."""
    from tests.conftest import TransformerServer, TritonServer

    triton = TritonServer(tiny_repositories["bert"], logs_dir / "score-outage-triton").start()
    service = None
    try:
        service = TransformerServer(triton, logs_dir / "score-outage").start()
        source, output = tmp_path / "outage.txt", tmp_path / "outage.jsonl"
        source.write_text("".join(f"outage text {i}\n" for i in range(6000)), encoding="utf-8")
        sidecar = output.with_name(output.name + ".progress.json")
        run = _score([str(source), "-o", str(output), "--url", service.url, "--batch-size", "8", "--concurrency", "1",
                      "--retries", "60", "--max-retry-wait", "1"])
        wait_until(lambda: _rows_done(sidecar) > 0 or run.poll() is not None, timeout=120, interval=0.02,
                   message="a first checkpoint")
        assert run.poll() is None, run.stderr.read()
        triton.stop()
        wait_until(lambda: httpx.get(service.url + "/project/health").status_code == 503, timeout=30,
                   message="the transformer to see the predictor gone")
        time.sleep(1.0)
        triton.start()
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
        retried = int(stderr.split(" requests retried")[0].rsplit(" ", 1)[1])
        assert retried > 0, stderr
        rows = [json.loads(line) for line in output.read_text().splitlines()]
        assert [row["text"] for row in rows] == [f"outage text {i}" for i in range(6000)]
        assert all(row["label"] and row["error"] is None for row in rows)
    finally:
        if service is not None:
            service.stop()
        triton.stop()
