"""Pipeline logic with an in-memory predictor: dedupe, single-flight, batching, cache use.
(The real predictor path is covered by tests/integration against Triton.)"""

import asyncio

import numpy as np
import pytest

from sentiment.model.build import default_base
from transformer.bundle import ModelBundle
from transformer.cache import PredictionMemo, cache_key, encode_value
from transformer.classifier import TextClassifier, softmax
from transformer.errors import PredictorUnavailable


class RecordingPredictor:
    """Logits from the number of tokens; records every batch; can be slowed down or broken."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.batches: list[tuple[int, int]] = []
        self.delay = delay
        self.fail = fail

    async def infer(self, batch):
        self.batches.append(batch.shape)
        await asyncio.sleep(self.delay)
        if self.fail:
            raise PredictorUnavailable("down")
        lengths = batch.arrays["attention_mask"].sum(axis=1).astype(np.float32)
        return np.stack([-lengths / 10, lengths / 10], axis=1)

    async def model_ready(self):
        return True

    async def fingerprint(self):
        return "f" * 64

    async def close(self):
        pass


class DictRemote:
    """A remote byte cache in a dict (the real Redis one is tested in tests/integration)."""

    name = "remote"

    def __init__(self):
        self.values: dict[str, bytes] = {}

    async def get_many(self, keys):
        return [self.values.get(key) for key in keys]

    async def set_many(self, items):
        self.values.update(items)

    def schedule_set(self, items):
        self.values.update(items)

    async def close(self):
        pass


def make_classifier(predictor, remote=None, max_batch_size=4, memo_size=100) -> TextClassifier:
    bundle = ModelBundle(labels=["NEGATIVE", "POSITIVE"], max_length=32, uses_token_type_ids=True, lowercase=True,
                         fingerprint="f" * 64, max_batch_size=max_batch_size)
    classifier = TextClassifier(bundle, default_base(), predictor, PredictionMemo(memo_size), remote, pad_to_multiple=1)
    classifier.status.fingerprint = "match"
    return classifier


def test_softmax_rows_sum_to_one():
    probabilities = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert probabilities[0, 0] == pytest.approx(1.0)


def test_duplicates_in_a_request_are_computed_once_and_order_is_kept():
    predictor = RecordingPredictor()
    classifier = make_classifier(predictor)
    texts = ["a b c", "x", "A  B C", "x", "longer text with many tokens"]
    predictions = asyncio.run(classifier.classify(texts))
    probabilities = np.array([p.probabilities for p in predictions])
    assert probabilities.shape == (5, 2)
    assert sum(rows for rows, _ in predictor.batches) == 3  # "a b c" == "A  B C" after normalization
    np.testing.assert_array_equal(probabilities[0], probabilities[2])
    np.testing.assert_array_equal(probabilities[1], probabilities[3])
    assert probabilities[4, 1] > probabilities[0, 1] > probabilities[1, 1]  # more tokens -> more positive


def test_misses_are_sorted_by_length_and_split_into_max_batch_size():
    predictor = RecordingPredictor()
    classifier = make_classifier(predictor, max_batch_size=4)
    texts = [("word " * n).strip() for n in (9, 1, 5, 2, 8, 3, 7, 4, 6, 10)]
    asyncio.run(classifier.classify(texts))
    assert [rows for rows, _ in predictor.batches] == [4, 4, 2]
    widths = [width for _, width in predictor.batches]
    assert widths == sorted(widths) and widths[0] < widths[-1]  # short texts padded together


def test_second_request_is_served_from_cache():
    predictor = RecordingPredictor()
    classifier = make_classifier(predictor)

    async def scenario():
        first = await classifier.classify(["good", "bad"])
        calls = len(predictor.batches)
        second = await classifier.classify(["bad", "good"])
        return first, second, calls

    first, second, calls = asyncio.run(scenario())
    assert len(predictor.batches) == calls == 1
    assert first[::-1] == second


def test_concurrent_identical_misses_are_coalesced():
    predictor = RecordingPredictor(delay=0.05)
    classifier = make_classifier(predictor)

    async def scenario():
        return await asyncio.gather(*(classifier.classify(["same text", f"own {i}"]) for i in range(5)))

    results = asyncio.run(scenario())
    assert sum(rows for rows, _ in predictor.batches) == 6  # "same text" once + 5 own texts
    for result in results[1:]:
        assert result[0] == results[0][0]


def test_corrupt_remote_value_is_recomputed_and_repaired():
    remote = DictRemote()
    predictor = RecordingPredictor()
    classifier = make_classifier(predictor, remote)
    key = cache_key("sentiment", "f" * 64, "good")
    remote.values[key] = b"\x01garbage"
    predictions = asyncio.run(classifier.classify(["good"]))
    assert len(predictor.batches) == 1
    assert remote.values[key] == encode_value(np.array(predictions[0].probabilities))


def test_remote_hits_fill_the_hot_tier():
    remote = DictRemote()
    first = make_classifier(RecordingPredictor(), remote)
    asyncio.run(first.classify(["shared"]))
    predictor = RecordingPredictor()
    second = make_classifier(predictor, remote)  # another replica: empty memo, same Redis
    answer = asyncio.run(second.classify(["shared"]))
    assert predictor.batches == []
    remote.values.clear()  # Redis gone: the hot tier answers alone
    assert asyncio.run(second.classify(["shared"])) == answer and predictor.batches == []


def test_predictor_failure_reaches_every_waiter_and_nothing_is_cached():
    predictor = RecordingPredictor(delay=0.02, fail=True)
    classifier = make_classifier(predictor)

    async def scenario():
        return await asyncio.gather(*(classifier.classify(["t"]) for _ in range(3)), return_exceptions=True)

    results = asyncio.run(scenario())
    assert all(isinstance(r, PredictorUnavailable) for r in results)
    assert len(classifier.memo) == 0 and not classifier._inflight
    predictor.fail = False
    assert len(asyncio.run(classifier.classify(["t"]))) == 1  # recovers


def test_misses_are_refused_until_the_predictor_fingerprint_is_verified():
    predictor = RecordingPredictor()
    classifier = make_classifier(predictor)
    classifier.status.fingerprint = "mismatch"
    with pytest.raises(PredictorUnavailable):
        asyncio.run(classifier.classify(["new text"]))
    assert predictor.batches == []


def test_fingerprint_is_verified_on_every_probe():
    """A rolling update can put another model behind the same address: the next probe notices."""
    predictor = RecordingPredictor()
    classifier = make_classifier(predictor)
    classifier.status.fingerprint = "unverified"
    served = ["f" * 64]
    ready = [True]
    predictor.fingerprint = lambda: _value(served[0])
    predictor.model_ready = lambda: _value(ready[0])

    async def probe():
        return await classifier.check_predictor()

    assert asyncio.run(probe()).fingerprint == "match" and classifier.serving
    served[0] = "0" * 64
    status = asyncio.run(probe())
    assert status.fingerprint == "mismatch" and not classifier.serving and "fingerprint mismatch" in status.reason
    ready[0] = False
    assert not asyncio.run(probe()).ready
    ready[0], served[0] = True, "f" * 64
    assert asyncio.run(probe()).fingerprint == "match" and classifier.serving


async def _value(value):
    return value


def test_model_backlog_is_bounded_but_hits_and_an_idle_model_are_always_served():
    predictor = RecordingPredictor(delay=0.05)
    classifier = make_classifier(predictor)
    classifier.max_queued_texts = 4
    from transformer.errors import Overloaded

    async def scenario():
        await classifier.classify(["warm"])
        big = asyncio.ensure_future(classifier.classify([f"big {i}" for i in range(6)]))  # idle: admitted
        await asyncio.sleep(0.01)
        shed = await asyncio.gather(classifier.classify(["new one"]), return_exceptions=True)
        hit = await classifier.classify(["warm"])  # the cache still answers under overload
        await big
        after = await classifier.classify(["new two"])  # backlog drained: admitted again
        return shed[0], hit, after

    shed, hit, after = asyncio.run(scenario())
    assert isinstance(shed, Overloaded) and shed.status_code == 503
    assert len(hit) == len(after) == 1
    assert classifier.queued_texts == 0
