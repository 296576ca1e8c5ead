"""`sentiment up`: run Redis, Triton and the transformer on this machine until Ctrl-C.

All parts start at once (the transformer waits for Triton by itself), each logs to its own file in
one folder. While it runs, the stack supervises its parts as Kubernetes would (`supervisor.py`): a
crashed Redis, Triton or Prometheus is restarted with backoff while the transformer keeps serving.
Ctrl-C, SIGTERM, the transformer's death or a restart loop stops every part and checks that their
ports are free again.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, ClassVar

from sentiment.paths import default_model_repository
from sentiment.stack.processes import ManagedProcess, ProcessFailed, busy_ports, free_port, http_ok, port_is_free
from sentiment.stack.redis_server import redis_process, redis_server_binary, redis_url
from sentiment.stack.state import StackState
from sentiment.stack.supervisor import RestartPolicy, Supervisor
from sentiment.stack.transformer import TransformerLaunch
from sentiment.stack.traces import TRACES_FILE, TRACES_PATH, receiver_process
from sentiment.stack.triton import TritonPorts, triton_process

TRANSFORMER = "transformer"  # the essential part: its death ends the stack


@dataclass(frozen=True)
class StackConfig:
    """Where the stack runs: every default here is the `sentiment up` flag's default too."""

    PROMETHEUS_PORT: ClassVar[int] = 9090  # --with-prometheus
    TRACES_PORT: ClassVar[int] = 4318      # --with-tracing: the OTLP/HTTP receiver (OTLP's own default port)

    model_repository: Path
    logs: Path
    port: int = 8000
    grpc_port: int = 8081
    host: str = "127.0.0.1"  # the transformer's listening address (BIND_ADDRESS); 0.0.0.0 exposes it
    triton: TritonPorts = TritonPorts(8010, 8011, 8012)
    redis_port: int = 6390
    redis_url: str | None = None  # an external Redis: start none
    use_redis: bool = True
    protocol: str = "grpc-v2"
    transformer_args: tuple[str, ...] = ()
    prometheus_port: int | None = None  # set: also run Debian's prometheus against the stack
    traces_port: int | None = None  # set: run the OTLP receiver here; the transformer and Triton trace to it
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)

    def __post_init__(self) -> None:
        object.__setattr__(self, "transformer_args", tuple(self.transformer_args))

    @classmethod
    def on_free_ports(cls, model_repository: Path, logs: Path, **settings) -> "StackConfig":
        """A stack on ports free right now (benchmarks and tests run beside a user's own stack)."""
        return cls(model_repository=model_repository, logs=logs, port=free_port(), grpc_port=free_port(),
                   triton=TritonPorts(free_port(), free_port(), free_port()), redis_port=free_port(), **settings)

    @property
    def starts_redis(self) -> bool:
        return self.use_redis and not self.redis_url and redis_server_binary() is not None

    def ports(self) -> dict[str, int]:
        ports = {"transformer HTTP": self.port, "transformer gRPC": self.grpc_port, "Triton HTTP": self.triton.http,
                 "Triton gRPC": self.triton.grpc, "Triton metrics": self.triton.metrics}
        if self.starts_redis:
            ports["Redis"] = self.redis_port
        if self.prometheus_port is not None:
            ports["Prometheus"] = self.prometheus_port
        if self.traces_port is not None:
            ports["trace receiver"] = self.traces_port
        return ports

    @property
    def traces_endpoint(self) -> str | None:
        """The OTLP/HTTP endpoint of the local receiver (None: tracing is off)."""
        return f"http://127.0.0.1:{self.traces_port}" if self.traces_port is not None else None

    @property
    def traces_file(self) -> Path:
        return self.logs / TRACES_FILE


def console(message: str) -> None:
    print(message, flush=True)


