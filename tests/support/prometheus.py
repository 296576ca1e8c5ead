"""What only the tests ask of the monitoring files: every alerting rule, promtool, a time-scaled copy
of a rule group (so that an alert written for hours and days can fire on a real Prometheus within a
minute). A /metrics page is read with sentiment.measure.metrics_page."""

from __future__ import annotations

import copy
import re
from pathlib import Path

from sentiment.stack.prometheus import (
    ALERTS_FILE, load_prometheus_rule, prometheus_package_binary, rules_from_prometheus_rule,
)

# The prediction alerts on a real Prometheus within a minute: the last "hour" (and "half hour") is 10 s,
# "one day earlier" 30 s earlier, `for` 15m/10m is 5 s. Thresholds and traffic guards (answers/s) stay.
PREDICTION_RULES_IN_SECONDS = {"ranges": {"1h": "10s", "30m": "10s"}, "offsets": {"1d": "30s"},
                               "fors": {"15m": "5s", "10m": "5s"}}

_RANGE = re.compile(r"\[(\d+[smhdw])\]")
_OFFSET = re.compile(r"\boffset (\d+[smhdw])\b")


def alerting_rules(path: Path = ALERTS_FILE) -> list[dict]:
    """Every alerting rule of the PrometheusRule (dicts with alert, expr, for, labels, annotations)."""
    groups = rules_from_prometheus_rule(load_prometheus_rule(path))["groups"]
    return [rule for group in groups for rule in group.get("rules", []) if "alert" in rule]


def rule_group(name: str, path: Path = ALERTS_FILE) -> dict:
    groups = {group["name"]: group for group in load_prometheus_rule(path)["spec"]["groups"]}
    return groups[name]


def promtool_binary() -> str:
    return prometheus_package_binary("promtool")


def scaled_group(group: dict, ranges: dict[str, str], offsets: dict[str, str], fors: dict[str, str],
                 name: str, label: dict[str, str]) -> dict:
    """A copy of a rule group whose range selectors, offsets and `for` durations are replaced as mapped
    (e.g. [1h] -> [10s], offset 1d -> offset 30s, for 15m -> 5s), in the expressions and in the
    annotations' query templates alike; thresholds, guards and structure stay as they are. Every
    duration must be mapped (KeyError otherwise), so a rule edited later cannot slip through unscaled.
    Each rule also gets `label`, to tell its alerts from the real ones."""
    def scale(text: str) -> str:
        text = _RANGE.sub(lambda match: f"[{ranges[match.group(1)]}]", text)
        return _OFFSET.sub(lambda match: f"offset {offsets[match.group(1)]}", text)

    scaled = copy.deepcopy(group)
    scaled["name"] = name
    for rule in scaled["rules"]:
        rule["expr"] = scale(rule["expr"])
        rule["annotations"] = {key: scale(value) for key, value in rule.get("annotations", {}).items()}
        if "for" in rule:
            rule["for"] = fors[rule["for"]]
        rule["labels"] = {**rule.get("labels", {}), **label}
    return scaled
