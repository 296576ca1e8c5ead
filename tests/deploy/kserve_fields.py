"""JSON schemas of the KServe fields our manifests use, closed everywhere.

Kubernetes prunes unknown fields of a custom resource without an error, so a misspelt or
misplaced field in an InferenceService (`storageURI`, `minReplicas` under `model`) would be
dropped silently. These schemas list only what we use, with `additionalProperties: false` on
every object: a field that is not here fails the test, and adding a new field to the manifests
means adding it here after checking KServe's CRD (serving.kserve.io_inferenceservices.yaml).
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
NONEMPTY: Schema = {"type": "string", "minLength": 1}
BOOL: Schema = {"type": "boolean"}
INT: Schema = {"type": "integer"}
POSITIVE: Schema = {"type": "integer", "minimum": 1}
PORT: Schema = {"type": "integer", "minimum": 1, "maximum": 65535}
QUANTITY: Schema = {"anyOf": [{"type": "integer"}, {"type": "number"},
                              {"type": "string", "pattern": r"^[0-9.]+([eE][0-9]+|[mkMGTPE]i?|[KMGTPE]i)?$"}]}


def closed(properties: Schema, required: tuple[str, ...] = ()) -> Schema:
    """An object with exactly these optional fields (and these required ones)."""
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


def array(items: Schema, min_items: int = 0, max_items: int | None = None) -> Schema:
    schema: Schema = {"type": "array", "items": items, "minItems": min_items}
    if max_items is not None:
        schema["maxItems"] = max_items
    return schema


def string_map() -> Schema:
    return {"type": "object", "additionalProperties": STRING}


LABEL_SELECTOR = closed({"matchLabels": string_map()}, ("matchLabels",))

RESOURCES = closed({
    side: {"type": "object", "additionalProperties": QUANTITY,
           "propertyNames": {"enum": ["cpu", "memory", "ephemeral-storage", "nvidia.com/gpu"]}}
    for side in ("requests", "limits")
}, ("requests", "limits"))

PROBE = closed({
    "httpGet": closed({"path": {"type": "string", "pattern": "^/"}, "port": PORT,
                       "scheme": {"enum": ["HTTP", "HTTPS"]}}, ("path", "port")),
    "exec": closed({"command": array(STRING, 1)}, ("command",)),
    "initialDelaySeconds": INT,
    "periodSeconds": POSITIVE,
    "timeoutSeconds": POSITIVE,
    "failureThreshold": POSITIVE,
    "successThreshold": POSITIVE,
})

SECCOMP = closed({"type": {"enum": ["RuntimeDefault", "Localhost"]}}, ("type",))

CONTAINER_SECURITY = closed({
    "runAsNonRoot": {"const": True},
    "runAsUser": POSITIVE,
    "runAsGroup": POSITIVE,
    "allowPrivilegeEscalation": {"const": False},
    "privileged": {"const": False},
    "readOnlyRootFilesystem": BOOL,
    "capabilities": closed({"drop": array(STRING, 1)}, ("drop",)),
    "seccompProfile": SECCOMP,
}, ("runAsNonRoot", "allowPrivilegeEscalation", "capabilities"))

POD_SECURITY = closed({
    "runAsNonRoot": {"const": True},
    "runAsUser": POSITIVE,
    "runAsGroup": POSITIVE,
    "fsGroup": POSITIVE,
    "seccompProfile": SECCOMP,
})

ENV = closed({
    "name": {"type": "string", "pattern": "^[A-Z_][A-Z0-9_]*$"},
    "value": STRING,
    "valueFrom": closed({
        "secretKeyRef": closed({"name": NONEMPTY, "key": NONEMPTY, "optional": BOOL}, ("name", "key")),
        "configMapKeyRef": closed({"name": NONEMPTY, "key": NONEMPTY, "optional": BOOL}, ("name", "key")),
        "fieldRef": closed({"fieldPath": NONEMPTY}, ("fieldPath",)),
    }),
}, ("name",))

CONTAINER_PORT = closed({"name": {"type": "string", "maxLength": 15}, "containerPort": PORT,
                         "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}, ("name", "containerPort"))

LIFECYCLE = closed({"preStop": closed({"exec": closed({"command": array(STRING, 1)}, ("command",))})})

VOLUME_MOUNT = closed({"name": NONEMPTY, "mountPath": {"type": "string", "pattern": "^/"}, "readOnly": BOOL},
                      ("name", "mountPath"))

# What a predictor model spec and a transformer container share (both are corev1.Container fields).
CONTAINER_FIELDS: Schema = {
    "args": array(STRING),
    "command": array(STRING),
    "env": array(ENV),
    "ports": array(CONTAINER_PORT),
    "resources": RESOURCES,
    "startupProbe": PROBE,
    "readinessProbe": PROBE,
    "livenessProbe": PROBE,
    "lifecycle": LIFECYCLE,
    "securityContext": CONTAINER_SECURITY,
    "volumeMounts": array(VOLUME_MOUNT),
    "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
}

CONTAINER = closed({"name": NONEMPTY, "image": NONEMPTY, **CONTAINER_FIELDS}, ("name", "image"))

METRIC_TARGET = closed({
    "type": {"enum": ["Utilization", "Value", "AverageValue"]},
    "averageUtilization": {"type": "integer", "minimum": 1, "maximum": 100},
    "value": QUANTITY,
    "averageValue": QUANTITY,
}, ("type",))

AUTOSCALING = closed({"metrics": array(closed({
    "type": {"enum": ["Resource", "External"]},
    "resource": closed({"name": {"enum": ["cpu", "memory"]}, "target": METRIC_TARGET}, ("name", "target")),
    "external": closed({
        "metric": closed({"backend": {"enum": ["prometheus", "graphite"]}, "serverAddress": NONEMPTY,
                          "query": NONEMPTY, "namespace": STRING}, ("backend", "query")),
        "target": METRIC_TARGET,
    }, ("metric", "target")),
}, ("type",)), 1)}, ("metrics",))

VOLUME = closed({
    "name": NONEMPTY,
    "emptyDir": closed({"sizeLimit": QUANTITY, "medium": {"enum": ["", "Memory"]}}),
    "secret": closed({
        "secretName": NONEMPTY, "optional": BOOL, "defaultMode": {"type": "integer", "minimum": 0, "maximum": 511},
        "items": array(closed({"key": NONEMPTY, "path": {"type": "string", "pattern": "^[^/]"},
                               "mode": {"type": "integer", "minimum": 0, "maximum": 511}}, ("key", "path"))),
    }, ("secretName",)),
}, ("name",))

# ComponentExtensionSpec and the PodSpec fields we use, shared by predictor and transformer.
COMPONENT_FIELDS: Schema = {
    "minReplicas": {"type": "integer", "minimum": 0},
    "maxReplicas": POSITIVE,
    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
    "scaleTarget": POSITIVE,
    "autoScaling": AUTOSCALING,
    "deploymentStrategy": closed({
        "type": {"enum": ["RollingUpdate", "Recreate"]},
        "rollingUpdate": closed({"maxSurge": {"type": ["integer", "string"]},
                                 "maxUnavailable": {"type": ["integer", "string"]}}),
    }, ("type",)),
    "annotations": string_map(),
    "labels": string_map(),
    "automountServiceAccountToken": BOOL,
    "terminationGracePeriodSeconds": INT,
    "securityContext": POD_SECURITY,
    "volumes": array(VOLUME),
    "tolerations": array(closed({
        "key": NONEMPTY, "operator": {"enum": ["Exists", "Equal"]}, "value": STRING,
        "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
    }, ("key", "operator"))),
    "topologySpreadConstraints": array(closed({
        "maxSkew": POSITIVE, "topologyKey": NONEMPTY,
        "whenUnsatisfiable": {"enum": ["DoNotSchedule", "ScheduleAnyway"]},
        "labelSelector": LABEL_SELECTOR,
    }, ("maxSkew", "topologyKey", "whenUnsatisfiable", "labelSelector"))),
    "nodeSelector": string_map(),
    "serviceAccountName": NONEMPTY,
}

MODEL = closed({
    "modelFormat": closed({"name": NONEMPTY, "version": STRING}, ("name",)),
    "runtime": NONEMPTY,
    "protocolVersion": {"enum": ["v1", "v2", "grpc-v2"]},
    "storageUri": {"type": "string", "pattern": r"^(s3|gs|pvc|oci|hf|https?)://[^/]+(/.*)?$"},
    **CONTAINER_FIELDS,
}, ("modelFormat", "storageUri"))

METADATA = closed({
    "name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$"},
    "namespace": NONEMPTY,
    "labels": string_map(),
    "annotations": {
        "type": "object",
        "additionalProperties": STRING,
        # A misspelt KServe annotation is ignored by the controller: only known ones, known values.
        "propertyNames": {"anyOf": [
            {"not": {"pattern": r"^serving\.kserve\.io/"}},
            {"enum": ["serving.kserve.io/deploymentMode", "serving.kserve.io/autoscalerClass"]},
        ]},
        "properties": {
            "serving.kserve.io/deploymentMode": {"enum": ["RawDeployment", "Standard"]},
            "serving.kserve.io/autoscalerClass": {"enum": ["hpa", "keda", "external", "none"]},
        },
    },
}, ("name",))

INFERENCESERVICE: Schema = closed({
    "apiVersion": {"const": "serving.kserve.io/v1beta1"},
    "kind": {"const": "InferenceService"},
    "metadata": METADATA,
    "spec": closed({
        "predictor": closed({**COMPONENT_FIELDS, "model": MODEL}, ("model",)),
        "transformer": closed({**COMPONENT_FIELDS, "containers": array(CONTAINER, 1, 1)}, ("containers",)),
    }, ("predictor",)),
}, ("apiVersion", "kind", "metadata", "spec"))

SERVINGRUNTIME: Schema = closed({
    "apiVersion": {"const": "serving.kserve.io/v1alpha1"},
    "kind": {"const": "ServingRuntime"},
    "metadata": METADATA,
    "spec": closed({
        "supportedModelFormats": array(closed({"name": NONEMPTY, "version": STRING, "autoSelect": BOOL,
                                               "priority": POSITIVE}, ("name",)), 1),
        "protocolVersions": array({"enum": ["v1", "v2", "grpc-v2"]}, 1),
        "annotations": string_map(),
        "containers": array(CONTAINER, 1, 1),
    }, ("supportedModelFormats", "containers")),
}, ("apiVersion", "kind", "metadata", "spec"))

SCHEMAS = {"InferenceService": INFERENCESERVICE, "ServingRuntime": SERVINGRUNTIME}
