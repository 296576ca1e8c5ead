"""The transformer image started the way the rendered prod InferenceService starts its container:
the spec read from the rendered documents, Secret references and cluster service names resolved to the
local stack, and a container engine (podman or docker) that runs it on the host network."""

from __future__ import annotations

import base64
import json
import re
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from sentiment.paths import REPO_ROOT

BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-image.sh"
IMAGE_REF_FILE = REPO_ROOT / ".image-ref"
# KServe's storage initializer puts the model repository here in every InferenceService pod.
STORAGE_MOUNT = "/mnt/models"
_ENV_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (64Mi, 1Gi, 500M) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


@dataclass(frozen=True)
class Probe:
    kind: str   # startup | readiness | liveness
    path: str
    port: int
    timeout_s: float
    period_s: float
    failure_threshold: int


@dataclass(frozen=True)
class ContainerSpec:
    """What the rendered InferenceService says about the transformer's container and pod."""

    args: tuple[str, ...]
    command: tuple[str, ...]
    env: tuple[dict, ...]
    ports: dict[str, int]
    run_as_user: int
    run_as_group: int
    read_only_root: bool
    drop_capabilities: tuple[str, ...]
    allow_privilege_escalation: bool
    tmpfs: dict[str, int]               # mount path -> size limit in bytes (emptyDir volumes)
    probes: tuple[Probe, ...]
    pre_stop: tuple[str, ...]
    grace_period_s: int
    secrets: dict[str, dict[str, str]]  # Secret name -> decoded data, from the same render

    @classmethod
    def from_documents(cls, documents: list[dict]) -> "ContainerSpec":
        (service,) = [d for d in documents if d["kind"] == "InferenceService"]
        pod = service["spec"]["transformer"]
        (container,) = pod["containers"]
        security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        tmpfs = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            assert "emptyDir" in volume, f"volume {mount['name']}: only emptyDir volumes are modelled here"
            tmpfs[mount["mountPath"]] = quantity_bytes(volume["emptyDir"].get("sizeLimit", "64Mi"))
        probes = tuple(
            Probe(kind, probe["httpGet"]["path"], int(probe["httpGet"]["port"]), float(probe.get("timeoutSeconds", 1)),
                  float(probe.get("periodSeconds", 10)), int(probe.get("failureThreshold", 3)))
            for kind in ("startup", "readiness", "liveness")
            if (probe := container.get(f"{kind}Probe")) is not None
        )
        secrets = {d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d.get("data", {}).items()}
                   for d in documents if d["kind"] == "Secret"}
        return cls(
            args=tuple(container.get("args", [])), command=tuple(container.get("command", [])),
            env=tuple(container.get("env", [])),
            ports={p["name"]: int(p["containerPort"]) for p in container.get("ports", [])},
            run_as_user=int(security["runAsUser"]), run_as_group=int(security.get("runAsGroup", security["runAsUser"])),
            read_only_root=bool(security.get("readOnlyRootFilesystem", False)),
            drop_capabilities=tuple(security.get("capabilities", {}).get("drop", [])),
            allow_privilege_escalation=bool(security.get("allowPrivilegeEscalation", True)),
            tmpfs=tmpfs, probes=probes,
            pre_stop=tuple(container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])),
            grace_period_s=int(pod.get("terminationGracePeriodSeconds", 30)), secrets=secrets,
        )

    def environment(self, addresses: dict[str, str]) -> dict[str, str]:
        """The container's environment as the kubelet makes it: Secret references resolved from the
        render, `$(NAME)` expanded from earlier entries; then cluster addresses (`redis:6379`)
        replaced by the local ones in `addresses`."""
        resolved: dict[str, str] = {}
        for entry in self.env:
            if "value" in entry:
                value = _ENV_REFERENCE.sub(lambda m: resolved.get(m.group(1), m.group(0)), entry["value"])
            else:
                reference = entry["valueFrom"]["secretKeyRef"]
                value = self.secrets[reference["name"]][reference["key"]]
            for cluster, local in addresses.items():
                value = value.replace(f"@{cluster}/", f"@{local}/").replace(f"//{cluster}/", f"//{local}/")
            resolved[entry["name"]] = value
        return resolved

    def referenced_names(self) -> set[str]:
        """Env names that another env value uses through `$(NAME)`."""
        return {m for entry in self.env for m in _ENV_REFERENCE.findall(entry.get("value", ""))}

    def model_mount(self) -> str:
        """Where the model repository must be mounted: the bundle path's repository root."""
        bundle = self.environment({})["MODEL_BUNDLE"]
        root = bundle.split("/sentiment/")[0]
        assert root == STORAGE_MOUNT, f"MODEL_BUNDLE {bundle} is not under KServe's {STORAGE_MOUNT}"
        return root


