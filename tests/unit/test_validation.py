import numpy as np
import pytest
from kserve import InferInput, InferRequest

from transformer.errors import InvalidRequest, RequestTooLarge
from transformer.model import texts_from_v1, texts_from_v2, validate_texts
from transformer.settings import Settings

SETTINGS = Settings(max_texts=3, max_text_chars=10)


def test_valid_texts_pass_unchanged_and_empty_string_is_a_text():
    assert validate_texts(["a", "", "ü"], SETTINGS) == ["a", "", "ü"]


@pytest.mark.parametrize("value, error, fragment", [
    ("not a list", InvalidRequest, "must be a list"),
    ([], InvalidRequest, "empty"),
    (["a", 1], InvalidRequest, "text[1] is int"),
    ([None], InvalidRequest, "text[0] is NoneType"),
    (["a"] * 4, RequestTooLarge, "limit is 3"),
    (["x" * 11], RequestTooLarge, "11 characters"),
])
def test_invalid_texts_say_what_to_fix(value, error, fragment):
    with pytest.raises(error, match=None) as raised:
        validate_texts(value, SETTINGS)
    assert fragment in raised.value.message


def test_v1_accepts_strings_and_objects_with_text():
    assert texts_from_v1({"instances": ["a", {"text": "b"}]}, SETTINGS) == ["a", "b"]
    with pytest.raises(InvalidRequest, match="instances"):
        texts_from_v1({"inputs": ["a"]}, SETTINGS)
    with pytest.raises(InvalidRequest, match="Content-Type"):
        texts_from_v1(b"raw bytes", SETTINGS)


def _v2(name="text", datatype="BYTES", data=None, shape=None):
    data = data if data is not None else ["a", "b"]
    tensor = InferInput(name=name, shape=shape or [len(data)], datatype=datatype, data=data)
    return InferRequest(model_name="sentiment", infer_inputs=[tensor])


def test_v2_reads_bytes_and_strings():
    assert texts_from_v2(_v2(), SETTINGS) == ["a", "b"]
    tensor = InferInput(name="text", shape=[2], datatype="BYTES")
    tensor.set_data_from_numpy(np.array([b"x", "é".encode()], dtype=object))
    assert texts_from_v2(InferRequest(model_name="sentiment", infer_inputs=[tensor]), SETTINGS) == ["x", "é"]


@pytest.mark.parametrize("request_, fragment", [
    (_v2(name="input"), "named 'text'"),
    (_v2(datatype="INT64", data=[1, 2]), "datatype BYTES"),
    (_v2(shape=[1, 2]), "shape [n]"),
    (_v2(data=[b"\xff\xfe"]), "not valid UTF-8"),
])
def test_v2_errors_are_clear(request_, fragment):
    with pytest.raises(InvalidRequest) as raised:
        texts_from_v2(request_, SETTINGS)
    assert fragment in raised.value.message
