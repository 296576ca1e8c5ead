"""A local Prometheus for the stack: scrape config, alert rules, and the server as a ManagedProcess.

The alert rules have one source, the `PrometheusRule` in `monitoring/prometheusrule.yaml` (what a
cluster with the Prometheus Operator loads); this module extracts its `spec` into a plain
Prometheus rules file for the local server. Uses Debian's `prometheus` binary
(`apt-get install -y prometheus`). `sentiment up --with-prometheus` is its command line:

    targets = PrometheusTargets(transformer_port=8000, triton_metrics_port=8012)
    prometheus = start_prometheus(targets, 9090, Path(".logs/prometheus"), Path(".logs/prometheus.log"))
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sentiment.durations import duration_seconds
from sentiment.paths import MONITORING_DIR, REPO_ROOT
from sentiment.stack.processes import ManagedProcess, ProcessFailed, http_ok, port_is_free

ALERTS_FILE = MONITORING_DIR / "prometheusrule.yaml"
RULES_FILE_NAME = "sentiment-slo.rules.yml"
CONFIG_FILE_NAME = "prometheus.yml"
TRANSFORMER_JOB = "sentiment-transformer"
TRITON_JOB = "sentiment-triton"
INSTALL_HINT = "apt-get install -y prometheus"



class PrometheusNotInstalled(RuntimeError):
    """The prometheus (or promtool) binary is missing; the message says how to install it."""


class InvalidPrometheusRule(ValueError):
    """monitoring/prometheusrule.yaml is not a PrometheusRule with spec.groups."""


@dataclass(frozen=True)
class PrometheusTargets:
    """What the local Prometheus scrapes: the transformer's /metrics and Triton's metrics port."""

    transformer_port: int = 8000
    triton_metrics_port: int = 8012
    host: str = "127.0.0.1"

    @classmethod
    def for_stack(cls, config: Any) -> "PrometheusTargets":
        """From a `sentiment.stack.up.StackConfig` (its `.port` and `.triton.metrics`)."""
        return cls(transformer_port=config.port, triton_metrics_port=config.triton.metrics)


# ---- binaries -----------------------------------------------------------------------------------
def prometheus_package_binary(name: str) -> str:
    """A binary of Debian's prometheus package (`prometheus`, `promtool`), or an install hint."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
    if found is None:
        raise PrometheusNotInstalled(f"{name} is not installed: {INSTALL_HINT} (Debian/Ubuntu; it brings "
                                     "prometheus and promtool)")
    return found


def prometheus_binary() -> str:
    return prometheus_package_binary("prometheus")


# ---- rules ----------------------------------------------------------------------------------------
def load_prometheus_rule(path: Path = ALERTS_FILE) -> dict:
    """The PrometheusRule document, checked for the parts the local Prometheus needs."""
    document = yaml.safe_load(Path(path).read_text())
    if not isinstance(document, dict) or document.get("kind") != "PrometheusRule" \
            or not str(document.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
        raise InvalidPrometheusRule(f"{path} is not a monitoring.coreos.com PrometheusRule")
    groups = (document.get("spec") or {}).get("groups")
    if not isinstance(groups, list) or not groups:
        raise InvalidPrometheusRule(f"{path} has no spec.groups")
    return document


def rules_from_prometheus_rule(document: dict) -> dict:
    """A plain Prometheus rules file ({"groups": [...]}) from a PrometheusRule's spec."""
    return {"groups": document["spec"]["groups"]}


def write_rules_file(path: Path, source: Path = ALERTS_FILE) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rules = rules_from_prometheus_rule(load_prometheus_rule(source))
    header = (f"# Generated from {source.relative_to(REPO_ROOT) if source.is_relative_to(REPO_ROOT) else source}"
              " by sentiment up --with-prometheus: edit that file, not this one.\n")
    path.write_text(header + yaml.safe_dump(rules, sort_keys=False, allow_unicode=True, width=120))
    return path


# ---- config ---------------------------------------------------------------------------------------
def prometheus_config(targets: PrometheusTargets, rules_file: Path | None, scrape_interval: str = "5s") -> dict:
    """The scrape configuration as a dict (rules are evaluated as often as targets are scraped)."""
    # The scrape timeout may not exceed the interval (Prometheus' default timeout is 10 s).
    timeout = scrape_interval if duration_seconds(scrape_interval) <= 10 else "10s"
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": timeout,
                   "evaluation_interval": scrape_interval},
    }
    if rules_file is not None:
        config["rule_files"] = [str(rules_file)]
    config["scrape_configs"] = [
        {"job_name": TRANSFORMER_JOB, "metrics_path": "/metrics",
         "static_configs": [{"targets": [f"{targets.host}:{targets.transformer_port}"]}]},
        {"job_name": TRITON_JOB, "metrics_path": "/metrics",
         "static_configs": [{"targets": [f"{targets.host}:{targets.triton_metrics_port}"]}]},
    ]
    return config


def write_prometheus_config(path: Path, targets: PrometheusTargets, rules_file: Path | None,
                            scrape_interval: str = "5s") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(prometheus_config(targets, rules_file, scrape_interval), sort_keys=False)
    path.write_text("# Generated by sentiment up --with-prometheus for the local stack.\n" + text)
    return path


# ---- the server -----------------------------------------------------------------------------------
def prometheus_command(config_file: Path, storage_dir: Path, port: int, host: str = "127.0.0.1",
                       retention: str = "2d") -> list[str]:
    return [
        prometheus_binary(),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={storage_dir}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address={host}:{port}",
        "--web.enable-lifecycle",
    ]


def prometheus_process(targets: PrometheusTargets, port: int, data_dir: Path, log_file: Path,
                       rules_file: Path | None = None, scrape_interval: str = "5s") -> ManagedProcess:
    """Prometheus on 127.0.0.1:`port` scraping `targets`, with the SLO alert rules, not yet started.

    Writes into `data_dir`: prometheus.yml, the rules extracted from the PrometheusRule (at
    `rules_file` if given, else data_dir/sentiment-slo.rules.yml) and the TSDB (data_dir/tsdb).
    Raises PrometheusNotInstalled (naming `apt-get install -y prometheus`) when the binary is missing.
    Ready once GET /-/ready answers 200 (the TSDB is open and the config loaded).
    """
    prometheus_binary()  # fail with the install hint before writing anything
    data_dir = Path(data_dir).resolve()
    rules_file = write_rules_file(Path(rules_file).resolve() if rules_file else data_dir / RULES_FILE_NAME)
    config_file = write_prometheus_config(data_dir / CONFIG_FILE_NAME, targets, rules_file, scrape_interval)
    (data_dir / "tsdb").mkdir(parents=True, exist_ok=True)
    return ManagedProcess("prometheus", prometheus_command(config_file, data_dir / "tsdb", port), Path(log_file),
                          ready=lambda: http_ok(f"http://127.0.0.1:{port}/-/ready", timeout=1), ready_timeout_s=30)


def start_prometheus(targets: PrometheusTargets, port: int, data_dir: Path, log_file: Path,
                     rules_file: Path | None = None, scrape_interval: str = "5s",
                     timeout: float = 30.0) -> ManagedProcess:
    """prometheus_process(...), started and ready; stops it again if it never gets ready."""
    if not port_is_free(port):
        raise ProcessFailed(f"port {port} (Prometheus) is in use: stop what uses it or choose another port")
    process = prometheus_process(targets, port, data_dir, log_file, rules_file, scrape_interval).start()
    try:
        process.wait_ready(timeout=timeout)
    except BaseException:
        process.stop()
        raise
    return process
