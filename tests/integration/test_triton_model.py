"""The exported Python-backend model in the real bundled Triton: same logits as ONNX Runtime over
V2 HTTP (tritonclient.http) and V2 gRPC (kserve's client), with dynamic batching at work."""

import asyncio
import json
import time
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import TritonServer, wait_until
from transformer.bundle import ModelBundle
from transformer.core.tokenization import TextEncoder

TEXTS = ["good", "a long sentence about a film that was far too long for its own good", "ok", "",
         "the acting was superb", "bad", "not bad at all, really"]


@pytest.fixture(scope="module", params=["bert", "distilbert", "mpnet"])
def triton(request, tiny_repositories, logs_dir):
    server = TritonServer(tiny_repositories[request.param], logs_dir / f"triton-{request.param}").start()
    yield server
    server.stop()


def _expected(triton):
    model_dir = triton.repository / "sentiment"
    bundle = ModelBundle.load(model_dir / "1" / "bundle")
    encoder = TextEncoder(model_dir / "1" / "bundle" / "tokenizer.json", bundle.max_length, bundle.uses_token_type_ids)
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return encoder, session


def _http_infer(triton, arrays):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(triton.http_address)
    inputs = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return client.infer("sentiment", inputs).as_numpy("logits")


def test_http_logits_equal_onnxruntime(triton):
    encoder, session = _expected(triton)
    batch = encoder.encode_batch(TEXTS)
    np.testing.assert_allclose(_http_infer(triton, batch), session.run(["logits"], batch)[0], atol=1e-5)


def test_grpc_logits_equal_onnxruntime(triton):
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    encoder, session = _expected(triton)
    batch = encoder.encode_batch(TEXTS[:3])

    async def call():
        client = InferenceGRPCClient(triton.grpc_address, retries=0)
        inputs = []
        for name, array in batch.items():
            tensor = InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        response = await client.infer(InferRequest(model_name="sentiment", infer_inputs=inputs))
        await client.close()
        return response.get_output_by_name("logits").as_numpy()

    np.testing.assert_allclose(asyncio.run(call()), session.run(["logits"], batch)[0], atol=1e-5)


def test_dynamic_batching_merges_concurrent_requests(triton):
    """48 single-text requests sent at once, padded to a common width as the transformer does
    (Triton's dynamic batcher merges equal shapes): fewer executions than requests, and every
    answer equals ONNX Runtime's for that text alone (padding is inert, and trimmed)."""
    batches, results, session = _merged_requests(triton)
    for batch, logits in zip(batches, results):
        np.testing.assert_allclose(logits, session.run(["logits"], batch)[0], atol=1e-4)


@pytest.mark.slow
@pytest.mark.model
def test_dynamic_batching_merges_with_the_shipped_queue_delay(default_build, logs_dir):
    """The tiny exports wait 10 ms for a batch to fill; the default build ships its own (shorter) delay:
    concurrent requests merge with it too, and each answer's label is the one for that text alone
    (int8 scales activations per batch: the logits may move in their last digits)."""
    triton = TritonServer(default_build.repository, logs_dir / "triton-default-batching").start()
    try:
        batches, results, session = _merged_requests(triton)
    finally:
        triton.stop()
    for batch, logits in zip(batches, results):
        assert logits.argmax(axis=1).tolist() == session.run(["logits"], batch)[0].argmax(axis=1).tolist()


def _merged_requests(triton):
    """Send the 48 requests at once; assert Triton ran each and merged some; return the batches sent,
    Triton's logits for each, and an ONNX Runtime session on the same model."""
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    _, session = _expected(triton)
    model_dir = triton.repository / "sentiment"
    bundle = ModelBundle.load(model_dir / "1" / "bundle")
    encoder = TextEncoder(model_dir / "1" / "bundle" / "tokenizer.json", bundle.max_length, bundle.uses_token_type_ids,
                          pad_to_multiple_of=32)
    texts = [f"{TEXTS[i % len(TEXTS)]} {'more words ' * (i % 5)}".strip() for i in range(48)]
    batches = [encoder.encode_batch([text]) for text in texts]

    def stats():
        with urllib.request.urlopen(f"http://{triton.http_address}/v2/models/sentiment/stats") as response:
            model = json.load(response)["model_stats"][0]
        return model["inference_count"], model["execution_count"]

    async def fire():
        client = InferenceGRPCClient(triton.grpc_address, retries=0)
        requests = []
        for batch in batches:
            inputs = []
            for name, array in batch.items():
                tensor = InferInput(name, list(array.shape), "INT64")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            requests.append(InferRequest(model_name="sentiment", infer_inputs=inputs))
        responses = await asyncio.gather(*(client.infer(r) for r in requests))
        await client.close()
        return [r.get_output_by_name("logits").as_numpy() for r in responses]

    def settled_stats():  # Triton updates its statistics after the responses are sent: wait for them to settle
        last, deadline = stats(), time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.15)
            current = stats()
            if current == last:
                return current
            last = current
        return last

    before = settled_stats()
    results = asyncio.run(fire())
    wait_until(lambda: stats()[0] - before[0] >= len(texts), 10, message="Triton's statistics count every request")
    inferences, executions = (a - b for a, b in zip(settled_stats(), before))
    assert inferences == len(texts)
    assert executions < len(texts), "dynamic batching never merged two requests"
    assert len({int(b["attention_mask"].sum()) for b in batches}) > 1  # the texts really differ in length
    return batches, results, session


def test_triton_reports_the_fingerprint_in_the_model_config(triton):
    with urllib.request.urlopen(f"http://{triton.http_address}/v2/models/sentiment/config") as response:
        config = json.load(response)
    bundle = ModelBundle.load(triton.repository / "sentiment" / "1" / "bundle")
    assert config["parameters"]["fingerprint_v1"]["string_value"] == bundle.fingerprint
    assert config["version_policy"] == {"specific": {"versions": [1]}}
    assert config["backend"] == "python"
    assert "dynamic_batching" in config
