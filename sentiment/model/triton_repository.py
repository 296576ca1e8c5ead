"""Write the Triton model repository for one exported ONNX model.

Layout (one model directory, one ONNX file, two configurations):

    <repository>/sentiment/config.pbtxt          onnxruntime backend: the cluster (KServe Triton runtime)
    <repository>/sentiment/configs/local.pbtxt   Python backend: the Triton binary of nvidia-pytriton,
                                                 selected with `tritonserver --model-config-name=local`
    <repository>/sentiment/configs/gpu.pbtxt     onnxruntime on a GPU with the TensorRT accelerator in
                                                 fp16 (the gpu overlay, `--model-config-name=gpu`; needs
                                                 the fp32 export: TensorRT cannot run dynamic int8)
    <repository>/sentiment/1/model.onnx          the model
    <repository>/sentiment/1/model.py            the Python-backend model (runs model.onnx with ORT)
    <repository>/sentiment/bundle/               the transformer's half (tokenizer, labels, fingerprint)

Triton ignores non-numeric folders inside a model directory, so the bundle can travel with the
model and one `storageUri` serves both the predictor and the transformer.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

MODEL_NAME = "sentiment"
OUTPUT_NAME = "logits"  # the one output tensor: [batch, num_labels] FP32
VERSION = "1"
LOCAL_CONFIG_NAME = "local"
GPU_CONFIG_NAME = "gpu"
PYTHON_BACKEND_SOURCE = Path(__file__).with_name("triton_python_model.py")


@dataclass(frozen=True)
class TritonModelSpec:
    """What both configurations share; every field is a knob of the Triton deployment."""

    input_names: tuple[str, ...]
    num_labels: int
    fingerprint: str
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
        "fingerprint": spec.fingerprint,
        "intra_op_thread_count": str(spec.intra_op_threads),
        "inter_op_thread_count": str(spec.inter_op_threads),
        **spec.extra_parameters,
    }
    return (
        f"name: {_quote(MODEL_NAME)}\n"
        "backend: \"onnxruntime\"\n"
        f"max_batch_size: {spec.max_batch_size}\n"
        f"{_io_block(spec)}{_batching_block(spec)}"
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
    parameters = {"fingerprint": spec.fingerprint, **spec.extra_parameters}
    return (
        f"name: {_quote(MODEL_NAME)}\n"
        "backend: \"onnxruntime\"\n"
        f"max_batch_size: {spec.max_batch_size}\n"
        f"{_io_block(spec)}"
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
        "fingerprint": spec.fingerprint,
        "onnx_file": "model.onnx",
        "intra_op_thread_count": str(spec.intra_op_threads),
        "inter_op_thread_count": str(spec.inter_op_threads),
        **spec.extra_parameters,
    }
    return (
        f"name: {_quote(MODEL_NAME)}\n"
        "backend: \"python\"\n"
        f"max_batch_size: {spec.max_batch_size}\n"
        f"{_io_block(spec)}{_batching_block(spec)}"
        f"{_parameters_block(parameters)}{_warmup_block(spec)}"
    )


def write_repository(repository: Path, onnx_file: Path, spec: TritonModelSpec) -> Path:
    """Write (or overwrite) `<repository>/sentiment` from `onnx_file`; returns the model directory."""
    model_dir = repository / MODEL_NAME
    version_dir = model_dir / VERSION
    (model_dir / "configs").mkdir(parents=True, exist_ok=True)
    version_dir.mkdir(parents=True, exist_ok=True)
    target = version_dir / "model.onnx"
    if onnx_file.resolve() != target.resolve():
        shutil.copyfile(onnx_file, target)
    shutil.copyfile(PYTHON_BACKEND_SOURCE, version_dir / "model.py")
    (model_dir / "config.pbtxt").write_text(onnxruntime_config(spec))
    (model_dir / "configs" / f"{LOCAL_CONFIG_NAME}.pbtxt").write_text(python_backend_config(spec))
    (model_dir / "configs" / f"{GPU_CONFIG_NAME}.pbtxt").write_text(gpu_config(spec))
    return model_dir
