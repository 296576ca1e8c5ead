"""The wire formats, in and out, as pure functions: /project and V1 JSON, V2 REST (JSON and binary)
and V2 gRPC messages. Hypothesis throws arbitrary bodies and messages at the decoders: the only
exception allowed out is InvalidRequest (a 422 that says what is wrong)."""

import json
import struct
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from transformer.core.prediction import Prediction
from transformer.core.requests import ClassifyOptions, Limits, parse_options, validate_texts
from transformer.core.windows import Truncation
from transformer.errors import ERROR_TABLE, InvalidRequest, RequestTooLarge, ServiceError
from transformer.transport import json_api, v2

DEFAULT = ClassifyOptions()
LABELS = ["NEGATIVE", "POSITIVE"]
LIMITS = Limits(max_texts=3, max_text_chars=10)


def bytes_tensor(*values: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def binary_body(values: list[bytes], **header) -> tuple[bytes, str]:
    raw = bytes_tensor(*values)
    document = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(values)],
                            "parameters": {"binary_data_size": len(raw)}}], **header}
    head = json.dumps(document).encode()
    return head + raw, str(len(head))


# ---- limits and options --------------------------------------------------------------------------
def test_valid_texts_pass_unchanged_and_empty_string_is_a_text():
    assert validate_texts(["a", "", "ü"], LIMITS) == ["a", "", "ü"]


@pytest.mark.parametrize("value, error, fragment", [
    ("not a list", InvalidRequest, "must be a list"),
    ([], InvalidRequest, "empty"),
    (["a", 1], InvalidRequest, "text[1] is int"),
    ([None], InvalidRequest, "text[0] is NoneType"),
    (["a"] * 4, RequestTooLarge, "limit is 3"),
    (["x" * 11], RequestTooLarge, "11 characters"),
])
def test_invalid_texts_say_what_to_fix(value, error, fragment):
    with pytest.raises(error) as raised:
        validate_texts(value, LIMITS)
    assert fragment in raised.value.message


def test_options_are_parsed_strictly():
    assert parse_options(None, DEFAULT) is DEFAULT
    assert parse_options({"truncation": "head", "details": True}, DEFAULT) == ClassifyOptions(Truncation.HEAD, True)
    with pytest.raises(InvalidRequest, match="truncation must be one of 'chunk', 'head', 'error'"):
        parse_options({"truncation": "middle"}, DEFAULT)
    with pytest.raises(InvalidRequest, match="details must be true or false"):
        parse_options({"details": "yes"}, DEFAULT)


def test_every_error_code_has_one_http_and_one_grpc_status():
    assert all(400 <= kind.http_status < 600 for kind in ERROR_TABLE.values())
    for cls in ServiceError.__subclasses__():
        assert cls.code in ERROR_TABLE, cls


# ---- /project and V1 -----------------------------------------------------------------------------
def test_bulk_body_with_options_and_unknown_fields():
    request = json_api.decode_bulk(b'{"text": ["a"], "truncation": "error", "details": true}', DEFAULT)
    assert request.texts == ["a"] and request.options == ClassifyOptions(Truncation.ERROR, True)
    with pytest.raises(InvalidRequest, match="unknown field"):
        json_api.decode_bulk(b'{"text": ["a"], "truncate": "head"}', DEFAULT)
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        json_api.decode_bulk(b'{"text": [', DEFAULT)


def test_v1_accepts_strings_and_objects_with_text():
    request = json_api.decode_v1(b'{"instances": ["a", {"text": "b"}], "parameters": {"truncation": "head"}}', DEFAULT)
    assert (
        request.texts == ["a", "b"] and request.field == "instances" and request.options.truncation is Truncation.HEAD
    )
    with pytest.raises(InvalidRequest, match="instances"):
        json_api.decode_v1(b'{"inputs": ["a"]}', DEFAULT)


def test_answers_embed_the_ranked_lists_and_details_only_when_asked():
    predictions = [Prediction.of((0.2, 0.8), LABELS, tokens=3)]
    assert json.loads(json_api.encode_predictions(predictions, None)) == {
        "predictions": [[{"label": "POSITIVE", "score": 0.8}, {"label": "NEGATIVE", "score": 0.2}]]}
    details = [{"tokens": 3, "windows": 1, "truncated": False}]
    assert json.loads(json_api.encode_predictions(predictions, details))["details"] == details


