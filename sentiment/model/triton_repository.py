"""Write the Triton model repository: numbered versions of one model, three configurations.

Layout (one model directory, one ONNX file, two configurations):

    <repository>/sentiment/config.pbtxt          onnxruntime backend: the cluster (KServe Triton runtime)
    <repository>/sentiment/configs/local.pbtxt   Python backend: the Triton binary of nvidia-pytriton,
                                                 selected with `tritonserver --model-config-name=local`
    <repository>/sentiment/configs/gpu.pbtxt     onnxruntime on a GPU with the TensorRT accelerator in
                                                 fp16 (the gpu overlay, `--model-config-name=gpu`; needs
                                                 the fp32 export: TensorRT cannot run dynamic int8)
    <repository>/sentiment/<N>/model.onnx        version N of the model
    <repository>/sentiment/<N>/model.py          the Python-backend model (runs model.onnx with ORT)
    <repository>/sentiment/<N>/bundle/           the transformer's half of version N (tokenizer, labels,
                                                 fingerprint, version)
    <repository>/sentiment/repository.json       what the configurations are written from: the shared
                                                 spec and the versions Triton serves

The configurations name the versions Triton serves (`version_policy: { specific: ... }`): one in
steady state, two while a rollout moves the transformers from one to the other. Each served
version's fingerprint is a parameter `fingerprint_v<N>`, which a transformer pinned to version N
checks against its bundle.

Triton ignores non-numeric folders inside a model directory, so the bundle can travel with the
model and one `storageUri` serves both the predictor and the transformer.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from transformer.bundle import ModelBundle

MODEL_NAME = "sentiment"
OUTPUT_NAME = "logits"  # the one output tensor: [batch, num_labels] FP32
FIRST_VERSION = "1"
STATE_FILE = "repository.json"
LOCAL_CONFIG_NAME = "local"
GPU_CONFIG_NAME = "gpu"
PYTHON_BACKEND_SOURCE = Path(__file__).with_name("triton_python_model.py")


@dataclass(frozen=True)
class TritonModelSpec:
    """What both configurations share; every field is a knob of the Triton deployment."""

    input_names: tuple[str, ...]
    num_labels: int
    fingerprints: dict[str, str]  # served version -> sha256 of its model.onnx (the version_policy)
    max_batch_size: int = 64
    max_queue_delay_us: int = 2000
    preferred_batch_sizes: tuple[int, ...] = ()
    # Two single-threaded instances beat one two-threaded instance on 2 cores (BENCHMARKS.md, levers):
    # two batches run in parallel and the Python backend's per-batch work overlaps the other's compute.
    instance_count: int = 2
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    warmup_sequence_length: int = 16
    max_sequence_length: int = 128
    extra_parameters: dict[str, str] = field(default_factory=dict)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _io_block(spec: TritonModelSpec) -> str:
    inputs = ",\n".join(
        f"  {{ name: {_quote(name)} data_type: TYPE_INT64 dims: [ -1 ] }}" for name in spec.input_names
    )
    return (
        f"input [\n{inputs}\n]\n"
        f"output [\n  {{ name: {_quote(OUTPUT_NAME)} data_type: TYPE_FP32 dims: [ {spec.num_labels} ] }}\n]\n"
    )


def _batching_block(spec: TritonModelSpec) -> str:
    preferred = ""
    if spec.preferred_batch_sizes:
        preferred = f"  preferred_batch_size: [ {', '.join(map(str, spec.preferred_batch_sizes))} ]\n"
    return (
        "dynamic_batching {\n"
        f"{preferred}"
        f"  max_queue_delay_microseconds: {spec.max_queue_delay_us}\n"
        "}\n"
        f"instance_group [ {{ count: {spec.instance_count} kind: KIND_CPU }} ]\n"
    )


def _parameters_block(parameters: dict[str, str]) -> str:
    lines = [
        f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}"
        for key, value in parameters.items()
    ]
    return "\n".join(lines) + "\n"


def _versions_block(spec: TritonModelSpec) -> str:
    versions = ", ".join(sorted(spec.fingerprints, key=int))
    return f"version_policy: {{ specific: {{ versions: [ {versions} ] }} }}\n"


def _fingerprints(spec: TritonModelSpec) -> dict[str, str]:
    return {f"fingerprint_v{version}": fingerprint for version, fingerprint in sorted(spec.fingerprints.items())}


def _warmup_block(spec: TritonModelSpec) -> str:
    inputs = "\n".join(
        f"    inputs {{ key: {_quote(name)} value: {{ data_type: TYPE_INT64 dims: [ {spec.warmup_sequence_length} ] "
        "zero_data: true } }"
        for name in spec.input_names
    )
    return f"model_warmup [\n  {{\n    name: \"zeros\"\n    batch_size: 1\n{inputs}\n  }}\n]\n"


def onnxruntime_config(spec: TritonModelSpec) -> str:
    """config.pbtxt for Triton's onnxruntime backend (the production Triton image)."""
    parameters = {
        **_fingerprints(spec),
        "intra_op_thread_count": str(spec.intra_op_threads),
        "inter_op_thread_count": str(spec.inter_op_threads),
        **spec.extra_parameters,
    }
    return (
        f"name: {_quote(MODEL_NAME)}\n"
        "backend: \"onnxruntime\"\n"
        f"max_batch_size: {spec.max_batch_size}\n"
        f"{_versions_block(spec)}{_io_block(spec)}{_batching_block(spec)}"
        "optimization { graph { level: 1 } }\n"
        f"{_parameters_block(parameters)}{_warmup_block(spec)}"
    )


