"""Shared fixtures: tiny exported models, and real Triton / redis-server / transformer processes
started on free ports and stopped by PID."""

from __future__ import annotations

import shutil
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from sentiment.measure import metrics_page
from sentiment.model.export_options import ExportOptions
from sentiment.paths import REPO_ROOT
from sentiment.stack.processes import ManagedProcess, free_port, http_ok
from sentiment.stack.redis_server import redis_process, redis_server_binary, redis_url
from sentiment.stack.transformer import HEALTH_PATH, LIVE_PATH, TransformerLaunch
from sentiment.stack.triton import TritonPorts, triton_process

__all__ = ["REPO_ROOT", "RedisServer", "TransformerServer", "TritonServer", "http_ok", "metric_total",
           "until_triton_traced", "wait_until"]


# ---- models -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    from tests.support.tiny import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny-checkpoints")
    return {kind: build_tiny_checkpoint(kind, root / kind, seed=1) for kind in ("bert", "distilbert", "mpnet")}


@pytest.fixture(scope="session")
def tiny_repositories(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """fp32 exports of the tiny models: {'bert': repository root, 'distilbert': ..., 'mpnet': ...}."""
    from sentiment.model.export import export

    root = tmp_path_factory.mktemp("tiny-repositories")
    return {kind: _export(export, checkpoint, root / kind) for kind, checkpoint in tiny_checkpoints.items()}


def _export(export, checkpoint: Path, repository: Path) -> Path:
    # A 10 ms batching window makes merges of concurrent test requests certain, not a race.
    export(checkpoint, repository, ExportOptions(variant="fp32", max_queue_delay_us=10_000))
    return repository


@pytest.fixture(scope="session")
def default_build():
    """The default model, built (or reused from the per-machine cache) exactly as `make model` does."""
    from sentiment.model.build import build
    from sentiment.paths import default_model_repository

    return build(default_model_repository())


# ---- processes: thin wrappers over sentiment.stack, the code `sentiment up` starts them with -------
@dataclass
class TritonServer:
    repository: Path
    logs: Path
    ports: TritonPorts = field(default_factory=lambda: TritonPorts(free_port(), free_port(), free_port()))
    traces_url: str | None = None  # OpenTelemetry tracing to this OTLP/HTTP URL (as `sentiment up --with-tracing`)
    process: ManagedProcess | None = None

    def start(self) -> "TritonServer":
        self.process = triton_process(self.repository, self.ports, self.logs / "triton.log",
                                      traces_url=self.traces_url).start().wait_ready()
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    @property
    def grpc_address(self) -> str:
        return self.ports.address("grpc-v2")

    @property
    def http_address(self) -> str:
        return self.ports.address("v2")

    def inference_count(self) -> int:
        """Texts (batch rows) Triton has run for the model, from its statistics API."""
        import json

        with urllib.request.urlopen(f"http://{self.http_address}/v2/models/sentiment/stats", timeout=5) as response:
            stats = json.load(response)["model_stats"][0]
        return int(stats["inference_count"])

    def settled_inference_count(self, quiet_s: float = 0.15, timeout: float = 5.0) -> int:
        """The count once it stops moving: Triton updates its statistics after the response is sent."""
        deadline = time.monotonic() + timeout
        last = self.inference_count()
        while time.monotonic() < deadline:
            time.sleep(quiet_s)
            current = self.inference_count()
            if current == last:
                return current
            last = current
        return last


@dataclass
class RedisServer:
    logs: Path
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return redis_url(self.port)

    def start(self) -> "RedisServer":
        self.process = redis_process(self.port, self.logs / "redis-data", self.logs / "redis.log").start().wait_ready()
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@dataclass
class TransformerServer:
    triton: TritonServer
    logs: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    protocol: str = "grpc-v2"
    port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    def launch(self) -> TransformerLaunch:
        """The transformer's command line, built by the stack; the predictor is re-checked every 0.25 s."""
        return TransformerLaunch.for_repository(
            self.triton.repository, self.triton.ports, protocol=self.protocol, http_port=self.port,
            grpc_port=self.grpc_port, extra_args=("--predictor_check_interval", "0.25", *self.extra_args))

    @property
    def url(self) -> str:
        return self.launch().url

    def command(self) -> list[str]:
        return self.launch().command()

    def start(self, wait_healthy: bool = True) -> "TransformerServer":
        self.process = self.launch().process(self.logs / f"transformer-{self.port}.log",
                                             name=f"transformer-{self.port}", env=self.env,
                                             ready_path=HEALTH_PATH if wait_healthy else LIVE_PATH)
        self.process.start().wait_ready(timeout=60)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` (matching the given labels) from /metrics."""
        return metric_total(self.url, name, **labels)


def metric_total(base_url: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` (matching the given labels) from `base_url`/metrics."""
    return metrics_page.total(metrics_page.scrape(base_url + "/metrics"), name, **labels)


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def require_redis_server() -> None:
    if redis_server_binary() is None:
        pytest.fail("redis-server is not installed: apt-get install -y redis-server (.ci/run does this)")


def wait_until(predicate, timeout: float, interval: float = 0.1, message: str = "condition") -> float:
    """Poll until `predicate()` is true; returns the seconds it took; fails the test on timeout."""
    started = time.monotonic()
    last_error = None
    while time.monotonic() - started < timeout:
        try:
            if predicate():
                return time.monotonic() - started
        except Exception as error:  # noqa: BLE001 - the condition may raise while the system recovers
            last_error = error
        time.sleep(interval)
    pytest.fail(f"{message} not reached within {timeout} s (last error: {last_error!r})")


# Triton's gRPC frontend (2.51, the bundled and the cluster's version, and unchanged up to 2.73) reads
# the `traceparent` metadata value as a C string: GrpcServerCarrier::Get returns the value's
# string_ref::data(), which is not NUL-terminated. When the bytes after it are not NUL, the header reads
# too long, W3C parsing rejects it, and Triton traces nothing of that call. tests/integration/
# test_tracing.py measures it: a few calls in a hundred over gRPC, none over HTTP.
TRITON_TRACE_TRIES = 4


def until_triton_traced(send: Callable[[], str], arrived: Callable[[str], bool], timeout: float = 10,
                        tries: int = TRITON_TRACE_TRIES) -> str:
    """Sends one traced request (`send` makes it and returns its trace id) until `arrived(trace_id)`,
    which asks for Triton's spans too, holds; returns that trace id. A call whose trace Triton's gRPC
    frontend dropped (above) is sent again with a new trace, up to `tries` in all: a lost trace is
    Triton's bug, but no whole trace in `tries` means the propagation itself is broken."""
    lost = []
    for _ in range(tries):
        trace_id = send()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if arrived(trace_id):
                return trace_id
            time.sleep(0.1)
        lost.append(trace_id)
    pytest.fail(f"none of {tries} traces arrived whole (Triton's spans included) within {timeout} s each: {lost}")


@pytest.fixture(scope="session")
def copy_tree(tmp_path_factory):
    def copy(source: Path, name: str) -> Path:
        target = tmp_path_factory.mktemp(name)
        shutil.copytree(source, target, dirs_exist_ok=True)
        return target

    return copy


# ---- the stack most tests share: the tiny BERT on a real Triton, a real Redis, the transformer ----
def started(server):
    """Start a process and stop it when the fixture ends: `yield from started(Server(...))`."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tiny_triton(tiny_repositories, logs_dir, request) -> TritonServer:
    yield from started(TritonServer(tiny_repositories["bert"], logs_dir / f"{request.module.__name__}-triton"))


@pytest.fixture(scope="module")
def module_redis(logs_dir, require_redis_server, request) -> RedisServer:
    yield from started(RedisServer(logs_dir / f"{request.module.__name__}-redis"))


@pytest.fixture(scope="module")
def tiny_service(tiny_triton, module_redis, logs_dir, request) -> TransformerServer:
    """The transformer as deployed (default limits, the Redis cache) in front of the tiny BERT."""
    yield from started(TransformerServer(tiny_triton, logs_dir / request.module.__name__,
                                         extra_args=["--redis_url", module_redis.url]))
