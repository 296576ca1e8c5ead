"""The Python-backend model.py outside Triton: a stand-in for `triton_python_backend_utils` feeds it
requests of different widths, as a dynamic batch would; each answer must equal ONNX Runtime's for
that request alone (right-padding and trimming are inert)."""

import importlib.util
import json
import sys
import types

import numpy as np
import onnxruntime as ort
import pytest

from sentiment.model.triton_repository import PYTHON_BACKEND_SOURCE
from transformer.bundle import ModelBundle
from transformer.core.tokenization import TextEncoder


class FakeTensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


@pytest.fixture()
def backend_module(monkeypatch):
    utils = types.ModuleType("triton_python_backend_utils")
    utils.Tensor = FakeTensor
    utils.InferenceResponse = lambda output_tensors: output_tensors
    utils.get_input_tensor_by_name = lambda request, name: FakeTensor(name, request[name])
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    spec = importlib.util.spec_from_file_location("triton_model_under_test", PYTHON_BACKEND_SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mixed_width_requests_in_one_execution(backend_module, tiny_repositories):
    model_dir = tiny_repositories["bert"] / "sentiment"
    bundle = ModelBundle.load(model_dir / "1" / "bundle")
    config = {"input": [{"name": n} for n in bundle.input_names], "output": [{"name": "logits"}],
              "parameters": {"intra_op_thread_count": {"string_value": "1"}}}
    model = backend_module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(model_dir), "model_version": "1"})
    encoder = TextEncoder(model_dir / "1" / "bundle" / "tokenizer.json", bundle.max_length, bundle.uses_token_type_ids,
                          pad_to_multiple_of=16)
    requests = [encoder.encode_batch(texts) for texts in
                (["hi"], ["a much longer sentence, with quite a few more words in it than the others"],
                 ["ok", "fine then"])]
    assert len({r["input_ids"].shape[1] for r in requests}) > 1
    responses = model.execute(requests)
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for request, response in zip(requests, responses):
        (tensor,) = response
        assert tensor.name == "logits"
        np.testing.assert_allclose(tensor.array, session.run(["logits"], request)[0], atol=1e-5)


def test_all_padding_warmup_request_runs(backend_module, tiny_repositories):
    """Triton's model_warmup sends zeros (attention mask included): trimming must keep a column."""
    model_dir = tiny_repositories["distilbert"] / "sentiment"
    bundle = ModelBundle.load(model_dir / "1" / "bundle")
    config = {"input": [{"name": n} for n in bundle.input_names], "output": [{"name": "logits"}], "parameters": {}}
    model = backend_module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(model_dir), "model_version": "1"})
    zeros = {name: np.zeros((1, 16), dtype=np.int64) for name in bundle.input_names}
    ((tensor,),) = model.execute([zeros])
    assert tensor.array.shape == (1, 2)
