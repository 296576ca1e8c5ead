"""Monitoring end to end: the local stack and a real Prometheus (sentiment.stack.prometheus) on free
ports, a short mixed load, then every Grafana panel query and every alert expression through
Prometheus' HTTP API."""

from __future__ import annotations

import json
import math
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from sentiment.paths import MONITORING_DIR, default_model_repository
from sentiment.stack.processes import free_port, port_is_free
from sentiment.stack.prometheus import (
    TRANSFORMER_JOB, TRITON_JOB, PrometheusNotInstalled, PrometheusTargets, prometheus_binary, start_prometheus,
)
from sentiment.stack.up import Stack, StackConfig
from tests.support.prometheus import alerting_rules

pytestmark = pytest.mark.slow

DASHBOARD = MONITORING_DIR / "sentiment-dashboard.json"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
LOAD_SECONDS = 10
WARM = ["The film is a joy from start to finish.", "The plot is a tedious, muddled mess.",
        "The acting is warm, funny and beautifully made.", "The ending falls apart in the second half.",
        "The score is a small triumph.", "The remake is dull and predictable."]


# ---- Prometheus' HTTP API -------------------------------------------------------------------------
class PrometheusAPI:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params) -> dict:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:  # 400/422: the body says why (bad_data, execution)
            return json.load(error)

    def query(self, expr: str) -> dict:
        return self.get("/api/v1/query", query=expr, time=f"{time.time():.3f}")

    def value(self, expr: str) -> float | None:
        result = self.query(expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else None


def poll(predicate, timeout: float, message: str, interval: float = 0.25):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as error:  # noqa: BLE001 - not there yet
            last = error
        time.sleep(interval)
    pytest.fail(f"{message} within {timeout} s (last error: {last!r})")


def scraped_total(url: str, name: str) -> float:
    """Sum of a metric's samples straight from a /metrics endpoint."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in "{ ")


# ---- load -----------------------------------------------------------------------------------------
def drive_load(base: str, seconds: float, workers: int = 2) -> Counter:
    """New texts (misses), repeated texts (cache hits), V1/V2 calls and bad requests (4xx)."""
    statuses: Counter = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    json_headers = {"Content-Type": "application/json"}

    def worker(number: int) -> None:
        rng = random.Random(number)
        with httpx.Client(base_url=base, timeout=30) as client:
            i = 0
            while time.monotonic() < deadline:
                kind = i % 10
                if kind < 3:
                    texts = [f"{rng.choice(WARM)} ({uuid.uuid4().hex[:8]})" for _ in range(4)]
                    response = client.post("/project/bulk-predict", json={"text": texts})
                elif kind < 7:
                    response = client.post("/project/bulk-predict", json={"text": rng.sample(WARM, 4)})
                elif kind == 7:
                    response = client.post("/v1/models/sentiment:predict", json={"instances": [rng.choice(WARM)]},
                                           headers=json_headers)
                elif kind == 8:
                    response = client.post("/v2/models/sentiment/infer", json={"inputs": [
                        {"name": "text", "datatype": "BYTES", "shape": [1], "data": [f"new text {uuid.uuid4()}"]}]})
                else:
                    bad = (i // 10) % 3
                    if bad == 0:
                        response = client.post("/project/bulk-predict", json={"text": "not a list"})  # 422
                    elif bad == 1:
                        response = client.post("/project/bulk-predict", content=b"i love this",
                                               headers={"Content-Type": "text/plain"})             # 415
                    else:
                        response = client.post("/project/bulk-predict", json={"text": ["x"] * 257})  # 413
                with lock:
                    statuses[response.status_code] += 1
                i += 1

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(worker, n) for n in range(workers)]:
            future.result()
    return statuses


# ---- the test -------------------------------------------------------------------------------------
def panel_queries() -> list[tuple[str, str, str]]:
    board = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unsubstituted Grafana variable in {panel['title']!r}: {expr}"
            queries.append((panel["title"], target.get("legendFormat", target["refId"]), expr))
    return queries


def wait_for_targets_and_rules(api: PrometheusAPI) -> None:
    """Both targets scraped and healthy; every alert of the PrometheusRule loaded and evaluated without error."""
    def targets_up():
        active = api.get("/api/v1/targets")["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in active} == {TRANSFORMER_JOB: "up", TRITON_JOB: "up"}
    poll(targets_up, 20, "Prometheus did not report both targets up")

    expected_alerts = {rule["alert"] for rule in alerting_rules()}

    def rules_evaluated():
        groups = api.get("/api/v1/rules", type="alert")["data"]["groups"]
        loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
        assert set(loaded) == expected_alerts, f"loaded alerts {sorted(loaded)}"
        return all(rule["health"] == "ok" for rule in loaded.values())
    poll(rules_evaluated, 20, "the alerting rules were not all loaded and evaluated without error")


def wait_for_final_scrape(api: PrometheusAPI, base: str, triton_metrics_port: int) -> None:
    """Until Prometheus has scraped the final counts of both processes."""
    texts = scraped_total(f"{base}/metrics", "sentiment_texts_total")
    triton_requests = scraped_total(f"http://127.0.0.1:{triton_metrics_port}/metrics", "nv_inference_request_success")
    poll(lambda: api.value("sum(sentiment_texts_total)") == texts
         and api.value("sum(nv_inference_request_success)") == triton_requests,
         20, "Prometheus did not scrape the final counters")


def failed_panel_queries(api: PrometheusAPI) -> list[str]:
    """Every dashboard query must be valid, with data, and at least one finite number."""
    failures = []
    for title, legend, expr in panel_queries():
        answer = api.query(expr)
        if answer.get("status") != "success":
            failures.append(f"{title} [{legend}]: {answer.get('errorType')}: {answer.get('error')}\n    {expr}")
            continue
        values = [float(sample["value"][1]) for sample in answer["data"]["result"]]
        if not values or not any(math.isfinite(v) for v in values):
            failures.append(f"{title} [{legend}]: no data ({values})\n    {expr}")
    return failures


def assert_the_numbers_mean_what_the_panels_say(api: PrometheusAPI) -> None:
    by_status = api.query('sum by (status) (rate(sentiment_requests_total{route="/project/bulk-predict"}[1m]))')
    assert {"200", "413", "415", "422"} <= {s["metric"]["status"] for s in by_status["data"]["result"]}
    hit_ratio = api.value('sum(rate(sentiment_texts_total{source="cache"}[1m])) / sum(rate(sentiment_texts_total[1m]))')
    assert 0 < hit_ratio < 1, hit_ratio
    replicas = api.query('sum by (job) (up{job=~".*sentiment.*"})')["data"]["result"]
    assert {s["metric"]["job"]: float(s["value"][1]) for s in replicas} == {TRANSFORMER_JOB: 1, TRITON_JOB: 1}
    assert api.value("sum(rate(nv_inference_count[1m])) / sum(rate(nv_inference_exec_count[1m]))") >= 1
    firing = [a for a in api.get("/api/v1/alerts")["data"]["alerts"] if a["state"] == "firing"]
    assert not firing, f"alerts fire on a healthy stack: {firing}"


def test_dashboard_queries_and_alert_rules_run_against_a_real_prometheus(default_build, tmp_path):
    try:
        prometheus_binary()
    except PrometheusNotInstalled as error:
        pytest.fail(str(error))
    config = StackConfig.on_free_ports(default_model_repository(), tmp_path / "logs")
    prometheus_port = free_port()
    stack = Stack(config)
    prometheus = None
    try:
        stack.start()
        prometheus = start_prometheus(PrometheusTargets.for_stack(config), prometheus_port, tmp_path / "prometheus",
                                      tmp_path / "logs" / "prometheus.log", scrape_interval="1s")
        api = PrometheusAPI(prometheus_port)
        wait_for_targets_and_rules(api)

        base = f"http://127.0.0.1:{config.port}"
        statuses = drive_load(base, LOAD_SECONDS)
        assert statuses[200] > 20, statuses
        assert {413, 415, 422} <= set(statuses), statuses
        assert not any(code >= 500 for code in statuses), statuses
        wait_for_final_scrape(api, base, config.triton.metrics)

        failures = failed_panel_queries(api)
        assert not failures, "dashboard queries failed:\n" + "\n".join(failures)
        for rule in alerting_rules():  # every alert expression parses and runs
            answer = api.query(rule["expr"])
            assert answer.get("status") == "success", f"{rule['alert']}: {answer.get('error')}\n{rule['expr']}"
        assert_the_numbers_mean_what_the_panels_say(api)
    finally:
        if prometheus is not None:
            prometheus.stop()
        stack.stop()

    processes = stack.processes + ([prometheus] if prometheus else [])
    assert processes and not [p.name for p in processes if p.alive()], "a process is still running"
    ports = list(config.ports().values()) + [prometheus_port]
    poll(lambda: all(port_is_free(port) for port in ports), 10, f"ports still in use: {ports}")
    assert (tmp_path / "prometheus" / "prometheus.yml").is_file()
    assert Path(tmp_path / "prometheus" / "sentiment-slo.rules.yml").is_file()
