"""The Triton Inference Server binary shipped in the nvidia-pytriton wheel, run as a plain server.

That build has only the Python backend, so the local stack loads the model with
`--model-config-name=local` (configs/local.pbtxt: Python backend running the ONNX file).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from sentiment.model.triton_repository import LOCAL_CONFIG_NAME, MODEL_NAME
from sentiment.stack.processes import ManagedProcess, http_ok

STARTUP_TIMEOUT_S = 120.0  # model load and warm-up included


class TritonNotInstalled(RuntimeError):
    """nvidia-pytriton is missing; the message says how to install it."""


def triton_home() -> Path:
    """The wheel's tritonserver folder, found without importing pytriton (its import loads
    tritonclient.grpc, which cannot share a process with kserve)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalled("the Triton binary comes with nvidia-pytriton: pip install 'nvidia-pytriton==0.7.0'")
    return Path(list(spec.submodule_search_locations)[0]).resolve() / "tritonserver"


def ensure_python_backend_stub(home: Path) -> Path:
    """The stub must sit next to the Python backend (it finds its libraries through a relative RPATH)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    source = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    target = home / "backends" / "python" / "triton_python_backend_stub"
    if not source.is_file():
        raise TritonNotInstalled(f"nvidia-pytriton has no Python-backend stub for Python {version} ({source})")
    if not target.is_file() or target.stat().st_size != source.stat().st_size:
        shutil.copy2(source, target)
    return target


@dataclass(frozen=True)
class TritonPorts:
    """Triton's three ports on loopback."""

    http: int
    grpc: int
    metrics: int

    def address(self, protocol: str = "grpc-v2") -> str:
        """host:port of the predictor for a KServe protocol: gRPC for `grpc-v2`, HTTP for `v2`."""
        return f"127.0.0.1:{self.grpc if protocol == 'grpc-v2' else self.http}"


def triton_environment() -> dict[str, str]:
    """PATH with this interpreter's bin first (the stub imports numpy/onnxruntime from that python3)
    and LD_LIBRARY_PATH with the libpython the stub embeds."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [libdir, env.get("LD_LIBRARY_PATH", "")] if p)
    return env


TRITON_SERVICE_NAME = "sentiment-triton"  # service.name of Triton's spans


def triton_tracing_args(
    traces_url: str, service_name: str = TRITON_SERVICE_NAME, schedule_delay_ms: int = 5000
) -> list[str]:
    """Triton's OpenTelemetry tracing (checked on the bundled 2.51 binary, the version of the cluster's
    24.10 image): spans exported as OTLP/HTTP JSON to `traces_url` (.../v1/traces). Triton traces
    every call that carries a valid `traceparent` (sampled flag or not: it forces sampling) and
    continues that trace; `rate` only samples calls without one, and is set so high that Triton
    starts no traces of its own. The transformer sends `traceparent` only on sampled calls.
    inferenceservice/base/servingruntime.yaml has these flags (tests/deploy holds them together)."""
    return [
        "--trace-config=mode=opentelemetry",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=rate=1000000",
        "--trace-config=count=-1",
        f"--trace-config=opentelemetry,url={traces_url}",
        f"--trace-config=opentelemetry,resource=service.name={service_name}",
        f"--trace-config=opentelemetry,bsp_schedule_delay={schedule_delay_ms}",
    ]


def triton_command(repository: Path, ports: TritonPorts, host: str = "127.0.0.1", config_name: str = LOCAL_CONFIG_NAME,
                   traces_url: str | None = None) -> list[str]:
    """The local Triton's command line; with `traces_url`, OpenTelemetry tracing to that OTLP/HTTP URL."""
    home = triton_home()
    ensure_python_backend_stub(home)
    return [
        str(home / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--model-config-name={config_name}",
        # Explicit model control: the model is loaded at start, and again (new configuration, new
        # versions) only when the rollout asks on this private port; no polling of the repository.
        "--model-control-mode=explicit", f"--load-model={MODEL_NAME}",
        f"--backend-directory={home / 'backends'}",
        f"--cache-directory={home / 'caches'}",
        f"--http-address={host}", f"--grpc-address={host}", f"--metrics-address={host}",
        f"--http-port={ports.http}", f"--grpc-port={ports.grpc}", f"--metrics-port={ports.metrics}",
        "--exit-timeout-secs=3",
        "--pinned-memory-pool-byte-size=0",
        "--allow-gpu-metrics=false",
        "--log-verbose=0",
    ] + (triton_tracing_args(traces_url, schedule_delay_ms=200) if traces_url else [])


def model_ready(ports: TritonPorts, host: str = "127.0.0.1") -> bool:
    """Triton's readiness of the model itself (not only the server)."""
    return http_ok(f"http://{host}:{ports.http}/v2/models/{MODEL_NAME}/ready", timeout=1)


def triton_process(
    repository: Path, ports: TritonPorts, log_file: Path, traces_url: str | None = None
) -> ManagedProcess:
    """Triton serving `repository` on loopback, not yet started; ready once the model is."""
    return ManagedProcess("triton", triton_command(repository, ports, traces_url=traces_url), log_file,
                          env=triton_environment(),
                          ready=lambda: model_ready(ports), ready_timeout_s=STARTUP_TIMEOUT_S)
