"""The transformer as a child process: the one place that spells its command line.

`sentiment up`, the benchmarks and the test fixtures all start `python -m transformer` through
`TransformerLaunch`, so a flag added to the transformer is passed the same way everywhere.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from sentiment.model.triton_repository import MODEL_NAME, bundle_dir
from sentiment.stack.processes import ManagedProcess, http_ok
from sentiment.stack.triton import TritonPorts

STARTUP_TIMEOUT_S = 120.0
HEALTH_PATH = "/project/health"  # readiness: the transformer and Triton serve the same model
LIVE_PATH = "/project/live"      # liveness: the process answers


def tracing_environment(endpoint: str) -> dict[str, str]:
    """The standard OpenTelemetry variables that send every request's trace to `endpoint` (OTLP/HTTP),
    exported within a fifth of a second."""
    return {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_SDK_DISABLED": "false"}


@dataclass(frozen=True)
class TransformerLaunch:
    """Everything the local stack decides about one transformer process."""

    bundle: Path                   # <model repository>/sentiment/<serving version>/bundle
    triton: TritonPorts
    protocol: str = "grpc-v2"      # to Triton: grpc-v2 (its gRPC port) or v2 (its HTTP port)
    http_port: int = 8000
    grpc_port: int = 8081
    host: str = "127.0.0.1"        # BIND_ADDRESS of both ports: this machine only unless told otherwise
    redis_url: str | None = None   # None: the in-process cache
    extra_args: tuple[str, ...] = ()
    python: str = sys.executable   # the interpreter (another venv: the serving image's dependency set)
    control_file: Path | None = None  # the rollout's control channel (SIGHUP + this file)
    traces_endpoint: str | None = None  # an OTLP/HTTP endpoint: tracing on, every request traced

    @classmethod
    def for_repository(cls, repository: Path, triton: TritonPorts, **settings) -> "TransformerLaunch":
        return cls(bundle=bundle_dir(repository), triton=triton, **settings)

    @property
    def url(self) -> str:
        local = self.host in ("0.0.0.0", "::", "127.0.0.1")
        host = "127.0.0.1" if local else (f"[{self.host}]" if ":" in self.host else self.host)
        return f"http://{host}:{self.http_port}"

    def command(self) -> list[str]:
        command = [
            self.python, "-m", "transformer",
            "--model_name", MODEL_NAME,
            "--predictor_host", self.triton.address(self.protocol),
            "--predictor_protocol", self.protocol,
            "--http_port", str(self.http_port), "--grpc_port", str(self.grpc_port), "--bind_address", self.host,
            "--model_bundle", str(self.bundle),
        ]
        if self.redis_url:
            command += ["--redis_url", self.redis_url]
        if self.control_file is not None:
            command += ["--control_file", str(self.control_file)]
        return command + list(self.extra_args)

    def environment(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        """This environment (settings like CACHE_TTL_SECONDS pass through) without REDIS_URL: whether
        there is a Redis is this launch's decision (`redis_url`), then the tracing variables of
        `traces_endpoint`, then `overrides`."""
        environment = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
        if self.traces_endpoint:
            environment |= tracing_environment(self.traces_endpoint)
        return environment | dict(overrides or {})

    def process(self, log_file: Path, name: str = "transformer", env: Mapping[str, str] | None = None,
                ready_path: str = HEALTH_PATH, cwd: Path | None = None) -> ManagedProcess:
        """The transformer, not yet started; ready once `ready_path` answers 200."""
        url = self.url + ready_path
        return ManagedProcess(name, self.command(), log_file, env=self.environment(env), cwd=cwd,
                              ready=lambda: http_ok(url), ready_timeout_s=STARTUP_TIMEOUT_S)
