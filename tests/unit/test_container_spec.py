"""The pod spec the image tests start the container from: env as the kubelet makes it, volumes, probes."""

import base64

import pytest

from tests.support.container import ContainerSpec, quantity_bytes


def documents(env: list[dict], bundle: str = "/mnt/models/sentiment/1/bundle") -> list[dict]:
    container = {
        "name": "kserve-container", "args": ["--model_name=sentiment"],
        "env": [*env, {"name": "MODEL_BUNDLE", "value": bundle}],
        "ports": [{"name": "http", "containerPort": 8080}, {"name": "grpc", "containerPort": 8081}],
        "securityContext": {"readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
                            "allowPrivilegeEscalation": False},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "readinessProbe": {"httpGet": {"path": "/project/health", "port": 8080}, "timeoutSeconds": 2},
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
    }
    pod = {"securityContext": {"runAsUser": 10001, "runAsGroup": 10001}, "terminationGracePeriodSeconds": 30,
           "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}], "containers": [container]}
    secret = {"kind": "Secret", "metadata": {"name": "redis-auth-abc"},
              "data": {"password": base64.b64encode(b"s3cret").decode()}}
    return [secret, {"kind": "InferenceService", "spec": {"transformer": pod}}]


def test_env_resolves_secrets_expands_earlier_entries_and_maps_cluster_addresses():
    spec = ContainerSpec.from_documents(documents([
        {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "redis-auth-abc", "key": "password"}}},
        {"name": "REDIS_URL", "value": "redis://:$(REDIS_PASSWORD)@redis:6379/0"},
        {"name": "LATER_REFERENCE", "value": "$(NOT_YET)"},
        {"name": "NOT_YET", "value": "x"},
    ]))
    environment = spec.environment({"redis:6379": "127.0.0.1:16379"})
    assert environment["REDIS_PASSWORD"] == "s3cret"
    assert environment["REDIS_URL"] == "redis://:s3cret@127.0.0.1:16379/0"
    assert environment["LATER_REFERENCE"] == "$(NOT_YET)"  # the kubelet expands only earlier entries
    assert spec.referenced_names() == {"REDIS_PASSWORD", "NOT_YET"}


def test_pod_and_container_security_volumes_and_probes():
    spec = ContainerSpec.from_documents(documents([]))
    assert (spec.run_as_user, spec.run_as_group, spec.read_only_root) == (10001, 10001, True)
    assert spec.drop_capabilities == ("ALL",) and not spec.allow_privilege_escalation
    assert spec.tmpfs == {"/tmp": 64 * 2**20}
    assert spec.ports == {"http": 8080, "grpc": 8081}
    (probe,) = spec.probes
    assert (probe.kind, probe.path, probe.port, probe.timeout_s) == ("readiness", "/project/health", 8080, 2.0)
    assert spec.pre_stop == ("sleep", "5") and spec.grace_period_s == 30
    assert spec.model_mount() == "/mnt/models"


def test_a_bundle_outside_the_storage_initializers_folder_is_refused():
    with pytest.raises(AssertionError, match="/mnt/models"):
        ContainerSpec.from_documents(documents([], bundle="/models/sentiment/1/bundle")).model_mount()


@pytest.mark.parametrize("quantity, expected", [("64Mi", 64 * 2**20), ("1Gi", 2**30), ("500M", 500 * 10**6),
                                                ("1024", 1024)])
def test_quantities(quantity, expected):
    assert quantity_bytes(quantity) == expected
