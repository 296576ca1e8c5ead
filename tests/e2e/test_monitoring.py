"""Monitoring end to end: the local stack and a real Prometheus (sentiment.stack.prometheus) on free
ports, scraping every second, shared by the tests of this module (in file order):

1. a short mixed load, then every Grafana panel query and every alert expression through Prometheus'
   HTTP API;
2. the prediction metrics move by exactly the answers to known texts (each label; model and cache);
   the texts are chosen at fixture time from the served model's own answers (tests.support.model_answers),
   so a retrained model does not break them;
3. 1,000 distinct texts add no series (/metrics of the transformer and of Triton, and Prometheus);
4. the label mix is forced to shift (texts the model calls POSITIVE, then only NEGATIVE ones, then texts
   it is unsure about) and the prediction alerts fire in Prometheus: a copy of their group with
   the hours and the day scaled down to seconds (the real rules compare with the day before, so they
   cannot fire within a test), thresholds and guards unchanged.
"""

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
from bisect import bisect_left
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from sentiment.paths import MONITORING_DIR, default_model_repository
from sentiment.stack.processes import free_port, port_is_free
from sentiment.stack.prometheus import (
    TRANSFORMER_JOB, TRITON_JOB, PrometheusNotInstalled, PrometheusTargets, prometheus_binary, start_prometheus,
)
from sentiment.stack.up import Stack, StackConfig
from tests.support.model_answers import ModelAnswers
from sentiment.measure.metrics_page import scrape, series, total
from tests.support.prometheus import PREDICTION_RULES_IN_SECONDS, alerting_rules, rule_group, scaled_group

# The stack drops Redis when its binary is missing: the cache source of the metrics needs it.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("require_redis_server")]

DASHBOARD = MONITORING_DIR / "sentiment-dashboard.json"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
LOAD_SECONDS = 10
WARM = ["The film is a joy from start to finish.", "The plot is a tedious, muddled mess.",
        "The acting is warm, funny and beautifully made.", "The ending falls apart in the second half.",
        "The score is a small triumph.", "The remake is dull and predictable."]
LONG = " ".join(WARM * 6)  # about 300 tokens: 3 windows of the default model's 128


@pytest.fixture(scope="module")
def monitored(default_build, tmp_path_factory):
    """The stack and Prometheus (real rules, scraping and evaluating every second) for this module."""
    try:
        prometheus_binary()
    except PrometheusNotInstalled as error:
        pytest.fail(str(error))
    tmp_path = tmp_path_factory.mktemp("monitoring")
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
        versions = {sample.labels["version"] for sample in scrape(f"{base}/metrics")
                    if sample.name == "sentiment_predictions_total"}
        assert len(versions) == 1, f"the stack serves one model version, /metrics shows {versions}"
        yield Monitored(config, api, base, tmp_path / "prometheus", versions.pop())
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


