"""Drive a KServe V2 gRPC server with tritonclient.grpc, in a process of its own.

tritonclient.grpc and kserve register the same protobuf symbols (`inference.ServerLiveRequest`), so
tests that import kserve run this script in a subprocess:

    python tests/support_grpc_client.py HOST:PORT < calls.json > results.json

`calls.json` is a list of calls; the answer is a list of results in the same order, as JSON on stdout.

    {"op": "infer", "texts": [...], "model_name": "sentiment", "model_version": "",
     "outputs": null | ["label", ...], "parameters": null | {...}, "headers": null | {metadata: value}}
        -> {"ok": true, "model_name", "model_version", "outputs": {name: {"datatype", "shape", "data"}}}
    {"op": "metadata" | "ready", "model_name": ..., "model_version": ...}
    {"op": "server_ready" | "server_live"}
    {"op": "unload" | "load", "model_name": ...}

A failed call gives {"ok": false, "status": "NOT_FOUND", "message": ..., "metadata": {trailing metadata}}.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from google.protobuf.json_format import MessageToDict
from tritonclient.utils import InferenceServerException


def _error(error: InferenceServerException) -> dict:
    # tritonclient raises its exception `from None`; the grpc.RpcError (with the trailing metadata)
    # is still its __context__.
    metadata = {}
    rpc_error = error.__context__
    if rpc_error is not None and hasattr(rpc_error, "trailing_metadata"):
        metadata = {key: value for key, value in (rpc_error.trailing_metadata() or ())}
    status = str(error.status() or "")
    return {"ok": False, "status": status.removeprefix("StatusCode."), "message": error.message(), "metadata": metadata}


def _jsonable(array: np.ndarray) -> list:
    if array.dtype == object:
        return [value.decode("utf-8") if isinstance(value, bytes) else value for value in array.reshape(-1)]
    return array.reshape(-1).tolist()


def _infer(client: grpcclient.InferenceServerClient, call: dict) -> dict:
    texts = call["texts"]
    tensor = grpcclient.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode("utf-8") for t in texts], dtype=object))
    outputs = None
    if call.get("outputs") is not None:
        outputs = [grpcclient.InferRequestedOutput(name) for name in call["outputs"]]
    result = client.infer(call.get("model_name", "sentiment"), [tensor], model_version=call.get("model_version", ""),
                          outputs=outputs, parameters=call.get("parameters"), client_timeout=30,
                          headers=call.get("headers"))
    response = result.get_response()
    return {
        "ok": True,
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": {output.name: {"datatype": output.datatype, "shape": list(output.shape),
                                  "data": _jsonable(result.as_numpy(output.name))} for output in response.outputs},
    }


def run(client: grpcclient.InferenceServerClient, call: dict) -> dict:
    op = call["op"]
    name, version = call.get("model_name", "sentiment"), call.get("model_version", "")
    try:
        if op == "infer":
            return _infer(client, call)
        if op == "metadata":
            return {"ok": True, "value": MessageToDict(client.get_model_metadata(name, version, client_timeout=10))}
        if op == "ready":
            return {"ok": True, "value": client.is_model_ready(name, version, client_timeout=10)}
        if op == "server_ready":
            return {"ok": True, "value": client.is_server_ready(client_timeout=10)}
        if op == "server_live":
            return {"ok": True, "value": client.is_server_live(client_timeout=10)}
        if op == "unload":
            client.unload_model(name, client_timeout=10)
            return {"ok": True}
        if op == "load":
            client.load_model(name, client_timeout=10)
            return {"ok": True}
        return {"ok": False, "status": "BAD_CALL", "message": f"unknown op {op!r}", "metadata": {}}
    except InferenceServerException as error:
        return _error(error)


def main() -> int:
    address = sys.argv[1]
    calls = json.load(sys.stdin)
    client = grpcclient.InferenceServerClient(address)
    try:
        results = [run(client, call) for call in calls]
    finally:
        client.close()
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
