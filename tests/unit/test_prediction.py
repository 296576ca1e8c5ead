"""Cache keys and values of one text's prediction (pure logic)."""

import numpy as np
import orjson
import pytest

from transformer.core.prediction import Prediction, cache_key, decode_value, encode_value

LABELS = ["NEGATIVE", "POSITIVE"]


def test_key_depends_on_model_fingerprint_windowing_and_text():
    a = cache_key("sentiment", "a" * 64, "h128", "good movie")
    assert a == cache_key("sentiment", "a" * 64, "h128", "good movie")
    assert a != cache_key("sentiment", "b" * 64, "h128", "good movie")  # a new model never reads old entries
    assert a != cache_key("sentiment", "a" * 64, "c128.32.confidence_weighted", "good movie")  # another mode
    assert a != cache_key("sentiment", "a" * 64, "h128", "good movie!")
    assert a.startswith("sentiment:aaaaaaaaaaaaaaaa:h128:")


def test_value_round_trip_keeps_probabilities_and_size():
    prediction = Prediction.of(np.array([0.25, 0.75], dtype=np.float32), LABELS, tokens=812, windows=8)
    raw = encode_value(prediction)
    assert len(raw) == 9 + 8  # tag, tokens, windows, two float32
    decoded = decode_value(raw, LABELS)
    assert decoded.probabilities == prediction.probabilities
    assert (decoded.tokens, decoded.windows) == (812, 8)
    assert orjson.dumps([decoded.ranked_json]) == orjson.dumps([prediction.ranked_json])


@pytest.mark.parametrize("raw", [
    b"", b"garbage",
    b"\x01" + np.float32([0.5, 0.5]).tobytes(),                                   # the old format
    b"\x02" + b"\x00" * 8 + np.float32([0.5, 0.5]).tobytes(),                    # zero windows
    b"\x02" + b"\x01\x00\x00\x00\x01\x00\x00\x00" + np.float32([np.nan, 0.5]).tobytes(),
    b"\x02" + b"\x01\x00\x00\x00\x01\x00\x00\x00" + np.float32([0.9, 0.9]).tobytes(),
    b"\x02" + b"\x01\x00\x00\x00\x01\x00\x00\x00" + np.float32([0.5]).tobytes(),   # too short
])
def test_corrupt_or_foreign_values_are_misses(raw):
    assert decode_value(raw, LABELS) is None


def test_prediction_ranks_labels_and_serializes_once():
    prediction = Prediction.of((0.25, 0.75), LABELS)
    ranked = [{"label": "POSITIVE", "score": 0.75}, {"label": "NEGATIVE", "score": 0.25}]
    assert orjson.loads(orjson.dumps({"p": [prediction.ranked_json]})) == {"p": [ranked]}
    assert prediction.best == 1
