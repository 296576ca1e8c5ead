"""Model building: packaged data, fine-tuning, ONNX export and the Triton model repository."""