def _tensorrt_profile(spec: TritonModelSpec, batch: int, length: int) -> str:
    return ",".join(f"{name}:{batch}x{length}" for name in spec.input_names)


def gpu_config(spec: TritonModelSpec) -> str:
    """configs/gpu.pbtxt: onnxruntime on one GPU, TensorRT execution accelerator in fp16.

    The optimisation profile spans batch 1..max_batch_size and 8..max length tokens; engines are
    cached under /tmp (an emptyDir in the pod) so a restart does not rebuild them from scratch.
    """
    accelerator = "\n".join([
        '      name : "tensorrt"',
        '      parameters { key: "precision_mode" value: "FP16" }',
        '      parameters { key: "max_workspace_size_bytes" value: "1073741824" }',
        '      parameters { key: "trt_engine_cache_enable" value: "1" }',
        '      parameters { key: "trt_engine_cache_path" value: "/tmp/trt-cache" }',
        f'      parameters {{ key: "trt_profile_min_shapes" value: "{_tensorrt_profile(spec, 1, 8)}" }}',
        f'      parameters {{ key: "trt_profile_opt_shapes" value: "{_tensorrt_profile(spec, 16, 32)}" }}',
        f'      parameters {{ key: "trt_profile_max_shapes" value: '
        f'"{_tensorrt_profile(spec, spec.max_batch_size, spec.max_sequence_length)}" }}',
    ])
    parameters = {**_fingerprints(spec), **spec.extra_parameters}
    return (
        f"name: {_quote(MODEL_NAME)}\n"
        "backend: \"onnxruntime\"\n"
        f"max_batch_size: {spec.max_batch_size}\n"
        f"{_versions_block(spec)}{_io_block(spec)}"
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {spec.max_queue_delay_us}\n"
        "}\n"
        "instance_group [ { count: 1 kind: KIND_GPU } ]\n"
        "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [ {\n"
        f"{accelerator}\n"
        "    } ]\n  }\n}\n"
        f"{_parameters_block(parameters)}{_warmup_block(spec)}"
    )


