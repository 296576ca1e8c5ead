"""KServe V2 (Open Inference Protocol) for this model, in and out: REST JSON, REST with the binary
tensor extension, and gRPC `ModelInferRequest` / `ModelInferResponse`.

Strict and bounded: exactly one input `text` (BYTES, shape [n] or [n, 1]); every length prefix,
size parameter and UTF-8 sequence is checked before it is used, so a malformed body is a 422 that
says what is wrong, never an exception from deep inside a decoder. Requested outputs are honoured
and an unknown one is refused, the same on both transports.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import orjson

from transformer.core.prediction import Prediction
from transformer.core.requests import OPTION_NAMES, ClassifyOptions, ClassifyRequest, parse_options
from transformer.errors import InvalidRequest

TEXT_INPUT = "text"
PREDICTION_OUTPUTS = ("label", "score", "probabilities")
DETAIL_OUTPUTS = ("tokens", "windows", "truncated")
ALL_OUTPUTS = PREDICTION_OUTPUTS + DETAIL_OUTPUTS
HEADER_LENGTH = "inference-header-content-length"
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool = False


@dataclass(slots=True)
class V2Call:
    """A decoded V2 request: what to classify and how to answer."""

    request: ClassifyRequest
    request_id: str = ""
    outputs: list[RequestedOutput] = field(default_factory=list)  # empty: the defaults
    binary_outputs: bool = False  # REST `binary_data_output`, gRPC raw inputs


@dataclass(frozen=True, slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray


# ---- decoding ------------------------------------------------------------------------------------
def decode_bytes_elements(raw: bytes, count: int, where: str) -> list[str]:
    """A BYTES tensor in the binary format (4-byte little-endian length, then the bytes, per
    element), every length checked against what is left; elements must be UTF-8 text."""
    texts: list[str] = []
    offset, end = 0, len(raw)
    while offset < end:
        if end - offset < 4:
            raise InvalidRequest(f"{where}: {end - offset} stray bytes after element {len(texts)}; each element is "
                                 "a 4-byte little-endian length followed by that many bytes")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if length > end - offset:
            raise InvalidRequest(f"{where}[{len(texts)}] says {length} bytes but only {end - offset} follow")
        texts.append(_utf8(raw[offset:offset + length], f"{where}[{len(texts)}]", len(texts)))
        offset += length
    if len(texts) != count:
        raise InvalidRequest(f"{where} holds {len(texts)} elements but its shape says {count}")
    return texts


def _utf8(value: bytes, where: str, index: int) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidRequest(f"{where} is not valid UTF-8 (byte {error.start}); send text as UTF-8",
                             index=index) from None


def _count(shape: Any) -> int:
    """Elements of the `text` tensor: shape [n] or [n, 1]."""
    if (not isinstance(shape, (list, tuple)) or len(shape) not in (1, 2)
            or not all(type(dim) is int and dim >= 0 for dim in shape) or (len(shape) == 2 and shape[1] != 1)):
        raise InvalidRequest(f"input '{TEXT_INPUT}' must have shape [n] (or [n, 1]) with n >= 0, not {str(shape)[:60]}")
    return shape[0]


def _check_input(name: Any, datatype: Any, names: Sequence[Any]) -> None:
    if len(names) != 1 or name != TEXT_INPUT:
        shown = [str(n)[:40] for n in names[:5]]
        raise InvalidRequest(f"expected exactly one input named '{TEXT_INPUT}' (BYTES, shape [n]); got {shown}")
    if datatype != "BYTES":
        raise InvalidRequest(f"input '{TEXT_INPUT}' must have datatype BYTES, not {str(datatype)[:20]!r}")


def _requested(outputs: Iterable[tuple[Any, bool]]) -> list[RequestedOutput]:
    requested: list[RequestedOutput] = []
    for name, binary in outputs:
        if name not in ALL_OUTPUTS:
            raise InvalidRequest(
                f"unknown output {str(name)[:40]!r}: this model outputs {', '.join(PREDICTION_OUTPUTS)} "
                f"(and {', '.join(DETAIL_OUTPUTS)})"
            )
        if all(r.name != name for r in requested):
            requested.append(RequestedOutput(name, binary))
    return requested


def _json_strings(data: Any, count: int) -> list[str]:
    """JSON `data` of the text input: strings, flat or nested row-major."""
    if not isinstance(data, list):
        raise InvalidRequest(f"input '{TEXT_INPUT}' data must be a list of strings")
    flat = [item for row in data for item in (row if isinstance(row, list) else [row])]
    if len(flat) != count:
        raise InvalidRequest(f"input '{TEXT_INPUT}' has {len(flat)} elements but its shape says {count}")
    for index, item in enumerate(flat):
        if not isinstance(item, str):
            raise InvalidRequest(f"{TEXT_INPUT}[{index}] is {type(item).__name__}, expected a string", index=index)
    return flat


def decode_rest(body: bytes, header_length: str | None, default: ClassifyOptions) -> V2Call:
    """A V2 REST body: JSON, or with `Inference-Header-Content-Length` a JSON header followed by
    binary tensor data."""
    json_length = len(body)
    if header_length is not None:
        value = header_length.strip()
        if not (value.isascii() and value.isdigit()) or int(value) > len(body):
            raise InvalidRequest(f"Inference-Header-Content-Length must be the byte length of the JSON header "
                                 f"(0..{len(body)}), not {header_length[:20]!r}")
        json_length = int(value)
    try:
        document = orjson.loads(body[:json_length])
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"the inference request is not valid JSON ({error.msg} at byte {error.pos})") from None
    if not isinstance(document, dict):
        raise InvalidRequest('expected a JSON object {"inputs": [{"name": "text", "datatype": "BYTES", ...}]}')
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(item, dict) for item in inputs):
        raise InvalidRequest("'inputs' must be a list of tensor objects")
    _check_input(inputs[0].get("name") if inputs else None, inputs[0].get("datatype") if inputs else None,
                 [item.get("name") for item in inputs])
    tensor = inputs[0]
    count = _count(tensor.get("shape"))
    binary = body[json_length:]
    texts = _rest_texts(tensor, count, binary)
    parameters = _mapping(document.get("parameters"), "parameters")
    outputs = document.get("outputs")
    if outputs is not None and (not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs)):
        raise InvalidRequest("'outputs' must be a list of {\"name\": ...} objects")
    binary_default = parameters.get("binary_data_output", False) is True
    requested = _requested((o.get("name"), _mapping(o.get("parameters"), "outputs[].parameters").get(
        "binary_data", binary_default) is True) for o in outputs or [])
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidRequest("'id' must be a string")
    options = parse_options({k: parameters[k] for k in OPTION_NAMES if k in parameters}, default)
    return V2Call(ClassifyRequest(texts, options, TEXT_INPUT), request_id[:256], requested, binary_default)


def _rest_texts(tensor: dict, count: int, binary: bytes) -> list[str]:
    parameters = _mapping(tensor.get("parameters"), "inputs[0].parameters")
    if "data" in tensor:
        if binary:
            raise InvalidRequest(f"{len(binary)} bytes of binary data follow the JSON header, but input "
                                 f"'{TEXT_INPUT}' has JSON data")
        return _json_strings(tensor["data"], count)
    size = parameters.get("binary_data_size")
    if size is None:
        raise InvalidRequest(f"input '{TEXT_INPUT}' has neither 'data' nor parameters.binary_data_size")
    if type(size) is not int or size != len(binary):
        raise InvalidRequest(f"input '{TEXT_INPUT}' says binary_data_size {str(size)[:20]}, but {len(binary)} bytes "
                             "follow the JSON header")
    return decode_bytes_elements(binary, count, TEXT_INPUT)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{where}' must be an object")
    return value


def grpc_parameters(parameters) -> dict[str, Any]:
    """gRPC `InferParameter`s as plain values (bool, int or string, whichever is set)."""
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values


def decode_grpc(message, default: ClassifyOptions) -> V2Call:
    """A gRPC ModelInferRequest: text from `contents.bytes_contents` or from `raw_input_contents`."""
    inputs = message.inputs
    _check_input(inputs[0].name if inputs else None, inputs[0].datatype if inputs else None, [t.name for t in inputs])
    tensor = inputs[0]
    count = _count(list(tensor.shape))
    raw = message.raw_input_contents
    if raw:
        if len(raw) != 1:
            raise InvalidRequest(f"{len(raw)} raw_input_contents for 1 input")
        if len(tensor.contents.bytes_contents):
            raise InvalidRequest(f"input '{TEXT_INPUT}' has both contents and raw_input_contents; send one")
        texts = decode_bytes_elements(raw[0], count, TEXT_INPUT)
    else:
        values = tensor.contents.bytes_contents
        if len(values) != count:
            raise InvalidRequest(f"input '{TEXT_INPUT}' has {len(values)} elements but its shape says {count}")
        texts = [_utf8(value, f"{TEXT_INPUT}[{i}]", i) for i, value in enumerate(values)]
    parameters = grpc_parameters(message.parameters)
    requested = _requested((o.name, True) for o in message.outputs)
    options = parse_options({k: parameters[k] for k in OPTION_NAMES if k in parameters}, default)
    return V2Call(ClassifyRequest(texts, options, TEXT_INPUT), message.id[:256], requested, bool(raw))


# ---- encoding ------------------------------------------------------------------------------------
def output_tensors(call: V2Call, predictions: Sequence[Prediction], labels: Sequence[str],
                   details: Sequence[dict]) -> list[tuple[OutputTensor, bool]]:
    """The requested outputs (default: label, score, probabilities, plus the detail outputs when
    `details` was asked for), each with whether it goes in binary; `details`: one per prediction. With
    the `top_k` parameter, `label` and `score` are [n, k] (the best k per text, ranked; k clamped to the
    label count); with `raw_scores`, `score` and `probabilities` hold the model's raw logits."""
    options = call.request.options
    names = [r.name for r in call.outputs] or list(PREDICTION_OUTPUTS) + (
        list(DETAIL_OUTPUTS) if options.details else [])
    binary = {r.name: r.binary for r in call.outputs}
    count = len(predictions)
    probabilities = np.array([p.scores(options.raw_scores) for p in predictions],
                             dtype=np.float32).reshape(count, len(labels))
    if options.top_k is None:
        best = probabilities.argmax(axis=1)
        label = ("BYTES", [count], np.array([labels[i].encode() for i in best], dtype=object))
        score = ("FP32", [count], probabilities[np.arange(count), best])
    else:
        k = min(options.top_k, len(labels))
        ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        label = ("BYTES", [count, k], np.array([[labels[i].encode() for i in row] for row in ranked],
                                               dtype=object).reshape(count, k))
        score = ("FP32", [count, k], np.take_along_axis(probabilities, ranked, axis=1))
    arrays = {
        "label": label,
        "score": score,
        "probabilities": ("FP32", [count, len(labels)], probabilities),
        "tokens": ("INT32", [count], np.array([d["tokens"] for d in details], dtype=np.int32)),
        "windows": ("INT32", [count], np.array([d["windows"] for d in details], dtype=np.int32)),
        "truncated": ("BOOL", [count], np.array([d["truncated"] for d in details], dtype=bool)),
    }
    return [(OutputTensor(name, *arrays[name]), binary.get(name, call.binary_outputs)) for name in names]