@dataclass
class ContainerEngine:
    """podman (with runc: crun cannot set rlimits on these machines) or docker, as found."""

    name: str
    base: tuple[str, ...]

    @classmethod
    def find(cls) -> "ContainerEngine":
        if shutil.which("podman") and subprocess.run(["podman", "info"], capture_output=True,
                                                     timeout=60).returncode == 0:
            runtime = ("--runtime", "runc") if shutil.which("runc") else ()
            return cls("podman", ("podman", *runtime))
        if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True,
                                                     timeout=60).returncode == 0:
            return cls("docker", ("docker",))
        raise RuntimeError("no container engine to run the image: install podman and runc (apt-get install -y podman "
                           "runc; .ci/run does this) or docker with a running daemon")

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(self.base)} {' '.join(args[:3])}...: {result.stderr[-2000:]}")
        return result

    def limits(self) -> list[str]:
        """Open files and processes at the host's hard limits (a runtime may not raise them)."""
        files = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
        processes = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)  # runc refuses more here
        return ["--ulimit", f"nofile={files}:{files}", "--ulimit", f"nproc={processes}:{processes}"]


@dataclass
class RunningContainer:
    engine: ContainerEngine
    name: str
    started: float
    log_file: Path
    exit_code: int | None = field(default=None)

    def host_pid(self) -> int:
        return int(self.engine.run("inspect", "--format", "{{.State.Pid}}", self.name).stdout.strip())

    def running(self) -> bool:
        result = self.engine.run("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return result.stdout.strip() == "true"

    def exec(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.engine.run("exec", self.name, *command, timeout=timeout, check=False)

    def signal(self, name: str) -> None:
        self.engine.run("kill", "--signal", name, self.name)

    def wait(self, timeout: float) -> int:
        """The exit code once the container has stopped (within `timeout` seconds)."""
        result = self.engine.run("wait", self.name, timeout=timeout)
        self.exit_code = int(result.stdout.strip().splitlines()[-1])
        return self.exit_code

    def logs(self) -> str:
        result = self.engine.run("logs", self.name, check=False)
        text = result.stdout + result.stderr
        self.log_file.write_text(text)
        return text

    def remove(self) -> None:
        self.logs()
        self.engine.run("rm", "--force", "--time", "0", self.name, check=False) if self.engine.name == "podman" \
            else self.engine.run("rm", "--force", self.name, check=False)


def start_container(engine: ContainerEngine, image: str, spec: ContainerSpec, environment: dict[str, str],
                    model_repository: Path, predictor_host: str, name: str, workdir: Path) -> RunningContainer:
    """`image` started as the pod spec says: its args (+ the --predictor_host the KServe controller
    appends), env, user, read-only root with the emptyDir volumes as tmpfs, no capabilities, the
    model repository where the storage initializer puts it; host network (the manifest's ports)."""
    env_file = workdir / f"{name}.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in environment.items()))
    env_file.chmod(0o600)
    options = ["run", "--detach", "--name", name, "--network", "host",
               "--user", f"{spec.run_as_user}:{spec.run_as_group}", "--env-file", str(env_file),
               "--volume", f"{model_repository}:{spec.model_mount()}:ro", *engine.limits()]
    if spec.read_only_root:
        options += ["--read-only"] + (["--read-only-tmpfs=false"] if engine.name == "podman" else [])
    for path, size in spec.tmpfs.items():
        options += ["--tmpfs", f"{path}:rw,size={size},mode=1777"]
    for capability in spec.drop_capabilities:
        options += ["--cap-drop", capability]
    if not spec.allow_privilege_escalation:
        options += ["--security-opt", "no-new-privileges"]
    if spec.command:
        options += ["--entrypoint", json.dumps(list(spec.command))]
    started = time.monotonic()
    engine.run(*options, image, *spec.args, "--predictor_host", predictor_host)
    return RunningContainer(engine, name, started, workdir / f"{name}.log")
