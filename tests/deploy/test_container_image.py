"""The transformer image, built by `make image` and started the way the rendered prod InferenceService
starts its container (args, env with the Secret resolved, user, read-only root with the /tmp
emptyDir, dropped capabilities, the model repository at /mnt/models), on the host network against
the local Triton and a password-protected redis-server. What a pod would see, short of a cluster:
probes, answers on every transport, faults, SIGTERM, and the image's own contents.

`make image-test` runs this module alone; `make test` runs it too. No container builder or engine
is a failure that says what to install, never a skip."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from sentiment.paths import REPO_ROOT
from sentiment.stack.processes import ManagedProcess, free_port, port_is_free
from sentiment.stack.redis_server import redis_process
from tests.conftest import TransformerServer, TritonServer, wait_until
from tests.support.load import closed_loop_clients
from tests.deploy.test_manifests import render
from tests.support.container import (
    BUILD_SCRIPT,
    IMAGE_REF_FILE,
    ContainerEngine,
    ContainerSpec,
    RunningContainer,
    start_container,
)

pytestmark = [pytest.mark.slow, pytest.mark.image, pytest.mark.usefixtures("require_redis_server")]

OVERRIDES_FILE = REPO_ROOT / "inferenceservice" / "deliberate-overrides.yaml"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-serving-package.sh"
GRPC_SCRIPT = REPO_ROOT / "tests" / "support_grpc_client.py"
SIZE_BUDGET_MB = 350
# Env names a manifest may set that the KServe platform reads, not the transformer.
PLATFORM_ENV = {
    "STORAGE_URI": "KServe's controller starts its storage initializer from it (model repository -> /mnt/models)",
}


# ---- the manifest, checked against the code (no image needed) -----------------------------------------
@pytest.fixture(scope="module")
def spec() -> ContainerSpec:
    return ContainerSpec.from_documents(render("prod"))


def _flag_name(arg: str) -> str:
    return arg.split("=", 1)[0]


def test_every_manifest_flag_and_env_name_is_read_by_the_code(spec):
    from transformer.settings import build_parser, environment_variables

    options = build_parser()._option_string_actions  # exact names: argparse would accept abbreviations
    unknown_flags = [arg for arg in spec.args if arg.startswith("--") and _flag_name(arg) not in options]
    read = environment_variables()
    unread = [entry["name"] for entry in spec.env
              if entry["name"] not in read and entry["name"] not in PLATFORM_ENV
              and entry["name"] not in spec.referenced_names() and not entry["name"].startswith("OTEL_")]
    assert not unknown_flags, f"flags the transformer does not take: {unknown_flags}"
    assert not unread, f"env names nothing reads (not the transformer, not KServe): {unread}"
    # and the flags parse as the controller passes them (with the --predictor_host it appends)
    build_parser().parse_args([*spec.args, "--predictor_host", "sentiment-predictor.sentiment"])


def manifest_overrides(spec: ContainerSpec) -> dict[str, tuple[object, object]]:
    """Every setting or KServe flag whose value the manifest changes: name -> (default, manifest value)."""
    from transformer.settings import build_parser, settings_from

    parser = build_parser()
    default_args, manifest_args = parser.parse_args([]), parser.parse_args(list(spec.args))
    environment = {k: v for k, v in spec.environment({}).items() if k not in PLATFORM_ENV}
    defaults, configured = settings_from(default_args, {}), settings_from(manifest_args, environment)
    changed = {name: (getattr(defaults, name), getattr(configured, name)) for name in type(defaults).model_fields
               if getattr(defaults, name) != getattr(configured, name)}
    changed |= {name: (getattr(default_args, name), value) for name, value in vars(manifest_args).items()
                if name not in type(defaults).model_fields and getattr(default_args, name) != value}
    return changed


def test_manifest_values_that_differ_from_the_product_defaults_are_deliberate(spec):
    """A default a user reads in the README (50,000 characters per text, ...) holds in the cluster too,
    unless inferenceservice/deliberate-overrides.yaml says why not."""
    reviewed = yaml.safe_load(OVERRIDES_FILE.read_text())
    overrides = manifest_overrides(spec)
    undeclared = {name: values for name, values in overrides.items() if name not in reviewed}
    stale = sorted(set(reviewed) - set(overrides))
    assert not undeclared, ("the prod manifest overrides product defaults without a reason in "
                            f"{OVERRIDES_FILE.name} (name: (default, manifest)): {undeclared}")
    assert not stale, f"{OVERRIDES_FILE.name} lists settings the manifest no longer overrides: {stale}"
    assert all(isinstance(reason, str) and len(reason) > 20 for reason in reviewed.values())


# ---- the image ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def image() -> str:
    """`make image` (cached layers make a rebuild quick); fails with the builder's message."""
    started = time.monotonic()
    result = subprocess.run(["sh", str(BUILD_SCRIPT)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        pytest.fail(f"make image failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    print(f"\n[image] make image: {time.monotonic() - started:.0f} s")
    return IMAGE_REF_FILE.read_text().strip()


@pytest.fixture(scope="session")
def engine() -> ContainerEngine:
    try:
        return ContainerEngine.find()
    except RuntimeError as error:
        pytest.fail(str(error))


def in_image(engine: ContainerEngine, image: str, script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -c script` in a throwaway container of the image (its own user, no network needed)."""
    return engine.run("run", "--rm", "--network", "none", *engine.limits(), "--entrypoint", "python", image,
                      "-c", script, timeout=timeout, check=False)


def test_the_image_is_within_its_size_budget(engine, image):
    size = int(engine.run("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
    biggest = in_image(engine, image, (
        "import os, sysconfig\n"
        "site = sysconfig.get_paths()['purelib']\n"
        "def size(p): return os.path.getsize(p) if os.path.isfile(p) else "
        "sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(p) for f in fs)\n"
        "sizes = sorted(((size(os.path.join(site, e)), e) for e in os.listdir(site) "
        "if not e.endswith('-info')), reverse=True)\n"
        "print('\\n'.join(f'{s / 1e6:6.1f} MB {e}' for s, e in sizes[:10]))"))
    print(f"\n[image] {image}: {size / 1e6:.0f} MB; biggest packages:\n{biggest.stdout}")
    assert size <= SIZE_BUDGET_MB * 1e6, f"{size / 1e6:.0f} MB > budget {SIZE_BUDGET_MB} MB"


def test_the_image_holds_no_pip_no_build_settings_and_not_the_build_tools(engine, image):
    """No pip or wheels to make one; none of the build-time index or CA settings in the image's
    environment, history or files; no `sentiment` package, no torch."""
    config = json.loads(engine.run("image", "inspect", image).stdout)[0]
    environment = config.get("Config", {}).get("Env", []) or config.get("ContainerConfig", {}).get("Env", [])
    history = engine.run("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert not [e for e in environment if e.startswith(("PIP_", "INDEX_URL", "EXTRA_INDEX_URL"))], environment
    assert "pip-ca" not in history and "PIP_CERT" not in history and "INDEX_URL" not in history, history
    result = in_image(engine, image, (
        "import importlib.util as u, glob, json\n"
        "print(json.dumps([m for m in ('pip', 'setuptools', 'wheel', 'sentiment', 'torch', 'transformers') "
        "if u.find_spec(m)]))\n"
        "print(json.dumps(sorted(glob.glob('/usr/**/*.whl', recursive=True) + "
        "glob.glob('/opt/**/*.whl', recursive=True)"
        " + glob.glob('/opt/venv/bin/pip*') + glob.glob('/run/secrets/*') + glob.glob('/etc/pip.conf')"
        " + glob.glob('/etc/xdg/pip/*') + glob.glob('/opt/venv/pip.conf') + glob.glob('/opt/venv/*requirements*'))))"))
    assert result.returncode == 0, result.stderr
    modules, files = (json.loads(line) for line in result.stdout.splitlines())
    assert modules == [] and files == [], (modules, files)


# ---- the import closure: measured on the local transformer, imported in the image -------------------------
def never_imported_modules() -> set[str]:
    """The modules of the kserve dependencies the install script leaves out of the image (from the
    development environment, where they are installed)."""
    import importlib.metadata as metadata

    listed = INSTALL_SCRIPT.read_text().split('NEVER_IMPORTED="', 1)[1].split('"', 1)[0].split()
    modules = set()
    for name in listed:
        try:
            files = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError:
            continue
        for file in files:
            if file.suffix in (".py", ".so") and ".dist-info" not in str(file) and not str(file).startswith(".."):
                parts = list(file.with_suffix("").parts)
                parts[-1] = parts[-1].split(".")[0]
                modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


@pytest.fixture(scope="module")
def import_closure(default_build, logs_dir, redis) -> list[str]:
    """Every module the transformer loads (PYTHONPROFILEIMPORTTIME) while it starts and serves every
    transport, its cache and its metrics, in the full development environment."""
    triton = TritonServer(default_build.repository, logs_dir / "closure-triton").start()
    modules: set[str] = set()
    try:
        for protocol in ("grpc-v2", "v2"):  # both predictor protocols the transformer supports
            server = TransformerServer(triton, logs_dir, protocol=protocol, extra_args=["--redis_url", redis["url"]],
                                       env={"PYTHONPROFILEIMPORTTIME": "1"})
            try:
                server.start()
                exercise_every_transport(server.url, server.grpc_port, [f"closure {time.time_ns()}", "a fine film"])
                httpx.get(server.url + "/metrics", timeout=10).raise_for_status()
            finally:
                server.stop()
            lines = (logs_dir / f"transformer-{server.port}.log").read_text().splitlines()
            modules |= {line.rsplit("|", 1)[1].strip() for line in lines
                        if line.startswith("import time:") and "|" in line}
    finally:
        triton.stop()
    return sorted(set(modules) - {"imported package"})


# Imports the modules of a JSON list on stdin; prints what failed and which installed distributions
# no module came from. Run here (the development environment) and in the image.
IMPORT_CHECK = """
import importlib, importlib.metadata as m, json, sys
closure = json.load(sys.stdin)
tops = m.packages_distributions()
failed = {}
for name in closure:
    top = name.split('.')[0]
    if top not in tops and top not in sys.stdlib_module_names and top != 'transformer':
        continue
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        failed[name] = {'missing': error.name, 'error': repr(error)}
    except Exception as error:
        failed[name] = {'missing': None, 'error': repr(error)}
loaded = {d for name in sys.modules for d in tops.get(name.split('.')[0], [])}
unloaded = sorted({d.metadata['Name'] for d in m.distributions()} - loaded)
print(json.dumps({'failed': failed, 'installed': sorted(tops), 'unloaded': unloaded}))
"""


def test_every_module_the_transformer_loads_imports_in_the_image(engine, image, import_closure, tmp_path):
    """What the image leaves out (uninstalled kserve dependencies, pruned package parts) is never loaded;
    and what it keeps is loaded (lean: no distribution the transformer never imports). The profile also
    names imports that were tried and failed (optional ones, other platforms'): those that fail here
    too are not required of the image."""
    here = subprocess.run([sys.executable, "-c", IMPORT_CHECK], input=json.dumps(import_closure), capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert here.returncode == 0, here.stderr[-3000:]
    loaded = sorted(set(import_closure) - set(json.loads(here.stdout)["failed"]))
    assert "transformer.server" in loaded and "kserve" in loaded and len(loaded) > 500
    closure_file = tmp_path / "import-closure.json"
    closure_file.write_text(json.dumps(loaded))
    closure_file.chmod(0o644)
    result = engine.run("run", "--rm", "--network", "none", *engine.limits(), "-v", f"{closure_file}:/closure.json:ro",
                        "--entrypoint", "sh", image, "-c", 'python -c "$0" < /closure.json', IMPORT_CHECK,
                        timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    left_out = never_imported_modules()
    # An import that fails for want of a package the serving set never installs (nothing requires it,
    # the image does not leave it out) is optional: e.g. httpx's CLI, tried when pygments is there.
    optional = {name for name, failure in outcome["failed"].items() if failure["missing"]
                and failure["missing"].split(".")[0] not in outcome["installed"]
                and not any(failure["missing"] == m or m.startswith(failure["missing"] + ".") for m in left_out)}
    # The modules of the left-out distributions are absent by design; a module that needs one fails itself.
    failed = {name: failure["error"] for name, failure in outcome["failed"].items()
              if name not in optional and name not in left_out}
    assert not failed, failed
    probed = sorted(name for name in outcome["failed"] if name in left_out)
    # tzdata: data only (pandas reads it through zoneinfo when a time zone is asked for)
    assert set(outcome["unloaded"]) <= {"tzdata"}, f"in the image, never imported: {outcome['unloaded']}"
    print(f"\n[image] import closure: {len(loaded)} modules; all import in the image but the optional "
          f"{sorted(optional)} and the left-out {probed}")


# ---- the running container against the local stack -------------------------------------------------------
@pytest.fixture(scope="module")
def redis(logs_dir, spec) -> dict:
    """redis-server with the password of the rendered redis-auth Secret, as the cluster's Redis has."""
    (password,) = {value for secret in spec.secrets.values() for key, value in secret.items() if key == "password"}
    port = free_port()
    state = {"port": port, "password": password, "url": f"redis://:{password}@127.0.0.1:{port}/0"}

    def start() -> ManagedProcess:
        state["process"] = redis_process(port, logs_dir / "image-redis", logs_dir / "image-redis.log",
                                         password=password).start().wait_ready()
        return state["process"]

    state["start"] = start
    start()
    yield state
    state["process"].stop()


@pytest.fixture(scope="module")
def triton(default_build, logs_dir):
    server = TritonServer(default_build.repository, logs_dir / "image-triton").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reference(triton, logs_dir):
    """The local stack's transformer (in-process cache: its answers are computed, never read back)."""
    server = TransformerServer(triton, logs_dir).start()
    yield server
    server.stop()


def manifest_ports_free(spec: ContainerSpec) -> None:
    busy = [port for port in spec.ports.values() if not port_is_free(port)]
    if busy:
        pytest.fail(f"ports {busy} are in use here: the container takes the manifest's ports on the host network "
                    "(stop what listens there)")


def run_transformer_container(engine, image, spec, triton, redis, default_build, tmp_dir: Path,
                              name: str) -> RunningContainer:
    manifest_ports_free(spec)
    environment = spec.environment({"redis:6379": f"127.0.0.1:{redis['port']}"})
    return start_container(engine, image, spec, environment, default_build.repository,
                           predictor_host=triton.grpc_address, name=name, workdir=tmp_dir)


def wait_started(container: RunningContainer, spec: ContainerSpec) -> float:
    """Seconds from `run` until the startup probe passes, within its periodSeconds x failureThreshold."""
    (startup,) = [p for p in spec.probes if p.kind == "startup"]
    budget = startup.period_s * startup.failure_threshold
    url = f"http://127.0.0.1:{startup.port}{startup.path}"
    while time.monotonic() - container.started < budget:
        if not container.running():
            pytest.fail(f"the container exited during startup:\n{container.logs()[-3000:]}")
        try:
            if 200 <= httpx.get(url, timeout=startup.timeout_s).status_code < 400:
                return time.monotonic() - container.started
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"startup probe {startup.path} not passed within {budget} s:\n{container.logs()[-3000:]}")


@pytest.fixture(scope="module")
def container(engine, image, spec, triton, redis, default_build, tmp_path_factory):
    running = run_transformer_container(engine, image, spec, triton, redis, default_build,
                                        tmp_path_factory.mktemp("container"), f"sentiment-image-test-{os.getpid()}")
    try:
        wait_started(running, spec)
        wait_until(lambda: httpx.get(base_url(spec) + "/project/health", timeout=2).status_code == 200, 60, 0.2,
                   message="the container's readiness")
        yield running
    finally:
        running.remove()


def base_url(spec: ContainerSpec) -> str:
    return f"http://127.0.0.1:{spec.ports['http']}"


def probe(spec: ContainerSpec, kind: str) -> int:
    """One probe as the kubelet sends it: GET on the declared port and path, its timeout."""
    (declared,) = [p for p in spec.probes if p.kind == kind]
    return httpx.get(f"http://127.0.0.1:{declared.port}{declared.path}", timeout=declared.timeout_s).status_code


def test_each_probe_answers_as_the_kubelet_expects(spec, container):
    assert {p.kind for p in spec.probes} == {"startup", "readiness", "liveness"}
    assert all(p.port in spec.ports.values() for p in spec.probes)
    for kind in ("startup", "readiness", "liveness"):
        assert probe(spec, kind) == 200, kind


def grpc_infer(address: str, texts: list[str]) -> dict:
    call = [{"op": "infer", "texts": texts}]
    result = subprocess.run([sys.executable, str(GRPC_SCRIPT), address], input=json.dumps(call), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    (answer,) = json.loads(result.stdout)
    assert answer["ok"], answer
    return answer["outputs"]


def exercise_every_transport(url: str, grpc_port: int, texts: list[str]) -> dict:
    """bulk-predict, V1, V2 REST and V2 gRPC for `texts`: the answers, by transport."""
    with httpx.Client(base_url=url, timeout=30) as client:
        bulk = client.post("/project/bulk-predict", json={"text": texts})
        v1 = client.post("/v1/models/sentiment:predict", json={"instances": texts})
        v2 = client.post("/v2/models/sentiment/infer",
                         json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]})
    for response in (bulk, v1, v2):
        assert response.status_code == 200, response.text
    return {"bulk": bulk.json()["predictions"], "v1": v1.json()["predictions"],
            "v2": {o["name"]: o["data"] for o in v2.json()["outputs"]},
            "grpc": {name: output["data"] for name, output in grpc_infer(f"127.0.0.1:{grpc_port}", texts).items()}}


def assert_same(container_answer, local_answer, where: str = "") -> None:
    if isinstance(local_answer, dict):
        assert container_answer.keys() == local_answer.keys(), where
        for key in local_answer:
            assert_same(container_answer[key], local_answer[key], f"{where}.{key}")
    elif isinstance(local_answer, list):
        assert len(container_answer) == len(local_answer), where
        for index, (mine, theirs) in enumerate(zip(container_answer, local_answer)):
            assert_same(mine, theirs, f"{where}[{index}]")
    elif isinstance(local_answer, float):
        assert math.isclose(container_answer, local_answer, rel_tol=0, abs_tol=1e-6), \
            (where, container_answer, local_answer)
    else:
        assert container_answer == local_answer, where


def test_answers_through_the_container_equal_the_local_stack(spec, container, reference):
    nonce = time.time_ns()
    texts = ["a warm, funny and moving film", "dull, overlong and badly acted", f"it was fine {nonce}",
             "the plot is thin but the actors are a delight " * 40]
    answers = exercise_every_transport(base_url(spec), spec.ports["grpc"], texts)
    local = exercise_every_transport(reference.url, reference.grpc_port, texts)
    assert_same(answers, local)
    again = exercise_every_transport(base_url(spec), spec.ports["grpc"], texts)  # from the container's Redis cache now
    assert_same(again, local)


def test_the_process_runs_as_the_manifest_user_on_a_read_only_root(spec, container):
    with open(f"/proc/{container.host_pid()}/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    assert fields["Uid"].split()[:2] == [str(spec.run_as_user)] * 2
    assert fields["Gid"].split()[:2] == [str(spec.run_as_group)] * 2
    assert spec.read_only_root and "/tmp" in spec.tmpfs
    root = container.exec("python", "-c", "open('/opt/venv/written-at-run-time', 'w')")
    assert root.returncode != 0 and "Read-only file system" in root.stderr, root.stderr
    scratch = container.exec("python", "-c", "import tempfile; tempfile.NamedTemporaryFile(dir='/tmp').write(b'x')")
    assert scratch.returncode == 0, scratch.stderr
    capabilities = fields["CapEff"].strip()
    assert int(capabilities, 16) == 0, capabilities  # drop: ALL


def test_redis_killed_no_request_fails(spec, container, redis):
    stop, records = threading.Event(), []
    pool = closed_loop_clients(base_url(spec), stop, records)
    try:
        time.sleep(2)
        redis["process"].signal(signal.SIGKILL)
        killed = time.monotonic()
        time.sleep(4)
    finally:
        stop.set()
        pool.shutdown(wait=True)
        redis["start"]()
    after = [r for r in records if r[0] >= killed]
    print(f"\n[image] Redis SIGKILL: {len(records)} requests, {len(after)} after the kill, "
          f"statuses {sorted({r[2] for r in records}, key=str)}")
    assert after, "no request ran while Redis was down"
    assert all(r[2] == 200 for r in records), [r for r in records if r[2] != 200][:3]


def test_triton_frozen_answers_503_fast_as_the_local_stack_and_stays_live(spec, container, triton, reference):
    """SIGSTOP: readiness goes 503 within seconds and from then on requests get the 503 JSON at once,
    as from the local transformer; a request already waiting in the predictor gets it within the
    predictor timeout; liveness answers within its probe timeout throughout. SIGCONT: serving again."""
    predictor_timeout = float(spec.environment({}).get("PREDICTOR_TIMEOUT_SECONDS", 10))
    url = base_url(spec)

    def ask(base: str, label: str) -> tuple[int, float, dict]:
        started = time.monotonic()
        response = httpx.post(base + "/project/bulk-predict", json={"text": [f"frozen {label} {time.time_ns()}"]},
                              timeout=predictor_timeout + 10)
        return response.status_code, time.monotonic() - started, response.json()

    triton.process.signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(5) as pool:
            waiting = pool.submit(ask, url, "in the predictor")
            unready = wait_until(lambda: probe(spec, "readiness") == 503, predictor_timeout, 0.1,
                                 message="readiness 503 with Triton frozen")
            wait_until(lambda: reference.process.alive() and httpx.get(reference.url + "/project/health",
                                                                        timeout=2).status_code == 503,
                       predictor_timeout, 0.1, message="the local transformer's health 503")
            calls = [pool.submit(ask, base, label) for base, label in
                     ((url, "container-1"), (url, "container-2"),
                      (reference.url, "local-1"), (reference.url, "local-2"))]
            liveness = [probe(spec, "liveness") for _ in range(5)]
            answers = [call.result() for call in calls]
            held = waiting.result()
    finally:
        triton.process.signal(signal.SIGCONT)
    mine, local = answers[:2], answers[2:]
    wait_until(lambda: probe(spec, "readiness") == 200, 30, 0.2, message="ready again after SIGCONT")
    print(f"\n[image] Triton SIGSTOP: readiness 503 after {unready:.1f} s; then 503 in "
          f"{', '.join(f'{a[1] * 1000:.0f}' for a in mine)} ms (container), "
          f"{', '.join(f'{a[1] * 1000:.0f}' for a in local)} ms (local); the request already in the predictor: "
          f"{held[0]} after {held[1]:.1f} s")
    assert {a[0] for a in answers} == {503}, answers
    assert {a[2]["code"] for a in mine} == {a[2]["code"] for a in local} == {"predictor_unavailable"}, answers
    assert max(a[1] for a in answers) < 1.0  # fast: nobody waits for the frozen predictor
    assert held[0] == 503 and held[1] < predictor_timeout + 2, held  # bounded by PREDICTOR_TIMEOUT_SECONDS
    assert set(liveness) == {200}
    response = httpx.post(url + "/project/bulk-predict", json={"text": [f"thawed {time.time_ns()}"]}, timeout=30)
    assert response.status_code == 200, response.text


def test_sigterm_under_load_drains_and_exits_0_within_the_grace_period(engine, image, spec, triton, redis,
                                                                      default_build, tmp_path, container):
    """A second container, started cold (the time to readiness is the container's cold start), then the
    kubelet's stop: the preStop command, SIGTERM, the grace period. In-flight requests complete."""
    container.remove()  # the manifest's ports: one container at a time
    fresh = run_transformer_container(engine, image, spec, triton, redis, default_build, tmp_path,
                                      f"sentiment-image-sigterm-{os.getpid()}")
    try:
        started = wait_started(fresh, spec)
        ready = started + wait_until(lambda: probe(spec, "readiness") == 200, 60, 0.05, message="readiness")
        stop, records = threading.Event(), []
        pool = closed_loop_clients(base_url(spec), stop, records, workers=4, texts=32)
        time.sleep(3)
        stopping = time.monotonic()
        pre_stop = fresh.exec(*spec.pre_stop, timeout=spec.grace_period_s)
        assert pre_stop.returncode == 0, pre_stop.stderr
        fresh.signal("TERM")
        terminated = time.monotonic()
        code = fresh.wait(timeout=spec.grace_period_s)
        exited = time.monotonic()
        stop.set()
        pool.shutdown(wait=True)
    finally:
        fresh.remove()
    in_flight = [r for r in records if r[0] < terminated < r[0] + r[1]]
    before = [r for r in records if r[0] < terminated]
    print(f"\n[image] cold start (run -> startup probe) {started:.1f} s, to ready {ready:.1f} s; SIGTERM with "
          f"{len(in_flight)} requests in flight: exit {code} after {exited - terminated:.1f} s "
          f"(preStop included {exited - stopping:.1f} s of {spec.grace_period_s} s)")
    assert code == 0
    assert exited - stopping < spec.grace_period_s
    assert in_flight, "no request was in flight at SIGTERM"
    assert all(r[2] == 200 for r in in_flight), in_flight[:3]
    # before SIGTERM: answered (or shed at once with 503 overloaded: admission control, not the drain)
    assert all(r[2] == 200 or (r[2] == 503 and '"overloaded"' in r[3]) for r in before), \
        [r for r in before if r[2] != 200][:3]
    after = [r for r in records if r[0] > exited]
    assert all(r[2] is None and "Connect" in r[3] for r in after), after[:3]  # refused, not half-answered
