"""Long texts: windows (stride, special tokens, token_type_ids) and the aggregation candidates."""

import numpy as np
import pytest

from sentiment.model.build import default_base
from transformer.core.tokenization import TextEncoder
from transformer.core.windows import AGGREGATIONS, aggregate, softmax


@pytest.fixture(scope="module")
def tokenizer_file():
    return default_base() / "tokenizer.json"


def untruncated_count(tokenizer_file, text) -> int:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


@pytest.mark.parametrize("stride", [0, 4, 10])
def test_windows_cover_the_text_with_the_stride_and_special_tokens(tokenizer_file, stride):
    encoder = TextEncoder(tokenizer_file, 24, True, stride=stride)
    text = " ".join(f"word{i}" for i in range(50))  # 100 tokens
    [windows] = encoder.windows([text])
    assert windows.token_count == untruncated_count(tokenizer_file, text) == 100
    assert all(len(w.ids) <= 24 for w in windows.windows)
    for window in windows.windows:  # each window is a complete model input
        assert window.tokens[0] == "[CLS]" and window.tokens[-1] == "[SEP]"
    for before, after in zip(windows.windows, windows.windows[1:]):
        if stride:
            assert before.ids[-1 - stride:-1] == after.ids[1:1 + stride]  # consecutive windows overlap
    assert sum(windows.new_tokens) == 100
    assert len(windows.windows) > 1 and len(windows.windows) == -(-(100 - stride) // (22 - stride))


def test_a_short_text_is_one_window_and_the_empty_text_is_valid(tokenizer_file):
    encoder = TextEncoder(tokenizer_file, 24, True, stride=4)
    short, empty = encoder.windows(["a short text", ""])
    assert len(short.windows) == 1 and short.token_count == 3
    assert len(empty.windows) == 1 and empty.token_count == 0 and empty.windows[0].tokens == ["[CLS]", "[SEP]"]


@pytest.mark.parametrize("uses_token_type_ids, names", [
    (True, {"input_ids", "attention_mask", "token_type_ids"}),    # BERT / MiniLM
    (False, {"input_ids", "attention_mask"}),                     # DistilBERT
])
def test_windows_pad_into_the_model_inputs_of_each_family(tokenizer_file, uses_token_type_ids, names):
    encoder = TextEncoder(tokenizer_file, 24, uses_token_type_ids, pad_to_multiple_of=8, stride=4)
    [windows] = encoder.windows([" ".join(f"w{i}" for i in range(30))])
    batch = encoder.pad(windows.windows)
    assert set(batch) == names
    assert batch["input_ids"].shape == (len(windows.windows), 24)
    assert batch["attention_mask"].sum() == sum(len(w.ids) for w in windows.windows)
    if uses_token_type_ids:
        assert not batch["token_type_ids"].any()


def test_a_stride_that_leaves_no_new_tokens_is_refused(tokenizer_file):
    with pytest.raises(ValueError, match="stride"):
        TextEncoder(tokenizer_file, 24, True, stride=22)


LOGITS = np.array([[0.1, -0.1], [-3.0, 3.0], [0.2, 0.0]])  # neutral, a clear verdict, neutral
NEW = np.array([22, 18, 5])


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_every_aggregation_returns_probabilities(name):
    probabilities = aggregate(name, LOGITS, NEW)
    assert probabilities.shape == (2,) and probabilities.dtype == np.float32
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-6) and (probabilities >= 0).all()


def test_one_window_is_its_own_answer_for_every_aggregation():
    for name in AGGREGATIONS:
        np.testing.assert_allclose(aggregate(name, LOGITS[1:2], NEW[1:2]), softmax(LOGITS[1]), rtol=1e-6)


def test_candidates_weigh_the_windows_as_documented():
    probs = softmax(LOGITS)
    np.testing.assert_allclose(aggregate("mean_probabilities", LOGITS, NEW), probs.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(aggregate("mean_logits", LOGITS, NEW), softmax(LOGITS.mean(axis=0)), rtol=1e-6)
    np.testing.assert_allclose(aggregate("first_window", LOGITS, NEW), probs[0], rtol=1e-6)
    np.testing.assert_allclose(aggregate("most_confident", LOGITS, NEW), probs[1], rtol=1e-6)
    weighted = (probs * NEW[:, None]).sum(axis=0) / NEW.sum()
    np.testing.assert_allclose(aggregate("length_weighted", LOGITS, NEW), weighted, rtol=1e-6)
    # the clear verdict dominates when windows are weighted by confidence, not when averaged
    assert aggregate("confidence_weighted", LOGITS, NEW)[1] > 0.9 > aggregate("mean_probabilities", LOGITS, NEW)[1]


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_aggregations_follow_the_score_function(name):
    """Multi-label windows stay independent sigmoids; regression windows stay raw values."""
    sigmoid = aggregate(name, LOGITS + 0.7, NEW, "sigmoid")  # shifted: no row's sigmoids sum to 1 by chance
    assert np.all((sigmoid >= 0) & (sigmoid <= 1)) and not np.isclose(sigmoid.sum(), 1.0)
    np.testing.assert_allclose(aggregate(name, LOGITS[:1], NEW[:1], "sigmoid"), 1 / (1 + np.exp(-LOGITS[0])), rtol=1e-6)
    np.testing.assert_allclose(aggregate(name, LOGITS[:1], NEW[:1], "none"), LOGITS[0], rtol=1e-6)
    np.testing.assert_allclose(aggregate("mean_logits", LOGITS, NEW, "none"), LOGITS.mean(axis=0), rtol=1e-6)


def test_raw_logits_of_a_long_text_are_the_mean_of_its_windows():
    from transformer.core.windows import raw_logits

    np.testing.assert_allclose(raw_logits(LOGITS), LOGITS.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(raw_logits(LOGITS[1:2]), LOGITS[1], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_a_document_temperature_rescales_a_long_texts_answer_and_keeps_its_label(name):
    plain = aggregate(name, LOGITS, NEW)
    for temperature in (0.5, 2.0):
        scaled = aggregate(name, LOGITS, NEW, "softmax", temperature)
        np.testing.assert_allclose(scaled, softmax(np.log(plain) / temperature), rtol=1e-5)
        assert scaled.argmax() == plain.argmax() and np.isclose(scaled.sum(), 1.0)
        assert (scaled.max() > plain.max()) == (temperature < 1)
        # one window, or scores that are not one softmax, are left as the model answered
        np.testing.assert_allclose(aggregate(name, LOGITS[:1], NEW[:1], "softmax", temperature), softmax(LOGITS[0]))
        np.testing.assert_allclose(aggregate(name, LOGITS, NEW, "sigmoid", temperature), aggregate(name, LOGITS, NEW,
                                                                                                    "sigmoid"))
    mean = LOGITS.mean(axis=0)
    np.testing.assert_allclose(aggregate("mean_logits", LOGITS, NEW, "softmax", 0.7), softmax(mean / 0.7), rtol=1e-5)