def _raw(tensor: OutputTensor) -> bytes:
    if tensor.datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(value)) + value for value in tensor.array.reshape(-1))
    dtype = {"FP32": "<f4", "INT32": "<i4", "BOOL": "?"}[tensor.datatype]
    return np.ascontiguousarray(tensor.array, dtype=dtype).tobytes()


def _json_data(tensor: OutputTensor) -> list:
    flat = tensor.array.reshape(-1)
    if tensor.datatype == "BYTES":
        return [value.decode() for value in flat]
    if tensor.datatype == "FP32":
        return [float(value) if math.isfinite(value) else None for value in flat.tolist()]
    return flat.tolist()


def encode_rest(call: V2Call, tensors: list[tuple[OutputTensor, bool]], model_name: str,
                model_version: str) -> tuple[bytes, dict[str, str]]:
    """The V2 REST response body and its headers (binary outputs after the JSON header)."""
    outputs, binaries = [], []
    for tensor, binary in tensors:
        item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary:
            raw = _raw(tensor)
            item["parameters"] = {"binary_data_size": len(raw)}
            binaries.append(raw)
        else:
            item["data"] = _json_data(tensor)
        outputs.append(item)
    header = orjson.dumps({"id": call.request_id, "model_name": model_name, "model_version": model_version,
                           "outputs": outputs})
    if not binaries:
        return header, {"content-type": "application/json"}
    return header + b"".join(binaries), {"content-type": "application/octet-stream",
                                         HEADER_LENGTH: str(len(header))}


def encode_grpc(call: V2Call, tensors: list[tuple[OutputTensor, bool]], model_name: str, model_version: str):
    """A ModelInferResponse: raw_output_contents when the request sent raw inputs (KServe's and
    Triton's convention), typed contents otherwise."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=call.request_id)
    for tensor, _binary in tensors:
        output = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if call.binary_outputs:
            response.raw_output_contents.append(_raw(tensor))
        elif tensor.datatype == "BYTES":
            output.contents.bytes_contents.extend(tensor.array.reshape(-1).tolist())
        elif tensor.datatype == "FP32":
            output.contents.fp32_contents.extend(tensor.array.reshape(-1).tolist())
        elif tensor.datatype == "INT32":
            output.contents.int_contents.extend(tensor.array.reshape(-1).tolist())
        else:
            output.contents.bool_contents.extend(tensor.array.reshape(-1).tolist())
    return response
