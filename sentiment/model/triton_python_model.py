"""Triton Python-backend model: runs the exported ONNX file with ONNX Runtime.

Copied to `<repository>/sentiment/1/model.py` by the export step. It exists because the Triton
binary shipped in the nvidia-pytriton wheel has only the Python backend; the cluster serves the
same ONNX file with the onnxruntime backend. Same tensor names, shapes and batching either way.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_thread_count", "0"))
        options.inter_op_num_threads = int(parameters.get("inter_op_thread_count", "0"))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = os.path.join(args["model_repository"], args["model_version"], parameters.get("onnx_file", "model.onnx"))
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests):
        # One ONNX Runtime call for every request Triton hands over. Triton merges equal shapes, but
        # any request may carry padding columns (the transformer rounds lengths up), so the batch is
        # trimmed to the longest real text and narrower requests right-padded (mask 0 is inert).
        arrays = [
            [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.input_names] for r in requests
        ]
        rows = [a[0].shape[0] for a in arrays]
        # Only as wide as the longest real text: columns that are padding in every row cost compute.
        mask_position = self.input_names.index("attention_mask")
        width = max(1, max(int(a[mask_position].sum(axis=1).max()) for a in arrays))
        feeds = {}
        for position, name in enumerate(self.input_names):
            batch = np.zeros((sum(rows), width), dtype=np.int64)
            start = 0
            for request_arrays, count in zip(arrays, rows):
                part = request_arrays[position][:, :width]
                batch[start:start + count, : part.shape[1]] = part
                start += count
            feeds[name] = batch
        logits = self.session.run([self.output_name], feeds)[0].astype(np.float32, copy=False)
        responses, start = [], 0
        for count in rows:
            output = pb_utils.Tensor(self.output_name, logits[start:start + count])
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
            start += count
        return responses

    def finalize(self):
        self.session = None
