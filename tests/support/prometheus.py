"""What only the tests ask of the monitoring files: every alerting rule, and promtool."""

from __future__ import annotations

from pathlib import Path

from sentiment.stack.prometheus import ALERTS_FILE, load_prometheus_rule, prometheus_package_binary, rules_from_prometheus_rule


def alerting_rules(path: Path = ALERTS_FILE) -> list[dict]:
    """Every alerting rule of the PrometheusRule (dicts with alert, expr, for, labels, annotations)."""
    groups = rules_from_prometheus_rule(load_prometheus_rule(path))["groups"]
    return [rule for group in groups for rule in group.get("rules", []) if "alert" in rule]


def promtool_binary() -> str:
    return prometheus_package_binary("promtool")