# ---- V2 REST -------------------------------------------------------------------------------------
def with_tail(size: int, tail: bytes) -> tuple[bytes, str]:
    """A binary request whose tail is exactly `tail`, whatever its length prefixes say."""
    head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": size}}]}).encode()
    return head + tail, str(len(head))


def test_v2_json_and_binary_requests_decode_to_the_same_texts():
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": [["a"], ["é"]]}],
                       "parameters": {"details": True}}).encode()
    json_call = v2.decode_rest(body, None, DEFAULT)
    binary, length = binary_body(["a".encode(), "é".encode()], outputs=[{"name": "score"}])
    binary_call = v2.decode_rest(binary, length, DEFAULT)
    assert json_call.request.texts == binary_call.request.texts == ["a", "é"]
    assert json_call.request.options.details and [o.name for o in binary_call.outputs] == ["score"]


@pytest.mark.parametrize("body, length, fragment", [
    (*binary_body([b"\xff\xfe"]), "not valid UTF-8"),
    (binary_body([b"ok"])[0], "abc", "Inference-Header-Content-Length"),
    (binary_body([b"ok"])[0], "99999", "Inference-Header-Content-Length"),
    (*with_tail(6, struct.pack("<I", 200) + b"ab"), "says 200 bytes but only 2 follow"),
    (*with_tail(2, b"ab"), "stray bytes"),
    (b'{"inputs":[{"name":"input","datatype":"BYTES","shape":[1],"data":["a"]}]}', None, "named 'text'"),
    (b'{"inputs":[{"name":"text","datatype":"INT64","shape":[1],"data":[1]}]}', None, "datatype BYTES"),
    (b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1,2],"data":["a","b"]}]}', None, "shape [n]"),
    (b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[3],"data":["a"]}]}', None, "shape says 3"),
    (b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["a"]}],"outputs":[{"name":"x"}]}', None,
     "unknown output 'x'"),
    (b'[1, 2]', None, "JSON object"),
])
def test_v2_rest_errors_say_what_is_wrong(body, length, fragment):
    with pytest.raises(InvalidRequest) as raised:
        v2.decode_rest(body, length, DEFAULT)
    assert fragment in raised.value.message


def details_of(predictions: list[Prediction]) -> list[dict]:
    return [{"tokens": p.tokens, "windows": p.windows, "truncated": False} for p in predictions]


def test_v2_rest_response_honours_requested_outputs_and_binary_flags():
    import tritonclient.http as httpclient

    predictions = [Prediction.of((0.2, 0.8), LABELS, 3), Prediction.of((0.9, 0.1), LABELS, 4)]
    body, length = binary_body([b"a", b"b"], outputs=[{"name": "label", "parameters": {"binary_data": True}},
                                                      {"name": "probabilities"}])
    call = v2.decode_rest(body, length, DEFAULT)
    tensors = v2.output_tensors(call, predictions, LABELS, details_of(predictions))
    payload, headers = v2.encode_rest(call, tensors, "sentiment", "1")
    result = httpclient.InferResult.from_response_body(payload, header_length=int(headers[v2.HEADER_LENGTH]))
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label", "probabilities"]
    assert result.as_numpy("label").tolist() == [b"POSITIVE", b"NEGATIVE"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), [[0.2, 0.8], [0.9, 0.1]], rtol=1e-6)


# ---- V2 gRPC -------------------------------------------------------------------------------------
def grpc_request(values, raw=False, **fields) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[len(values)])
    message = pb.ModelInferRequest(model_name="sentiment", inputs=[tensor], **fields)
    if raw:
        message.raw_input_contents.append(bytes_tensor(*values))
    else:
        message.inputs[0].contents.bytes_contents.extend(values)
    return message


def test_grpc_contents_and_raw_inputs_decode_alike_and_answer_alike():
    predictions = [Prediction.of((0.2, 0.8), LABELS, 3)]
    for raw in (False, True):
        message = grpc_request([b"good"], raw, outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="score")])
        message.parameters["truncation"].string_param = "head"
        call = v2.decode_grpc(message, DEFAULT)
        assert call.request.texts == ["good"] and call.request.options.truncation is Truncation.HEAD
        response = v2.encode_grpc(call, v2.output_tensors(call, predictions, LABELS, details_of(predictions)),
                                  "sentiment", "1")
        assert [o.name for o in response.outputs] == ["score"]
        score = (np.frombuffer(response.raw_output_contents[0], "<f4") if raw
                 else np.array(response.outputs[0].contents.fp32_contents))
        np.testing.assert_allclose(score, [0.8], rtol=1e-6)


