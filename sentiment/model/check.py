"""Consistency check of an exported model repository, with Triton's own config schema.

Parses both configurations with Triton's `model_config.proto` (from tritonclient) and compares
them with the ONNX graph and the transformer bundle: tensor names, dtypes, dims, batch size and
fingerprint. Run it before uploading a repository (`sentiment model check`).

tritonclient.grpc cannot share a process with kserve (duplicate protobuf symbols), so this module
is only used from the CLI process, never from the transformer.
"""

from __future__ import annotations

from pathlib import Path

from sentiment.model.triton_repository import GPU_CONFIG_NAME, LOCAL_CONFIG_NAME, MODEL_NAME, OUTPUT_NAME

_ONNX_TO_TRITON = {7: "TYPE_INT64", 6: "TYPE_INT32", 1: "TYPE_FP32", 10: "TYPE_FP16"}


def _parse_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _tensor_signature(config) -> dict[str, tuple[str, tuple[int, ...]]]:
    from tritonclient.grpc import model_config_pb2

    signature = {}
    for tensor in list(config.input) + list(config.output):
        signature[tensor.name] = (model_config_pb2.DataType.Name(tensor.data_type), tuple(tensor.dims))
    return signature


def _onnx_signature(onnx_file: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    signature = {}
    for value in list(graph.input) + list(graph.output):
        tensor_type = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
        signature[value.name] = (_ONNX_TO_TRITON.get(tensor_type.elem_type, str(tensor_type.elem_type)), dims)
    return signature


def _config_problems(configs) -> list[str]:
    """Each configuration on its own: name, backend, batching."""
    named = dict(configs)
    cluster, local, gpu = named["config.pbtxt"], named[f"configs/{LOCAL_CONFIG_NAME}.pbtxt"], named[
        f"configs/{GPU_CONFIG_NAME}.pbtxt"]
    problems = []
    if any(config.name != MODEL_NAME for _, config in configs):
        problems.append(f"model name must be {MODEL_NAME!r} in every config")
    if cluster.backend != "onnxruntime":
        problems.append(f"config.pbtxt backend is {cluster.backend!r}, expected 'onnxruntime'")
    if local.backend != "python":
        problems.append(f"configs/{LOCAL_CONFIG_NAME}.pbtxt backend is {local.backend!r}, expected 'python'")
    if gpu.backend != "onnxruntime" or not gpu.optimization.execution_accelerators.gpu_execution_accelerator:
        problems.append(f"configs/{GPU_CONFIG_NAME}.pbtxt must use onnxruntime with a GPU execution accelerator")
    if cluster.max_batch_size <= 0 or len({config.max_batch_size for _, config in configs}) != 1:
        problems.append("max_batch_size must be positive and equal in every config")
    for name, config in configs:
        if not config.HasField("dynamic_batching"):
            problems.append(f"{name} has no dynamic_batching")
    return problems


def _tensor_problems(configs, onnx_signature) -> list[str]:
    """Every configuration's tensors against the ONNX graph's."""
    problems = []
    for name, config in configs:
        triton_signature = _tensor_signature(config)
        if set(triton_signature) != set(onnx_signature):
            problems.append(
                f"{name} tensors {sorted(triton_signature)} differ from the ONNX graph's {sorted(onnx_signature)}"
            )
            continue
        for tensor, (dtype, dims) in triton_signature.items():
            onnx_dtype, onnx_dims = onnx_signature[tensor]
            if dtype != onnx_dtype:
                problems.append(f"{name}: {tensor} is {dtype}, the ONNX graph says {onnx_dtype}")
            # Triton dims exclude the batch dimension when max_batch_size > 0.
            if len(onnx_dims) != len(dims) + 1 or any(d != o for d, o in zip(dims, onnx_dims[1:]) if o != -1):
                problems.append(
                    f"{name}: {tensor} dims [batch]+{list(dims)} do not fit the ONNX shape {list(onnx_dims)}"
                )
    return problems


def _bundle_problems(version_dir: Path, fingerprint: str, onnx_signature, max_batch_size: int) -> list[str]:
    """The transformer's bundle of one version against the model it travels with."""
    from transformer.bundle import BundleError, ModelBundle

    try:
        bundle = ModelBundle.load(version_dir / "bundle")
    except BundleError as error:
        return [str(error)]
    problems = []
    if bundle.version != version_dir.name:
        problems.append(f"the bundle in version {version_dir.name} says version {bundle.version}")
    if bundle.fingerprint != fingerprint:
        problems.append(f"bundle fingerprint {bundle.fingerprint[:12]} != sha256 of model.onnx {fingerprint[:12]}")
    if set(bundle.input_names) != {n for n in onnx_signature if n != OUTPUT_NAME}:
        problems.append(f"bundle inputs {bundle.input_names} differ from the ONNX inputs")
    logits_dims = onnx_signature.get(OUTPUT_NAME, ("", ()))[1]
    if len(logits_dims) == 2 and logits_dims[1] not in (-1, len(bundle.labels)):
        problems.append(f"bundle has {len(bundle.labels)} labels, the model outputs {logits_dims[1]}")
    if bundle.max_batch_size != max_batch_size:
        problems.append("bundle max_batch_size differs from config.pbtxt")
    return problems + _lexical_problems(version_dir / "bundle" / bundle.tokenizer_file, bundle)


def _lexical_problems(tokenizer_file: Path, bundle) -> list[str]:
    """A lexical head beside the bundle's tokenizer: readable, combinable with this model, and over
    the ids this tokenizer gives."""
    from tokenizers import Tokenizer

    from transformer.core.lexical import LEXICAL_FILE, LexicalHead, unfit_for

    try:
        head = LexicalHead.beside(tokenizer_file)
    except ValueError as error:
        return [str(error)]
    if head is None:
        return []
    problems = []
    if not head.combines:
        problems.append(f"the bundle's {LEXICAL_FILE} has no combination with the network (the export fits one "
                        "on the dev split): the transformer would not apply it")
    refusal = unfit_for(bundle.score_function, len(bundle.labels))
    if refusal is not None:
        problems.append(f"the bundle's {LEXICAL_FILE}: {refusal}")
    vocabulary = Tokenizer.from_file(str(tokenizer_file)).get_vocab_size(with_added_tokens=True)
    if head.vocab_size < vocabulary:
        problems.append(f"the bundle's {LEXICAL_FILE} reads {head.vocab_size} token ids; "
                        f"its tokenizer has {vocabulary}")
    return problems


def check_repository(repository: Path) -> list[str]:
    """Return a list of problems (empty when the repository is consistent)."""
    model_dir = repository / MODEL_NAME
    names = ("config.pbtxt", f"configs/{LOCAL_CONFIG_NAME}.pbtxt", f"configs/{GPU_CONFIG_NAME}.pbtxt")
    missing = [f"{model_dir / name} is missing" for name in names if not (model_dir / name).is_file()]
    if missing:
        return missing
    configs = [(name, _parse_config(model_dir / name)) for name in names]
    problems = _config_problems(configs)
    served = _served_versions(configs)
    if not served:
        problems.append("the configurations serve no version (version_policy: specific: versions: [...])")
    for version in served:
        problems += _version_problems(model_dir / str(version), configs)
    return problems


def _served_versions(configs) -> list[int]:
    policies = {tuple(config.version_policy.specific.versions) for _name, config in configs}
    if len(policies) != 1:
        return []
    return list(policies.pop())


def _version_problems(version_dir: Path, configs) -> list[str]:
    """One served version: its files, the fingerprint every configuration declares for it, its bundle."""
    from sentiment.model.fingerprint import sha256_file

    onnx_file = version_dir / "model.onnx"
    missing = [f"{required} is missing" for required in (onnx_file, version_dir / "model.py") if not required.is_file()]
    if missing:
        return missing
    onnx_signature = _onnx_signature(onnx_file)
    problems = _tensor_problems(configs, onnx_signature)
    fingerprint = sha256_file(onnx_file)
    key = f"fingerprint_v{version_dir.name}"
    for name, config in configs:
        declared = config.parameters[key].string_value if key in config.parameters else ""
        if declared != fingerprint:
            problems.append(f"{name} {key} {declared[:12] or '(none)'} != sha256 of {version_dir.name}/model.onnx "
                            f"{fingerprint[:12]}")
    return problems + _bundle_problems(version_dir, fingerprint, onnx_signature, configs[0][1].max_batch_size)
