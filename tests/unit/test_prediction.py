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


def test_value_round_trip_keeps_probabilities_logits_and_size():
    prediction = Prediction.of(np.array([0.25, 0.75], dtype=np.float32), LABELS, tokens=812, windows=8,
                               raw=np.array([-0.5, 0.5986], dtype=np.float32))
    raw = encode_value(prediction)
    assert len(raw) == 9 + 16  # tag, tokens, windows, two float32 scores, two float32 logits
    decoded = decode_value(raw, LABELS)
    assert decoded.probabilities == prediction.probabilities
    assert decoded.raw == prediction.raw
    assert (decoded.tokens, decoded.windows) == (812, 8)
    assert orjson.dumps([decoded.ranked_json]) == orjson.dumps([prediction.ranked_json])


ONE = b"\x01\x00\x00\x00\x01\x00\x00\x00"  # one token, one window


@pytest.mark.parametrize("raw", [
    b"", b"garbage",
    b"\x01" + np.float32([0.5, 0.5]).tobytes(),                                   # the first format
    b"\x02" + ONE + np.float32([0.5, 0.5]).tobytes(),                             # the format before logits
    b"\x03" + b"\x00" * 8 + np.float32([0.5, 0.5, 0, 0]).tobytes(),              # zero windows
    b"\x03" + ONE + np.float32([np.nan, 0.5, 0, 0]).tobytes(),
    b"\x03" + ONE + np.float32([0.5, 0.5, np.inf, 0]).tobytes(),                  # a logit that is not finite
    b"\x03" + ONE + np.float32([0.9, 0.9, 0, 0]).tobytes(),                       # not a softmax
    b"\x03" + ONE + np.float32([0.5, 0.5, 0]).tobytes(),                          # too short
])
def test_corrupt_or_foreign_values_are_misses(raw):
    assert decode_value(raw, LABELS) is None


def test_prediction_ranks_labels_and_serializes_once():
    prediction = Prediction.of((0.25, 0.75), LABELS)
    ranked = [{"label": "POSITIVE", "score": 0.75}, {"label": "NEGATIVE", "score": 0.25}]
    assert orjson.loads(orjson.dumps({"p": [prediction.ranked_json]})) == {"p": [ranked]}
    assert prediction.best == 1


def test_values_are_checked_against_the_models_score_function():
    sigmoid = b"\x03" + ONE + np.float32([0.9, 0.9, 2.2, 2.2]).tobytes()
    assert decode_value(sigmoid, LABELS, "sigmoid").probabilities == pytest.approx((0.9, 0.9))
    assert decode_value(sigmoid, LABELS, "softmax") is None
    assert decode_value(b"\x03" + ONE + np.float32([1.2, 0.9, 2.2, 2.2]).tobytes(), LABELS, "sigmoid") is None
    regression = b"\x03" + ONE + np.float32([-3.5, -3.5]).tobytes()
    assert decode_value(regression, ["SCORE"], "none").probabilities == (-3.5,)


def test_top_k_and_raw_scores_are_views_of_one_value():
    prediction = Prediction.of((0.2, 0.7, 0.1), ["A", "B", "C"], raw=(0.5, 1.75, -0.2))
    assert prediction.view(["A", "B", "C"], None, False) is prediction.ranked_json
    assert prediction.view(["A", "B", "C"], 2, False) == [{"label": "B", "score": 0.7}, {"label": "A", "score": 0.2}]
    assert prediction.view(["A", "B", "C"], 9, False) == [{"label": "B", "score": 0.7}, {"label": "A", "score": 0.2},
                                                          {"label": "C", "score": pytest.approx(0.1)}]
    assert prediction.view(["A", "B", "C"], 1, True) == [{"label": "B", "score": 1.75}]
    with pytest.raises(ValueError, match="raw logits"):
        encode_value(Prediction.of((0.5, 0.5), LABELS))