class Stack:
    """The parts of the local stack as ManagedProcesses: start, supervise, stop."""

    def __init__(self, config: StackConfig, say: Callable[[str], None] = console):
        self.config = config
        self.say = say
        self.processes: list[ManagedProcess] = []
        self.redis_url: str | None = config.redis_url
        self.supervisor: Supervisor | None = None
        self._stop = threading.Event()
        self._held_ports: dict[str, int] = {}  # the ports this stack took (none when it refused to start)

    def process(self, name: str) -> ManagedProcess:
        """The part called `name` ("redis", "triton", "transformer", "prometheus")."""
        return next(p for p in self.processes if p.name == name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    # ---- start ---------------------------------------------------------------------------------
    def _check_ports(self) -> None:
        busy = busy_ports(self.config.ports())
        if busy:
            lines = "".join(f"\n  {port}" for port in busy)
            raise ProcessFailed(
                f"port(s) already in use by another process; nothing was started:{lines}\n"
                "Stop that process first (another `sentiment up` or `make run`: Ctrl-C in its terminal), or give "
                "this stack other ports (--port, --grpc-port, --triton-http-port, --triton-grpc-port, "
                "--triton-metrics-port, --redis-port, --prometheus-port, --traces-port; see `sentiment up --help`).")
        self._held_ports = self.config.ports()

    def _parts(self) -> tuple[ManagedProcess | None, ManagedProcess, ManagedProcess]:
        c = self.config
        endpoint = c.traces_endpoint
        redis = None
        if c.starts_redis:
            redis = redis_process(c.redis_port, c.logs / "redis-data", c.logs / "redis.log")
            self.redis_url = redis_url(c.redis_port)
        elif c.use_redis and not c.redis_url:
            self.say("redis-server is not installed: using the in-process cache "
                     "(apt-get install -y redis-server to run with Redis)")
        triton = triton_process(c.model_repository, c.triton, c.logs / "triton.log",
                                traces_url=endpoint + TRACES_PATH if endpoint else None)
        launch = TransformerLaunch.for_repository(c.model_repository, c.triton, protocol=c.protocol, http_port=c.port,
                                                  grpc_port=c.grpc_port, host=c.host, redis_url=self.redis_url,
                                                  extra_args=c.transformer_args,
                                                  control_file=c.logs / StackState.CONTROL_FILE,
                                                  traces_endpoint=endpoint)
        return redis, triton, launch.process(c.logs / "transformer.log", name=TRANSFORMER)

    def _launch(self, process: ManagedProcess) -> ManagedProcess:
        """Start a part, registered first: a Ctrl-C that lands between its start and the bookkeeping
        would otherwise leave it running after `stop()`."""
        self.processes.append(process)
        return process.start()

    def start(self) -> None:
        c = self.config
        c.logs.mkdir(parents=True, exist_ok=True)
        if c.prometheus_port is not None:
            from sentiment.stack.prometheus import prometheus_binary

            prometheus_binary()  # fail before starting anything when it is not installed
        self._check_ports()
        redis, triton, transformer = self._parts()
        started = time.monotonic()
        if c.traces_port is not None:  # first: the others export to it from their first request
            receiver = self._launch(receiver_process(c.traces_port, c.traces_file, c.logs / "traces.log"))
            receiver.wait_ready()
            self.say(f"  traces       OTLP/HTTP on {c.traces_endpoint}{TRACES_PATH}, spans -> {c.traces_file}")
        for process in (redis, triton, transformer):
            if process is not None:
                self._launch(process)
        if redis is not None:
            redis.wait_ready()
            self.say(f"  redis        ready on 127.0.0.1:{c.redis_port}")
        triton.wait_ready()
        self.say(f"  triton       ready on 127.0.0.1:{c.triton.http} (HTTP) / {c.triton.grpc} (gRPC) "
                 f"/ {c.triton.metrics} (metrics)")
        transformer.wait_ready()
        self.say(f"  transformer  ready on http://localhost:{c.port} (gRPC {c.grpc_port}) "
                 f"in {time.monotonic() - started:.1f} s")
        self.say(f"               {exposure(c.host)}")
        if c.prometheus_port is not None:
            from sentiment.stack.prometheus import PrometheusTargets, start_prometheus

            self.processes.append(start_prometheus(PrometheusTargets(c.port, c.triton.metrics), c.prometheus_port,
                                                   c.logs / "prometheus", c.logs / "prometheus.log"))
            self.say(f"  prometheus   ready on http://localhost:{c.prometheus_port} (scrapes the transformer and "
                     "Triton, evaluates the SLO alerts)")
        self.supervisor = Supervisor(self.processes, {TRANSFORMER}, c.restart_policy, self._report)
        StackState(c.model_repository, c.triton, self.process(TRANSFORMER).pid, self.url,
                   c.logs / StackState.CONTROL_FILE).write(c.logs)

    def healthy(self) -> bool:
        return http_ok(self.url + "/project/health")

    # ---- run and stop --------------------------------------------------------------------------
    def _report(self, process: ManagedProcess, message: str) -> None:
        """Say a supervision event on the console and in the part's own log."""
        stamp = datetime.now().strftime("%H:%M:%S")
        self.say(f"{stamp} {message}")
        with process.log_file.open("a") as log:
            log.write(f"--- {datetime.now().isoformat(timespec='seconds')} sentiment up: {message} ---\n")

    def request_stop(self) -> None:
        self._stop.set()

    def supervise(self, interval: float = 0.2) -> int:
        """Keep the parts running until `request_stop()` (0), or the transformer's death or a restart loop (1)."""
        assert self.supervisor is not None, "start() the stack first"
        while not self._stop.wait(interval):
            ending = self.supervisor.check()
            if ending:
                print(f"{ending.reason}; see {ending.process.log_file}", file=sys.stderr, flush=True)
                return 1
        return 0

    def run_until_signal(self) -> int:
        """`supervise()` with Ctrl-C and SIGTERM as the way to stop (main thread only)."""
        def request_stop(signum, _frame):
            self.say(f"\nreceived {signal.Signals(signum).name}, stopping ...")
            self.request_stop()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        return self.supervise()

    def stop(self) -> None:
        self.request_stop()
        StackState.remove(self.config.logs)
        for process in reversed(self.processes):
            process.stop(grace=15 if process.name == TRANSFORMER else 10)
        if not self._held_ports:
            return  # it never took a port (it refused to start): nothing to free, nothing to check
        deadline = time.monotonic() + 5
        ports = self._held_ports
        while time.monotonic() < deadline and not all(port_is_free(p) for p in ports.values()):
            time.sleep(0.1)
        busy = busy_ports(ports)
        if busy:
            print(f"warning: ports this stack used are still in use after stop: {'; '.join(busy)}", file=sys.stderr,
                  flush=True)
        else:
            self.say("stopped every process of the stack; all ports free")


@dataclass(frozen=True)
class ModelSource:
    """What `sentiment up` serves: a user's checkpoint, an exported repository, or the default model."""

    checkpoint: Path | None = None
    repository: Path | None = None

    def repository_to_serve(self) -> Path:
        """The model repository, exported or built first when needed (once; later runs reuse it)."""
        if self.checkpoint is not None:
            from sentiment.model.build import export_checkpoint_cached

            print(f"exporting {self.checkpoint} (once per checkpoint) ...", flush=True)
            return export_checkpoint_cached(self.checkpoint)
        if self.repository is not None:
            return self.repository
        from sentiment.model.build import build

        print("checking the default model (trains once per machine, 6 to 10 minutes on 2 cores) ...", flush=True)
        return build(default_model_repository()).repository


def run_up(config: StackConfig) -> int:
    """`sentiment up` once the model repository is known: start, print the banner, supervise, stop."""
    stack = Stack(config)
    # During start-up Ctrl-C and SIGTERM raise (`sentiment.cli.main` sets both, for every command), so
    # `finally` stops what already runs; `run_until_signal` then turns them into a stop request.
    console("starting redis, triton and the transformer ...")
    code = 1
    try:
        stack.start()
        console(banner(config))
        code = stack.run_until_signal()
    except (ProcessFailed, RuntimeError) as error:
        console(f"error: {error}")
    except KeyboardInterrupt:
        code = 0
    finally:
        # A second Ctrl-C must not cut the clean-up short (each part's stop is bounded: 15 s at most).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
    return code


def exposure(host: str) -> str:
    """Which machines can reach the transformer, in words."""
    if host in ("0.0.0.0", "::"):
        return f"listening on {host}: every interface, reachable from other machines"
    if host in ("127.0.0.1", "::1", "localhost"):
        return f"listening on {host}: this machine only (--host 0.0.0.0 to expose it)"
    return f"listening on {host} only"


def _tracing_lines(config: StackConfig) -> str:
    if config.traces_port is None:
        return ""
    return (f"\n  Traces (transformer and Triton): {config.traces_file}; `sentiment traces --logs {config.logs}` "
            "prints the latest request's span tree.")


def banner(config: StackConfig) -> str:
    base = f"http://localhost:{config.port}"
    return f"""
The stack is up. Logs: {config.logs}
  POST {base}/project/bulk-predict      GET {base}/project/health      GET {base}/metrics
  KServe V1: POST {base}/v1/models/sentiment:predict    V2: POST {base}/v2/models/sentiment/infer
  Crashed parts (Redis, Triton) are restarted; the transformer's exit stops the stack.{_tracing_lines(config)}

Try:
  curl -X POST "{base}/project/bulk-predict" -H "Content-Type: application/json" \\
       -d '{{"text":["i love this","this is bad"]}}'

Press Ctrl-C to stop.
"""