@pytest.mark.parametrize("message, fragment", [
    (grpc_request([b"\xff"]), "not valid UTF-8"),
    (pb.ModelInferRequest(model_name="sentiment"), "exactly one input"),
    (grpc_request([b"a"], outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")]), "unknown output"),
])
def test_grpc_errors_say_what_is_wrong(message, fragment):
    with pytest.raises(InvalidRequest, match=fragment):
        v2.decode_grpc(message, DEFAULT)


# ---- fuzzing -------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
tensor_headers = st.fixed_dictionaries({
    "name": st.sampled_from(["text", "input", ""]) | st.text(max_size=5),
    "datatype": st.sampled_from(["BYTES", "INT64", "FP32"]) | json_values,
    "shape": st.lists(st.integers(-2, 5), max_size=3) | json_values,
}, optional={"parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-5, 40) | json_values}),
             "data": json_values})


# Valid requests among the fuzzed ones: a decoder that refused everything would pass on fuzz alone.
texts = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3)
valid_rest = texts.map(
    lambda data: ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(data)], "data": data}]}, b"", None)
)
fuzzed_rest = st.tuples(
    st.fixed_dictionaries({"inputs": st.lists(tensor_headers, max_size=2) | json_values},
                          optional={"outputs": json_values, "parameters": json_values, "id": json_values}),
    st.binary(max_size=40), st.none() | st.text(max_size=4) | st.integers(-3, 400).map(str))


def refuses_only_with_invalid_request(decode, valid, fuzzed, examples: int) -> None:
    """Drive `decode` with valid and fuzzed cases: it either decodes into texts or raises
    InvalidRequest, and both outcomes occur often enough to count (a decoder that always refused
    would pass a plain no-crash check)."""
    outcomes = Counter()

    def attempt(case):
        try:
            call = decode(case)
        except InvalidRequest:
            outcomes["refused"] += 1
            return
        outcomes["decoded"] += 1
        assert all(isinstance(text, str) for text in call.request.texts)

    settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])(
        given(case=valid | fuzzed)(attempt))()
    # Hypothesis draws few of the valid cases among the fuzzed ones: some more on their own.
    settings(max_examples=30, deadline=None)(given(case=valid)(attempt))()
    assert outcomes["decoded"] >= 20 and outcomes["refused"] >= 20, outcomes


def test_v2_rest_decoder_only_ever_refuses_with_invalid_request():
    def decode(case):
        header, tail, length = case
        return v2.decode_rest(json.dumps(header).encode() + tail, length, DEFAULT)

    refuses_only_with_invalid_request(decode, valid_rest, fuzzed_rest, examples=400)


valid_grpc = st.lists(st.binary(min_size=1, max_size=6).filter(lambda b: b.isascii()), min_size=1, max_size=4).map(
    lambda contents: dict(name="text", datatype="BYTES", shape=[len(contents)], contents=contents, raw=[], outputs=[],
                          truncation=None))
fuzzed_grpc = st.fixed_dictionaries(dict(
    name=st.text(max_size=5), datatype=st.text(max_size=6), shape=st.lists(st.integers(-3, 4), max_size=3),
    contents=st.lists(st.binary(max_size=6), max_size=4), raw=st.lists(st.binary(max_size=20), max_size=2),
    outputs=st.lists(st.text(max_size=6), max_size=3), truncation=st.none() | st.text(max_size=6)))


def test_grpc_decoder_only_ever_refuses_with_invalid_request():
    def decode(case):
        tensor = pb.ModelInferRequest.InferInputTensor(
            name=case["name"], datatype=case["datatype"], shape=case["shape"]
        )
        tensor.contents.bytes_contents.extend(case["contents"])
        message = pb.ModelInferRequest(inputs=[tensor], raw_input_contents=case["raw"], outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in case["outputs"]])
        if case["truncation"] is not None:
            message.parameters["truncation"].string_param = case["truncation"]
        return v2.decode_grpc(message, DEFAULT)

    refuses_only_with_invalid_request(decode, valid_grpc, fuzzed_grpc, examples=300)


# ---- top_k and raw_scores ------------------------------------------------------------------------
THREE = ["anger", "joy", "fear"]