def python_backend_config(spec: TritonModelSpec) -> str:
    """configs/local.pbtxt: the same model through the Python backend (runs the ONNX file with ORT)."""
    parameters = {
        **_fingerprints(spec),
        "onnx_file": "model.onnx",
        "intra_op_thread_count": str(spec.intra_op_threads),
        "inter_op_thread_count": str(spec.inter_op_threads),
        **spec.extra_parameters,
    }
    return (
        f"name: {_quote(MODEL_NAME)}\n"
        "backend: \"python\"\n"
        f"max_batch_size: {spec.max_batch_size}\n"
        f"{_versions_block(spec)}{_io_block(spec)}{_batching_block(spec)}"
        f"{_parameters_block(parameters)}{_warmup_block(spec)}"
    )


def write_configs(model_dir: Path, spec: TritonModelSpec) -> None:
    """The three configurations and the state file, for the versions `spec` serves."""
    (model_dir / "configs").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(onnxruntime_config(spec))
    (model_dir / "configs" / f"{LOCAL_CONFIG_NAME}.pbtxt").write_text(python_backend_config(spec))
    (model_dir / "configs" / f"{GPU_CONFIG_NAME}.pbtxt").write_text(gpu_config(spec))
    state = asdict(spec) | {
        "input_names": list(spec.input_names),
        "preferred_batch_sizes": list(spec.preferred_batch_sizes),
    }
    (model_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def read_spec(repository: Path) -> TritonModelSpec:
    """The spec the repository's configurations were written from."""
    state = json.loads((Path(repository) / MODEL_NAME / STATE_FILE).read_text())
    return TritonModelSpec(**(state | {"input_names": tuple(state["input_names"]),
                                       "preferred_batch_sizes": tuple(state["preferred_batch_sizes"])}))


def write_version(repository: Path, version: str, onnx_file: Path) -> Path:
    """`<repository>/sentiment/<version>/` with the model and the Python-backend model; returns it."""
    version_dir = Path(repository) / MODEL_NAME / version
    version_dir.mkdir(parents=True, exist_ok=True)
    target = version_dir / "model.onnx"
    if onnx_file.resolve() != target.resolve():
        shutil.copyfile(onnx_file, target)
    shutil.copyfile(PYTHON_BACKEND_SOURCE, version_dir / "model.py")
    return version_dir


def write_repository(repository: Path, onnx_file: Path, spec: TritonModelSpec, version: str = FIRST_VERSION) -> Path:
    """Write version `version` of the model from `onnx_file` and the configurations serving `spec`'s
    versions; returns the model directory."""
    write_version(repository, version, onnx_file)
    model_dir = Path(repository) / MODEL_NAME
    write_configs(model_dir, spec)
    return model_dir


def versions(repository: Path) -> list[str]:
    """The version folders on disk, in order."""
    model_dir = Path(repository) / MODEL_NAME
    if not model_dir.is_dir():
        return []
    return sorted((p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=int)


def served_versions(repository: Path) -> list[str]:
    """The versions the configurations tell Triton to serve (the state file), in order."""
    try:
        return sorted(read_spec(repository).fingerprints, key=int)
    except FileNotFoundError:
        return []


def serving_version(repository: Path) -> str:
    """The version a transformer started now should serve: the newest one Triton serves."""
    served = served_versions(repository)
    return served[-1] if served else FIRST_VERSION


def bundle_dir(repository: Path, version: str | None = None) -> Path:
    """The transformer bundle of `version` (default: the serving version)."""
    return Path(repository) / MODEL_NAME / (version or serving_version(repository)) / "bundle"


def serve(repository: Path, served: list[str]) -> TritonModelSpec:
    """Rewrite the configurations so that Triton serves exactly `served` (each version's fingerprint
    read from its bundle); Triton picks this up on its next load of the model."""
    spec = read_spec(repository)
    fingerprints = {version: ModelBundle.load(bundle_dir(repository, version)).fingerprint for version in served}
    spec = replace(spec, fingerprints=fingerprints)
    write_configs(Path(repository) / MODEL_NAME, spec)
    return spec
