"""`sentiment up`: run Redis, Triton and the transformer on this machine until Ctrl-C.

All three start at once (the transformer waits for Triton by itself), each logs to its own file
in one folder, and any exit (Ctrl-C, SIGTERM, or a child that dies) stops all three and checks
that their ports are free again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from sentiment.paths import cache_home
from sentiment.stack.processes import ManagedProcess, ProcessFailed, free_port, port_is_free
from sentiment.stack.redis_server import redis_ping, redis_process, redis_server_binary
from sentiment.stack.triton import TritonPorts, model_ready, triton_process

log = logging.getLogger(__name__)


@dataclass
class StackConfig:
    model_repository: Path
    logs: Path
    port: int = 8000
    grpc_port: int = 8081
    triton: TritonPorts = field(default_factory=lambda: TritonPorts(8010, 8011, 8012))
    redis_port: int = 6390
    redis_url: str | None = None  # an external Redis: start none
    use_redis: bool = True
    protocol: str = "grpc-v2"
    startup_timeout_s: float = 120.0
    transformer_args: list[str] = field(default_factory=list)
    prometheus_port: int | None = None  # set: also run Debian's prometheus against the stack

    @classmethod
    def on_free_ports(cls, model_repository: Path, logs: Path, **settings) -> "StackConfig":
        """A stack on ports free right now (benchmarks and tests run beside a user's own stack)."""
        return cls(model_repository=model_repository, logs=logs, port=free_port(), grpc_port=free_port(),
                   triton=TritonPorts(free_port(), free_port(), free_port()), redis_port=free_port(), **settings)

    def ports(self) -> dict[str, int]:
        ports = {"transformer HTTP": self.port, "transformer gRPC": self.grpc_port, "Triton HTTP": self.triton.http,
                 "Triton gRPC": self.triton.grpc, "Triton metrics": self.triton.metrics}
        if self.use_redis and not self.redis_url and redis_server_binary():
            ports["Redis"] = self.redis_port
        if self.prometheus_port is not None:
            ports["Prometheus"] = self.prometheus_port
        return ports


def export_checkpoint_cached(checkpoint: Path) -> Path:
    """Export a user's checkpoint once into the per-machine cache; returns its model repository."""
    from sentiment.model.build import build_lock, export_code_version
    from sentiment.model.export import export
    from transformer.bundle import BundleError, ModelBundle

    digest = hashlib.sha256(str(checkpoint.resolve()).encode())
    for path in sorted(p for p in checkpoint.iterdir() if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(export_code_version().encode())
    repository = cache_home() / "exports" / digest.hexdigest()[:16]
    with build_lock(cache_home()):
        try:
            ModelBundle.load(repository / "sentiment" / "bundle")
            return repository
        except BundleError:
            export(checkpoint, repository)
    return repository


class Stack:
    def __init__(self, config: StackConfig):
        self.config = config
        self.processes: list[ManagedProcess] = []
        self.redis_url: str | None = config.redis_url
        self._stop = threading.Event()

    # ---- start ---------------------------------------------------------------------------------
    def _check_ports(self) -> None:
        busy = [f"{name} {port}" for name, port in self.config.ports().items() if not port_is_free(port)]
        if busy:
            raise ProcessFailed(f"port(s) in use: {', '.join(busy)}. Stop what uses them or choose other ports "
                                "(see `sentiment up --help`).")

    def _transformer_command(self) -> list[str]:
        c = self.config
        grpc = c.protocol == "grpc-v2"
        command = [
            sys.executable, "-m", "transformer",
            "--model_name", "sentiment",
            "--predictor_host", f"127.0.0.1:{c.triton.grpc if grpc else c.triton.http}",
            "--predictor_protocol", c.protocol,
            "--http_port", str(c.port), "--grpc_port", str(c.grpc_port),
            "--model_bundle", str(c.model_repository / "sentiment" / "bundle"),
        ]
        if self.redis_url:
            command += ["--redis_url", self.redis_url]
        return command + list(c.transformer_args)

    def start(self) -> None:
        c = self.config
        c.logs.mkdir(parents=True, exist_ok=True)
        if c.prometheus_port is not None:
            from sentiment.stack.prometheus import prometheus_binary

            prometheus_binary()  # fail before starting anything when it is not installed
        self._check_ports()
        redis = None
        if c.use_redis and not c.redis_url:
            if redis_server_binary():
                redis = redis_process(c.redis_port, c.logs / "redis-data", c.logs / "redis.log")
                self.redis_url = f"redis://127.0.0.1:{c.redis_port}/0"
            else:
                print("redis-server is not installed: using the in-process cache "
                      "(apt-get install -y redis-server to run with Redis)", flush=True)
        environment = dict(os.environ)
        if not self.redis_url:
            environment.pop("REDIS_URL", None)  # no Redis for this run: the in-process cache
        triton = triton_process(c.model_repository, c.triton, c.logs / "triton.log")
        transformer = ManagedProcess("transformer", self._transformer_command(), c.logs / "transformer.log",
                                     env=environment)
        started = time.monotonic()
        for process in (redis, triton, transformer):
            if process is not None:
                self.processes.append(process.start())
        if redis is not None:
            redis.wait_ready(lambda: redis_ping(c.redis_port), 20)
            print(f"  redis        ready on 127.0.0.1:{c.redis_port}", flush=True)
        triton.wait_ready(lambda: model_ready(c.triton), c.startup_timeout_s)
        print(f"  triton       ready on 127.0.0.1:{c.triton.http} (HTTP) / {c.triton.grpc} (gRPC) "
              f"/ {c.triton.metrics} (metrics)", flush=True)
        transformer.wait_ready(self.healthy, c.startup_timeout_s)
        print(f"  transformer  ready on http://localhost:{c.port} (gRPC {c.grpc_port}) "
              f"in {time.monotonic() - started:.1f} s", flush=True)
        if c.prometheus_port is not None:
            from sentiment.stack.prometheus import PrometheusTargets, start_prometheus

            self.processes.append(start_prometheus(PrometheusTargets.for_stack(c), c.prometheus_port,
                                                   c.logs / "prometheus", c.logs / "prometheus.log"))
            print(f"  prometheus   ready on http://localhost:{c.prometheus_port} (scrapes the transformer and Triton, "
                  "evaluates the SLO alerts)", flush=True)

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.config.port}/project/health"
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200

    # ---- run and stop --------------------------------------------------------------------------
    def wait(self) -> int:
        """Block until a signal or a child's death; returns the exit code for `sentiment up`."""
        def request_stop(signum, _frame):
            print(f"\nreceived {signal.Signals(signum).name}, stopping ...", flush=True)
            self._stop.set()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        while not self._stop.wait(0.5):
            dead = [p for p in self.processes if not p.alive()]
            if dead:
                for process in dead:
                    print(f"{process.name} exited unexpectedly (code {process.process.returncode}); "
                          f"see {process.log_file}", file=sys.stderr, flush=True)
                return 1
        return 0

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(grace=15 if process.name == "transformer" else 10)
        self.processes.clear()
        deadline = time.monotonic() + 5
        ports = self.config.ports()
        while time.monotonic() < deadline and not all(port_is_free(p) for p in ports.values()):
            time.sleep(0.1)
        busy = [f"{name} {port}" for name, port in ports.items() if not port_is_free(port)]
        if busy:
            print(f"warning: still in use after stop: {', '.join(busy)}", file=sys.stderr, flush=True)
        else:
            print("stopped every process of the stack; all ports free", flush=True)


def banner(config: StackConfig) -> str:
    base = f"http://localhost:{config.port}"
    return f"""
The stack is up. Logs: {config.logs}
  POST {base}/project/bulk-predict      GET {base}/project/health      GET {base}/metrics
  KServe V1: POST {base}/v1/models/sentiment:predict    V2: POST {base}/v2/models/sentiment/infer

Try:
  curl -X POST "{base}/project/bulk-predict" -H "Content-Type: application/json" -d '{{"text":["i love this","this is bad"]}}'

Press Ctrl-C to stop.
"""