class Monitored:
    def __init__(self, config: StackConfig, api: "PrometheusAPI", base: str, prometheus_dir: Path, version: str):
        self.config, self.api, self.base, self.prometheus_dir, self.version = config, api, base, prometheus_dir, version

    @property
    def triton_metrics(self) -> str:
        return f"http://127.0.0.1:{self.config.triton.metrics}/metrics"


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

    def post(self, path: str) -> int:
        request = urllib.request.Request(f"{self.base}{path}", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status

    def alerts(self, **labels: str) -> list[dict]:
        """Pending and firing alerts whose labels include `labels`."""
        return [alert for alert in self.get("/api/v1/alerts")["data"]["alerts"]
                if all(alert["labels"].get(k) == v for k, v in labels.items())]

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
    return total(scrape(url), name)


# ---- load -----------------------------------------------------------------------------------------
def answers_of(response: httpx.Response) -> list[tuple[str, float]]:
    """(top label, top score) of each text of a 200 answer: bulk-predict, V1 or V2 JSON."""
    body = response.json()
    if "predictions" in body:
        return [top(ranked) for ranked in body["predictions"]]
    outputs = {output["name"]: output["data"] for output in body["outputs"]}
    return list(zip(outputs["label"], outputs["score"]))


def drive_load(base: str, seconds: float, workers: int = 2) -> tuple[Counter, list[tuple[str, float]]]:
    """New texts (misses), repeated texts (cache hits), V1/V2 calls and bad requests (4xx); the status
    counts and the answers the clients got."""
    statuses: Counter = Counter()
    answers: list[tuple[str, float]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    json_headers = {"Content-Type": "application/json"}

    def worker(number: int) -> None:
        rng = random.Random(number)
        with httpx.Client(base_url=base, timeout=30) as client:
            i = 0
            while time.monotonic() < deadline:
                kind = i % 10
                if kind < 2:
                    texts = [f"{rng.choice(WARM)} ({uuid.uuid4().hex[:8]})" for _ in range(4)]
                    response = client.post("/project/bulk-predict", json={"text": texts})
                elif kind == 2:  # a long text, judged whole (chunk) or cut to its first window (head)
                    response = client.post("/project/bulk-predict", json={
                        "text": [f"{LONG} ({uuid.uuid4().hex[:8]})"], "truncation": ("chunk", "head")[(i // 10) % 2]})
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
                    if response.status_code == 200:
                        answers.extend(answers_of(response))
                i += 1

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(worker, n) for n in range(workers)]:
            future.result()
    return statuses, answers


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
    """Until Prometheus has scraped the final counts of both processes (read again each time: Triton
    refreshes its metrics every 2 s, so its page may still move after the load ended)."""
    poll(lambda: api.value("sum(sentiment_texts_total)") == scraped_total(f"{base}/metrics", "sentiment_texts_total")
         and api.value("sum(nv_inference_request_success)") == scraped_total(
             f"http://127.0.0.1:{triton_metrics_port}/metrics", "nv_inference_request_success"),
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


def assert_the_numbers_mean_what_the_panels_say(api: PrometheusAPI, answers: list[tuple[str, float]]) -> None:
    """`answers`: what the clients were answered during the load, the only answers of the window."""
    by_status = api.query('sum by (status) (rate(sentiment_requests_total{route="/project/bulk-predict"}[1m]))')
    assert {"200", "413", "415", "422"} <= {s["metric"]["status"] for s in by_status["data"]["result"]}
    hit_ratio = api.value('sum(rate(sentiment_texts_total{source="cache"}[1m])) / sum(rate(sentiment_texts_total[1m]))')
    assert 0 < hit_ratio < 1, hit_ratio
    replicas = api.query('sum by (job) (up{job=~".*sentiment.*"})')["data"]["result"]
    assert {s["metric"]["job"]: float(s["value"][1]) for s in replicas} == {TRANSFORMER_JOB: 1, TRITON_JOB: 1}
    assert api.value("sum(rate(nv_inference_count[1m])) / sum(rate(nv_inference_exec_count[1m]))") >= 1
    long_texts = api.query("sum by (mode) (increase(sentiment_long_texts_total[1m]))")["data"]["result"]
    assert {s["metric"]["mode"] for s in long_texts if float(s["value"][1]) > 0} == {"chunk", "head"}, long_texts
    assert api.value("sum(rate(sentiment_windows_total[1m])) / sum(rate(sentiment_text_tokens_count[1m]))") > 1
    mix = api.query("sum by (version, label) (rate(sentiment_predictions_total[1m])) / on (version) group_left "
                    "sum by (version) (rate(sentiment_predictions_total[1m]))")["data"]["result"]
    shares = {s["metric"]["label"]: float(s["value"][1]) for s in mix}
    assert set(shares) == {"NEGATIVE", "POSITIVE"} and sum(shares.values()) == pytest.approx(1), shares
    assert 0 < shares["POSITIVE"] < 1, shares  # WARM holds both kinds
    answered_positive = sum(label == "POSITIVE" for label, _ in answers) / len(answers)
    assert shares["POSITIVE"] == pytest.approx(answered_positive, abs=0.03), (shares, answered_positive)
    median = api.value("histogram_quantile(0.5, sum by (le) (rate(sentiment_prediction_top_score_bucket[1m])))")
    assert 0.5 <= median <= 1, median
    # In the histogram bucket of the median of the answers the clients got (a bucket next to it where that
    # median sits on a bound).
    from transformer.metrics import SCORE_BUCKETS

    answered = float(np.median([score for _, score in answers]))
    buckets = {bisect_left(SCORE_BUCKETS, score) for score in (answered - 0.002, answered, answered + 0.002)}
    assert bisect_left(SCORE_BUCKETS, median) in buckets, (median, answered)
    firing = [a for a in api.get("/api/v1/alerts")["data"]["alerts"] if a["state"] == "firing"]
    assert not firing, f"alerts fire on a healthy stack: {firing}"


def rows(monitored: Monitored) -> tuple[float, float]:
    """Rows Triton ran (its model warm-up included) and windows the transformer sent it, from their pages."""
    return (scraped_total(monitored.triton_metrics, "nv_inference_count"),
            scraped_total(f"{monitored.base}/metrics", "sentiment_predictor_batch_size_sum"))


def test_dashboard_queries_and_alert_rules_run_against_a_real_prometheus(monitored):
    api, base = monitored.api, monitored.base
    rows_before = rows(monitored)
    statuses, answers = drive_load(base, LOAD_SECONDS)
    assert statuses[200] > 20, statuses
    assert {413, 415, 422} <= set(statuses), statuses
    assert not any(code >= 500 for code in statuses), statuses
    wait_for_final_scrape(api, base, monitored.config.triton.metrics)

    failures = failed_panel_queries(api)
    assert not failures, "dashboard queries failed:\n" + "\n".join(failures)
    for rule in alerting_rules():  # every alert expression parses and runs
        answer = api.query(rule["expr"])
        assert answer.get("status") == "success", f"{rule['alert']}: {answer.get('error')}\n{rule['expr']}"
    assert_the_numbers_mean_what_the_panels_say(api, answers)
    # Triton ran every window the transformer sent during the load, and nothing else (its page may lag 2 s).
    moved: list[tuple[float, ...]] = []

    def rows_match() -> bool:
        moved.append(tuple(after - before for after, before in zip(rows(monitored), rows_before)))
        return moved[-1][0] == moved[-1][1] > 0
    poll(rows_match, 10, "Triton's rows equal the transformer's windows")
    assert moved[-1][0] == moved[-1][1] > 0, moved[-3:]


# ---- the prediction metrics -----------------------------------------------------------------------
# Candidates for texts the model labels clearly; `chosen` keeps those the served model answers over 0.97.
POSITIVE = ["What a wonderful, warm and moving film.", "An absolute delight: brilliant acting and a beautiful score.",
            "I loved every minute of it, a triumph.", "Funny, charming and beautifully made.",
            "A masterpiece: moving, funny and gorgeous to look at.", "The best film I have seen this year, a joy.",
            "Brilliant, heartfelt and wonderfully acted."]
NEGATIVE = ["A dull, tedious and predictable mess.", "I hated every minute of this awful film.",
            "Boring, stupid and far too long.", "The worst film of the year: a painful waste of time.",
            "Awful acting and a plot that makes no sense.", "A dreary, lifeless and badly written bore.",
            "Terrible from start to finish, avoid it."]


def prediction_samples(base: str, version: str) -> dict[tuple[str, ...], float]:
    """The version's sentiment_predictions_total by (label, source) and its top-score histogram by
    ("le", bound), ("count",), ("sum",), straight from /metrics."""
    samples: dict[tuple[str, ...], float] = {}
    for sample in scrape(f"{base}/metrics"):
        if sample.labels.get("version") != version:
            continue
        if sample.name == "sentiment_predictions_total":
            samples[(sample.labels["label"], sample.labels["source"])] = sample.value
        elif sample.name == "sentiment_prediction_top_score_bucket":
            samples[("le", sample.labels["le"])] = sample.value
        elif sample.name == "sentiment_prediction_top_score_count":
            samples[("count",)] = sample.value
        elif sample.name == "sentiment_prediction_top_score_sum":
            samples[("sum",)] = sample.value
    return samples


def top(ranked: list[dict]) -> tuple[str, float]:
    best = max(ranked, key=lambda item: item["score"])
    return best["label"], best["score"]


def test_the_prediction_metrics_move_by_exactly_the_answers_to_known_texts(monitored, chosen):
    from transformer.metrics import SCORE_BUCKETS

    (p0, p1, p2, p3), (n0, n1, n2, _) = chosen.positive, chosen.negative
    before = prediction_samples(monitored.base, monitored.version)
    assert len([key for key in before if len(key) == 2 and key[0] != "le"]) == 6  # 2 labels x 3 sources
    answers: list[tuple[str, float]] = []  # one per distinct text of each request, as the metrics count
    with httpx.Client(base_url=monitored.base, timeout=30) as client:
        # 1: five new texts (one repeated in the request: counted once): model POSITIVE 3, NEGATIVE 2
        first = client.post("/project/bulk-predict", json={"text": [p0, p1, p2, n0, n1, p0]}).json()["predictions"]
        assert [top(r)[0] for r in first] == ["POSITIVE"] * 3 + ["NEGATIVE"] * 2 + ["POSITIVE"]
        answers += [top(r) for r in first[:5]]
        # 2: two of them again (cache: POSITIVE 1, NEGATIVE 1) and a new one (model: NEGATIVE 1)
        second = client.post("/project/bulk-predict", json={"text": [p0, n0, n2]}).json()["predictions"]
        assert [top(r)[0] for r in second] == ["POSITIVE", "NEGATIVE", "NEGATIVE"]
        answers += [top(r) for r in second]
        # 3: KServe V1 counts the same way: a new text (model: POSITIVE 1) and a cached one (cache: NEGATIVE 1)
        third = client.post("/v1/models/sentiment:predict", json={"instances": [p3, n1]}).json()["predictions"]
        assert [top(r)[0] for r in third] == ["POSITIVE", "NEGATIVE"]
        answers += [top(r) for r in third]
    after = prediction_samples(monitored.base, monitored.version)

    moved = {key: after[key] - before.get(key, 0) for key in after}
    expected = {("POSITIVE", "model"): 4, ("NEGATIVE", "model"): 3, ("POSITIVE", "cache"): 1,
                ("NEGATIVE", "cache"): 2, ("POSITIVE", "shared"): 0, ("NEGATIVE", "shared"): 0}
    assert {key: moved[key] for key in expected} == expected
    assert moved[("count",)] == len(answers) == 10
    assert moved[("sum",)] == pytest.approx(sum(score for _, score in answers), abs=1e-3)
    assert all(score > 0.95 for _, score in answers), answers  # clear texts: all in the top buckets
    for index, bound in enumerate(SCORE_BUCKETS):  # each answer in the bucket of its own top score
        in_bucket = sum(bisect_left(SCORE_BUCKETS, score) <= index for _, score in answers)
        assert moved[("le", str(bound))] == in_bucket, (bound, moved)
    assert moved[("le", "+Inf")] == len(answers)

    # Prometheus scrapes the same counts.
    def scraped():
        result = monitored.api.query(f'sentiment_predictions_total{{version="{monitored.version}"}}')["data"]["result"]
        return {(s["metric"]["label"], s["metric"]["source"]): float(s["value"][1]) for s in result}
    poll(lambda: scraped() == {key: after[key] for key in expected}, 10,
         "Prometheus does not hold the counts /metrics shows")


# ---- cardinality ----------------------------------------------------------------------------------
SUBJECTS = ["film", "plot", "cast", "score", "ending", "script", "remake", "sequel"]
VERDICTS = ["wonderful", "dull", "moving", "a mess", "fine", "a joy", "tedious", "a triumph"]


def test_a_thousand_distinct_texts_add_no_series(monitored):
    api, base = monitored.api, monitored.base
    urls = {"transformer": f"{base}/metrics", "triton": monitored.triton_metrics}
    run = uuid.uuid4().hex[:8]

    def classify(texts: list[str]) -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            for start in range(0, len(texts), 100):
                response = client.post("/project/bulk-predict", json={"text": texts[start:start + 100]})
                assert response.status_code == 200, response.text

    def prometheus_series() -> float:  # after Prometheus has scraped what /metrics shows now
        texts = scraped_total(urls["transformer"], "sentiment_texts_total")
        poll(lambda: api.value("sum(sentiment_texts_total)") == texts, 10, "no scrape of the latest counts")
        return api.value('count({job="sentiment-transformer"})')

    # The same kind of request once first: every series it touches (route, status, buckets) exists.
    classify([f"warm-up {run} {i}: the {SUBJECTS[i % 8]} was {VERDICTS[i % 8]}" for i in range(100)])
    before = {name: scrape(url) for name, url in urls.items()}
    series_before = prometheus_series()
    model_before = scraped_total(urls["transformer"], "sentiment_texts_total")

    texts = [f"Review {run}-{i}: the {SUBJECTS[i % 8]} was {VERDICTS[(i // 8) % 8]}." for i in range(1000)]
    assert len(set(texts)) == 1000
    classify(texts)

    after = {name: scrape(url) for name, url in urls.items()}
    for name in urls:  # every sample counts: nothing excluded
        added = series(after[name]) - series(before[name])
        assert len(after[name]) == len(before[name]) and not added, f"{name}: {len(before[name])} -> " \
            f"{len(after[name])} sample lines; new series: {sorted(added)[:10]}"
    assert scraped_total(urls["transformer"], "sentiment_texts_total") - model_before == 1000
    assert prometheus_series() == series_before
    # What the prediction metrics expose per model version: labels x sources, and the histogram's buckets,
    # sum and count, whatever the traffic.
    from transformer.metrics import SCORE_BUCKETS, SOURCES

    per_version = [sample for sample in after["transformer"] if sample.name == "sentiment_predictions_total"
                   or sample.name.startswith("sentiment_prediction_top_score_")]
    assert len(per_version) == 2 * len(SOURCES) + len(SCORE_BUCKETS) + 1 + 2, per_version


# ---- the prediction alerts on the real stack ------------------------------------------------------
# They run scaled from hours to seconds (tests.support.prometheus.PREDICTION_RULES_IN_SECONDS).
# Candidate phrases; `chosen` keeps those whose texts the served model labels right every time.
POSITIVE_PHRASES = ["a joy from start to finish", "warm, funny and beautifully made", "a small triumph",
                    "brilliant and moving", "a delight", "wonderful"]
NEGATIVE_PHRASES = ["a tedious, muddled mess", "dull and predictable", "a painful waste of time",
                    "boring and far too long", "awful", "a stupid mess"]
# Candidate lukewarm or off-topic texts; `chosen` keeps those the served model is unsure about (the
# default model, recipe 4: top score 0.50 to 0.98, median 0.77). Repeated (cache hits count as answers
# too): the model's confidence on new texts with numbers in them swings with the numbers.
UNSURE = ["It is what it is.", "It has a beginning, a middle and an end.", "Passable.", "It was okay, I guess.",
          "It exists.", "table river seven", "blue paper city", "Okay.", "I have seen it.", "Hard to say.",
          "Not sure what to think of it.", "The cast includes several actors.", "The sequel came out in spring.",
          "It is a film."]
UNSURE_BELOW = 0.9   # a top score under this is "unsure"
PHRASE_SAMPLES = 40  # texts of each phrase the model must label right to keep it


class ChosenTexts:
    """Texts picked from the served model's own answers: clear ones of each label, phrases whose texts it
    labels right, texts it is unsure about, and the median top score of the clear NEGATIVE traffic."""

    def __init__(self, answers: ModelAnswers):
        self.positive = answers.clear(POSITIVE, "POSITIVE", 0.97, 4)
        self.negative = answers.clear(NEGATIVE, "NEGATIVE", 0.97, 4)
        self.positive_phrases = self._phrases(answers, POSITIVE_PHRASES, "POSITIVE")
        self.negative_phrases = self._phrases(answers, NEGATIVE_PHRASES, "NEGATIVE")
        self.unsure = [text for text, (_, score) in zip(UNSURE, answers(UNSURE)) if score < UNSURE_BELOW]
        assert len(self.unsure) >= 6, f"the model is unsure about only {self.unsure}"
        self.confident_median = float(np.median([score for _, score in answers(
            [self.negative_text(i) for i in range(200)])]))

    @staticmethod
    def _phrases(answers: ModelAnswers, phrases: list[str], label: str) -> list[str]:
        kept = [phrase for phrase in phrases if all(top == label for top, _ in answers(
            [_review(random.Random(i), i, phrase) for i in range(PHRASE_SAMPLES)]))]
        assert len(kept) >= 3, f"the model labels the texts of only {kept} {label} every time"
        return kept

    def positive_text(self, i: int) -> str:
        rng = random.Random(i)
        return _review(rng, i, rng.choice(self.positive_phrases))

    def negative_text(self, i: int) -> str:
        rng = random.Random(i)
        return _review(rng, i, rng.choice(self.negative_phrases))

    def unsure_text(self, i: int) -> str:
        return self.unsure[i % len(self.unsure)]


def _review(rng: random.Random, i: int, phrase: str) -> str:
    return f"The {rng.choice(SUBJECTS)} of review {i} is {phrase}."


@pytest.fixture(scope="module")
def chosen(default_build) -> ChosenTexts:
    return ChosenTexts(ModelAnswers(default_build.repository))


class Traffic:
    """One client sending 4 new texts of the current kind every ~0.1 s (about 30 answers/s)."""

    def __init__(self, base: str, chosen: ChosenTexts):
        self.base, self.kind, self.stop = base, chosen.positive_text, threading.Event()
        self.labels: Counter = Counter()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self.stop.is_set():
                kind = self.kind
                response = client.post("/project/bulk-predict", json={"text": [kind(i + k) for k in range(4)]})
                i += 4
                if response.status_code != 200:
                    self.errors.append(response.text)
                else:
                    self.labels.update((kind.__name__, top(r)[0]) for r in response.json()["predictions"])
                self.stop.wait(0.1)

    def __enter__(self) -> "Traffic":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def rule_states(api: PrometheusAPI, group: str) -> dict[str, dict]:
    groups = api.get("/api/v1/rules", type="alert")["data"]["groups"]
    return {rule["name"]: rule for g in groups if g["name"] == group for rule in g["rules"]}


def firing(api: PrometheusAPI, alertname: str) -> list[dict]:
    return [a for a in api.alerts(alertname=alertname, scaled="true") if a["state"] == "firing"]


def test_the_prediction_alerts_fire_when_the_label_mix_shifts(monitored, chosen):
    api = monitored.api
    group = "sentiment-predictions-scaled"
    scaled = scaled_group(rule_group("sentiment-predictions"), **PREDICTION_RULES_IN_SECONDS, name=group,
                          label={"scaled": "true"})
    rules_file = monitored.prometheus_dir / "sentiment-slo.rules.yml"
    original = rules_file.read_text()
    rules = yaml.safe_load(original)
    rules["groups"].append(scaled)
    rules_file.write_text(yaml.safe_dump(rules, sort_keys=False))
    shift, confidence = "SentimentLabelMixShiftedFromYesterday", "SentimentConfidenceDropped"
    try:
        assert api.post("/-/reload") == 200
        poll(
            lambda: (
                len(rule_states(api, group)) == 3 and all(r["health"] == "ok" for r in rule_states(api, group).values())
            ),
            20,
            "the scaled rules were not loaded",
        )
        with Traffic(monitored.base, chosen) as traffic:
            # POSITIVE texts for 45 s: then both windows of the day-over-day comparison (the last 10 s, and
            # 10 s 30 s earlier) hold only them: traffic on both sides, the same mix, no alert (a near miss).
            time.sleep(45)
            guards = next(r for r in scaled["rules"] if r["alert"] == shift)["expr"].split("and on ()")[1:]
            answers_per_second = [api.value(guard.rsplit(">", 1)[0]) for guard in guards]  # now, "yesterday"
            assert all(rate > 0.1 for rate in answers_per_second), answers_per_second
            assert rule_states(api, group)[shift]["state"] == "inactive", rule_states(api, group)[shift]

            # Only NEGATIVE texts: within seconds the last 10 s hold NEGATIVE answers, 30 s earlier POSITIVE
            # ones; the alert is pending, then fires 5 s later.
            traffic.kind, started = chosen.negative_text, time.monotonic()
            alerts = poll(lambda: firing(api, shift), 25, f"{shift} (scaled) did not fire")
            fired_after = time.monotonic() - started
            assert {a["labels"]["label"] for a in alerts} == {"NEGATIVE", "POSITIVE"}, alerts
            assert all(float(a["value"]) > 0.2 for a in alerts), alerts
            description = alerts[0]["annotations"]["description"]
            assert "%" in description and "error" not in description.lower(), description
            assert not firing(api, confidence), "the NEGATIVE texts are answered as confidently as the POSITIVE ones"

            # Lukewarm and off-topic texts: the model is unsure (median top score about 0.65 against the clear
            # texts' median 30 s earlier, about 0.99): the confidence alert fires.
            traffic.kind, started = chosen.unsure_text, time.monotonic()
            dropped = poll(lambda: firing(api, confidence), 25, f"{confidence} (scaled) did not fire")
            dropped_after = time.monotonic() - started
            assert float(dropped[0]["value"]) < chosen.confident_median - 0.05, (dropped, chosen.confident_median)
            assert "error" not in dropped[0]["annotations"]["description"].lower(), dropped[0]["annotations"]
        assert not traffic.errors, traffic.errors[:3]
        assert traffic.labels[("positive_text", "POSITIVE")] > 0.95 * sum(
            n for (kind, _), n in traffic.labels.items() if kind == "positive_text"), traffic.labels
        assert traffic.labels[("negative_text", "POSITIVE")] == 0, traffic.labels
        real = [a for a in api.get("/api/v1/alerts")["data"]["alerts"] if "scaled" not in a["labels"]]
        assert not [a for a in real if a["state"] == "firing"], real  # the real rules need a day of history
        print(f"label-mix shift alert fired {fired_after:.1f} s after the switch to NEGATIVE texts; "
              f"confidence alert {dropped_after:.1f} s after the switch to texts the model is unsure about")
    finally:
        rules_file.write_text(original)
        api.post("/-/reload")