@pytest.mark.parametrize("values, fragment", [
    ({"top_k": 0}, "top_k must be an integer >= 1"),
    ({"top_k": -2}, "top_k must be an integer >= 1"),
    ({"top_k": 1.5}, "top_k must be an integer >= 1"),
    ({"top_k": "2"}, "top_k must be an integer >= 1"),
    ({"top_k": True}, "top_k must be an integer >= 1"),
    ({"raw_scores": "yes"}, "raw_scores must be true or false"),
    ({"raw_scores": 1}, "raw_scores must be true or false"),
])
def test_top_k_and_raw_scores_are_validated(values, fragment):
    with pytest.raises(InvalidRequest, match=f"parameters.{fragment}"):
        parse_options(values, DEFAULT)


def test_top_k_and_raw_scores_parse_on_every_json_transport():
    assert parse_options({"top_k": 2, "raw_scores": True}, DEFAULT) == ClassifyOptions(top_k=2, raw_scores=True)
    assert parse_options({"top_k": None}, DEFAULT) is DEFAULT  # null: every label, as without it
    bulk = json_api.decode_bulk(b'{"text": ["a"], "top_k": 1, "raw_scores": true}', DEFAULT)
    assert (bulk.options.top_k, bulk.options.raw_scores) == (1, True)
    v1 = json_api.decode_v1(b'{"instances": ["a"], "parameters": {"top_k": 3}}', DEFAULT)
    assert v1.options.top_k == 3
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
                       "parameters": {"top_k": 2, "raw_scores": True}}).encode()
    assert v2.decode_rest(body, None, DEFAULT).request.options == ClassifyOptions(top_k=2, raw_scores=True)
    message = grpc_request([b"a"])
    message.parameters["top_k"].int64_param = 2
    message.parameters["raw_scores"].bool_param = True
    assert v2.decode_grpc(message, DEFAULT).request.options == ClassifyOptions(top_k=2, raw_scores=True)
    with pytest.raises(InvalidRequest, match="top_k must be an integer"):
        json_api.decode_bulk(b'{"text": ["a"], "top_k": 0}', DEFAULT)


def test_json_answers_take_the_best_k_and_raw_logits():
    predictions = [Prediction.of((0.2, 0.5, 0.3), THREE, raw=(-1.0, 2.0, 0.5))]
    answer = json.loads(json_api.encode_predictions(predictions, None, THREE, ClassifyOptions(top_k=2)))
    assert answer == {"predictions": [[{"label": "joy", "score": 0.5}, {"label": "fear", "score": 0.3}]]}
    answer = json.loads(json_api.encode_predictions(predictions, None, THREE, ClassifyOptions(raw_scores=True)))
    assert answer["predictions"][0] == [{"label": "joy", "score": 2.0}, {"label": "fear", "score": 0.5},
                                        {"label": "anger", "score": -1.0}]


def test_v2_top_k_makes_label_and_score_ranked_rows_clamped_to_the_labels():
    predictions = [Prediction.of((0.2, 0.5, 0.3), THREE, raw=(-1.0, 2.0, 0.5)),
                   Prediction.of((0.6, 0.1, 0.3), THREE, raw=(3.0, 0.0, 1.0))]
    for top_k, k in ((2, 2), (10, 3)):
        message = grpc_request([b"a", b"b"])
        message.parameters["top_k"].int64_param = top_k
        call = v2.decode_grpc(message, DEFAULT)
        tensors = {t.name: t for t, _ in v2.output_tensors(call, predictions, THREE, details_of(predictions))}
        assert tensors["label"].shape == tensors["score"].shape == [2, k]
        assert tensors["label"].array.tolist() == [[b"joy", b"fear", b"anger"][:k], [b"anger", b"fear", b"joy"][:k]]
        np.testing.assert_allclose(tensors["score"].array, np.array([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]])[:, :k],
                                   rtol=1e-6)
        response = v2.encode_grpc(
            call, v2.output_tensors(call, predictions, THREE, details_of(predictions)), "sentiment", "1"
        )
        assert list(response.outputs[0].shape) == [2, k] and len(response.outputs[0].contents.bytes_contents) == 2 * k
    message = grpc_request([b"a", b"b"])
    message.parameters["raw_scores"].bool_param = True
    tensors = {
        t.name: t
        for t, _ in v2.output_tensors(v2.decode_grpc(message, DEFAULT), predictions, THREE, details_of(predictions))
    }
    np.testing.assert_allclose(tensors["probabilities"].array, [[-1.0, 2.0, 0.5], [3.0, 0.0, 1.0]])
    np.testing.assert_allclose(tensors["score"].array, [2.0, 3.0])
