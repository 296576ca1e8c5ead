"""Pipeline logic with an in-memory predictor: dedupe, single-flight, batching, windows, admission,
cache use. (The real predictor path is covered by tests/integration against Triton.)"""

import asyncio
import shutil

import numpy as np
import pytest

from sentiment.model.build import default_base
from transformer.backends.cache import PredictionMemo, TwoTierCache
from transformer.bundle import ModelBundle
from transformer.core.classifier import TextClassifier
from transformer.core.generation import build_classifier
from transformer.core.prediction import encode_value
from transformer.core.readiness import PredictorMonitor
from transformer.core.requests import ClassifyOptions
from transformer.core.tokenization import TextReplacements
from transformer.core.windows import Truncation, softmax
from transformer.errors import InvalidRequest, Overloaded, PredictorUnavailable, RequestTooLarge
from transformer.settings import Settings

CHUNK = ClassifyOptions(Truncation.CHUNK)
HEAD = ClassifyOptions(Truncation.HEAD)
ERROR = ClassifyOptions(Truncation.ERROR)


class RecordingPredictor:
    """Logits from the number of real tokens; records every call's shape; can be slowed or broken."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.batches: list[tuple[int, int]] = []
        self.delay = delay
        self.fail = fail
        self.served_fingerprint = "f" * 64
        self.ready = True

    async def infer(self, inputs):
        self.batches.append(inputs["input_ids"].shape)
        await asyncio.sleep(self.delay)
        if self.fail:
            raise PredictorUnavailable("down")
        lengths = inputs["attention_mask"].sum(axis=1).astype(np.float32)
        return np.stack([-lengths / 10, lengths / 10], axis=1)

    async def model_ready(self):
        return self.ready

    async def fingerprint(self):
        return self.served_fingerprint

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


def make_classifier(predictor, remote=None, max_batch_size=4, memo_size=100, document_temperatures=None,
                    bundle_dir=None, **settings) -> TextClassifier:
    bundle = ModelBundle(labels=["NEGATIVE", "POSITIVE"], max_length=32, uses_token_type_ids=True, lowercase=True,
                         fingerprint="f" * 64, max_batch_size=max_batch_size,
                         document_temperatures=document_temperatures or {})
    settings = Settings(**{"pad_to_multiple": 1, "window_stride": 4, "max_concurrent_batches": 1, **settings})
    monitor = PredictorMonitor(predictor, "sentiment", bundle.fingerprint)
    monitor.status.fingerprint, monitor.status.ready = "match", True
    cache = TwoTierCache(PredictionMemo(memo_size), remote)
    return build_classifier(settings, bundle, bundle_dir or default_base(), predictor, cache, monitor)


def classify(classifier, texts, options=CHUNK):
    return asyncio.run(classifier.classify(texts, options))


def rows(predictor) -> int:
    return sum(count for count, _ in predictor.batches)


def test_duplicates_in_a_request_are_computed_once_and_order_is_kept():
    predictor = RecordingPredictor()
    classifier = make_classifier(predictor)
    texts = ["a b c", "x", "A  B C", "x", "longer text with many tokens"]
    predictions = classify(classifier, texts)
    probabilities = np.array([p.probabilities for p in predictions])
    assert probabilities.shape == (5, 2)
    assert rows(predictor) == 3  # "a b c" == "A  B C" after normalization
    np.testing.assert_array_equal(probabilities[0], probabilities[2])
    np.testing.assert_array_equal(probabilities[1], probabilities[3])
    assert probabilities[4, 1] > probabilities[0, 1] > probabilities[1, 1]  # more tokens -> more positive


def test_calls_are_capped_by_rows_and_the_widest_window_leads():
    predictor = RecordingPredictor()
    classifier = make_classifier(predictor, max_batch_size=4)
    texts = [("word " * n).strip() for n in (9, 1, 5, 2, 8, 3, 7, 4, 6, 10)]
    classify(classifier, texts)
    assert [count for count, _ in predictor.batches] == [4, 4, 2]
    widths = [width for _, width in predictor.batches]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]  # similar lengths padded together


def test_calls_are_capped_by_the_token_budget():
    predictor = RecordingPredictor()
    classifier = make_classifier(predictor, max_batch_size=64, max_batch_tokens=40)
    classify(classifier, [f"word{i} " * 6 for i in range(6)])  # 6 windows of about 14-20 tokens
    assert all(count * width <= 40 for count, width in predictor.batches)
    assert rows(predictor) == 6 and len(predictor.batches) >= 3


def test_second_request_is_served_from_cache():
    predictor = RecordingPredictor()
    classifier = make_classifier(predictor)

    async def scenario():
        first = await classifier.classify(["good", "bad"], CHUNK)
        calls = len(predictor.batches)
        second = await classifier.classify(["bad", "good"], CHUNK)
        return first, second, calls

    first, second, calls = asyncio.run(scenario())
    assert len(predictor.batches) == calls == 1
    assert first[::-1] == second


def test_concurrent_identical_misses_are_coalesced():
    predictor = RecordingPredictor(delay=0.05)
    classifier = make_classifier(predictor)

    async def scenario():
        return await asyncio.gather(*(classifier.classify(["same text", f"own {i}"], CHUNK) for i in range(5)))

    results = asyncio.run(scenario())
    assert rows(predictor) == 6  # "same text" once + 5 own texts
    for result in results[1:]:
        assert result[0] == results[0][0]


def test_corrupt_remote_value_is_recomputed_and_repaired():
    remote = DictRemote()
    predictor = RecordingPredictor()
    classifier = make_classifier(predictor, remote)
    key, _ = classifier._key("good", classifier._how[Truncation.CHUNK])
    remote.values[key] = b"\x02garbage"
    predictions = classify(classifier, ["good"])
    assert len(predictor.batches) == 1
    assert remote.values[key] == encode_value(predictions[0])


def test_remote_hits_fill_the_hot_tier():
    remote = DictRemote()
    first = make_classifier(RecordingPredictor(), remote)
    classify(first, ["shared"])
    predictor = RecordingPredictor()
    second = make_classifier(predictor, remote)  # another replica: empty memo, same Redis
    answer = classify(second, ["shared"])
    assert predictor.batches == []
    remote.values.clear()  # Redis gone: the hot tier answers alone
    assert classify(second, ["shared"]) == answer and predictor.batches == []


def test_predictor_failure_reaches_every_waiter_and_nothing_is_cached():
    predictor = RecordingPredictor(delay=0.02, fail=True)
    classifier = make_classifier(predictor)

    async def scenario():
        return await asyncio.gather(*(classifier.classify(["t"], CHUNK) for _ in range(3)), return_exceptions=True)

    results = asyncio.run(scenario())
    assert all(isinstance(r, PredictorUnavailable) for r in results)
    assert len(classifier.cache.memo) == 0 and not classifier._inflight
    predictor.fail = False
    assert len(classify(classifier, ["t"])) == 1  # recovers


def test_misses_are_refused_until_the_predictor_fingerprint_is_verified():
    predictor = RecordingPredictor()
    classifier = make_classifier(predictor)
    classifier.monitor.status.fingerprint = "mismatch"
    with pytest.raises(PredictorUnavailable):
        classify(classifier, ["new text"])
    assert predictor.batches == []


def test_misses_are_refused_at_once_while_the_probe_finds_the_predictor_not_ready():
    """A hung or down Triton: a 503 now, not after the predictor timeout; hits are still served."""
    predictor = RecordingPredictor()
    classifier = make_classifier(predictor)
    classify(classifier, ["seen before"])
    calls = len(predictor.batches)
    classifier.monitor.status.ready = False
    with pytest.raises(PredictorUnavailable, match="not ready"):
        classify(classifier, ["new text"])
    classify(classifier, ["seen before"])  # a cache hit needs no predictor
    assert len(predictor.batches) == calls == 1


def test_fingerprint_is_verified_on_every_probe():
    """A rolling update can put another model behind the same address: the next probe notices."""
    predictor = RecordingPredictor()
    monitor = PredictorMonitor(predictor, "sentiment", "f" * 64)

    async def probe():
        return await monitor.check()

    assert asyncio.run(probe()).fingerprint == "match" and monitor.status.serving
    predictor.served_fingerprint = "0" * 64
    status = asyncio.run(probe())
    assert status.fingerprint == "mismatch" and not status.serving and "fingerprint mismatch" in status.reason
    predictor.ready = False
    assert not asyncio.run(probe()).ready
    predictor.ready, predictor.served_fingerprint = True, "f" * 64
    assert asyncio.run(probe()).fingerprint == "match" and monitor.status.serving


# ---- long texts ----------------------------------------------------------------------------------
LONG = " ".join(f"word{i}" for i in range(40))  # 80 tokens: several windows of 32


def test_a_long_text_is_judged_whole_in_chunk_mode_and_cut_in_head_mode():
    predictor = RecordingPredictor()
    classifier = make_classifier(predictor)
    chunk = classify(classifier, [LONG])[0]
    assert chunk.windows > 1 and chunk.tokens == 80
    assert classifier.details(chunk) == {"tokens": 80, "windows": chunk.windows, "truncated": False}
    computed = rows(predictor)
    head = classify(classifier, [LONG], HEAD)[0]
    assert rows(predictor) == computed + 1  # only the first window, and another cache entry
    assert head.windows == 1 and head.tokens == 80
    assert classifier.details(head)["truncated"] is True
    assert head.probabilities != chunk.probabilities


def test_the_bundles_document_temperature_calibrates_long_texts_only_and_names_their_cache_entries():
    temperatures = {"mean_logits": 0.5, "most_confident": 3.0}
    plain = make_classifier(RecordingPredictor())
    calibrated = make_classifier(RecordingPredictor(), document_temperatures=temperatures)
    short, long = "a few words", LONG
    before, after = classify(plain, [short, long]), classify(calibrated, [short, long])
    assert after[0].probabilities == before[0].probabilities  # one window: as the model answered
    assert after[1].windows > 1
    # mean_logits, T = 0.5: softmax(mean logits / T), the same label, more sure (the windows agree here)
    expected = softmax(np.log(np.array(before[1].probabilities)) / 0.5)
    np.testing.assert_allclose(after[1].probabilities, expected, rtol=1e-5)
    assert max(after[1].probabilities) > max(before[1].probabilities)
    assert np.argmax(after[1].probabilities) == np.argmax(before[1].probabilities)
    # chunk-mode keys name the temperature; head mode, which reads one window, does not
    assert calibrated._how[Truncation.CHUNK] == plain._how[Truncation.CHUNK] + ".t0.5"
    assert calibrated._how[Truncation.HEAD] == plain._how[Truncation.HEAD]
    # another aggregation served: its own temperature
    other = make_classifier(RecordingPredictor(), document_temperatures=temperatures, aggregation="most_confident")
    assert other.document_temperature == 3.0 and other._how[Truncation.CHUNK].endswith(".most_confident.t3.0")


def test_a_bundle_refuses_a_document_temperature_that_is_not_a_positive_number():
    from transformer.bundle import ModelBundle

    fields = dict(labels=["NEGATIVE", "POSITIVE"], max_length=32, uses_token_type_ids=True, lowercase=True,
                  fingerprint="f" * 64, max_batch_size=4)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            ModelBundle(**fields, document_temperatures={"mean_logits": bad})
    assert ModelBundle(**fields).document_temperature("mean_logits") == 1.0  # older bundles: uncalibrated


def test_error_mode_names_the_long_text_and_its_token_count_even_when_cached():
    classifier = make_classifier(RecordingPredictor())
    with pytest.raises(InvalidRequest) as raised:
        classify(classifier, ["short", LONG], ERROR)
    assert "text[1] has 80 tokens" in raised.value.message and raised.value.status_code == 422
    # One way to say the window everywhere: text tokens, and the window with its special tokens.
    window = classifier.window_tokens
    assert f"holds {window} tokens of text ({window + classifier.encoder.special_tokens} with its special tokens)" \
        in raised.value.message
    classify(classifier, [LONG], HEAD)  # now cached under the key error mode shares with head
    with pytest.raises(InvalidRequest, match="80 tokens"):
        classify(classifier, [LONG], ERROR)
    assert len(classify(classifier, ["short"], ERROR)) == 1


def test_request_token_limit_counts_every_window():
    classifier = make_classifier(RecordingPredictor(), max_request_tokens=100)
    with pytest.raises(RequestTooLarge) as raised:
        classify(classifier, [LONG, LONG + " more"])
    assert "limit is 100 tokens" in raised.value.message and raised.value.status_code == 413
    assert len(classify(classifier, ["fits"])) == 1


# ---- admission -----------------------------------------------------------------------------------
def test_expected_wait_sheds_new_work_but_hits_and_an_idle_model_are_always_served():
    predictor = RecordingPredictor(delay=0.1)
    # calls of 16 tokens: the 12 texts of "big" (4 tokens each) queue more than the next round takes
    classifier = make_classifier(predictor, max_queue_wait_ms=50, max_batch_tokens=16)
    classifier.scheduler.meter.rate = 100.0  # tokens per second: a slow model, as measured
    classifier.scheduler.meter.prior = False

    async def scenario():
        await classifier.classify(["warm"], CHUNK)
        big = asyncio.ensure_future(classifier.classify([f"big {i}" for i in range(12)], CHUNK))  # idle: admitted
        for _ in range(1000):  # until its windows are queued (tokenizing runs off the loop: a loaded machine is slow)
            if classifier.scheduler.backlog_beyond_next_round:
                break
            await asyncio.sleep(0.002)
        shed = await asyncio.gather(classifier.classify(["new one"], CHUNK), return_exceptions=True)
        hit = await classifier.classify(["warm"], CHUNK)  # the cache still answers under overload
        await big
        after = await classifier.classify(["new two"], CHUNK)  # backlog drained: admitted again
        return shed[0], hit, after

    shed, hit, after = asyncio.run(scenario())
    assert isinstance(shed, Overloaded) and shed.status_code == 503 and "would wait" in shed.message
    assert len(hit) == len(after) == 1
    assert classifier.scheduler.queued_tokens == 0


def test_a_light_load_is_never_shed_even_when_the_meter_reads_low():
    """Work that fits in the next round of calls starts within about two calls' time: a low reading
    of the meter (part-full calls, or a first sample of one slow call) must not shed 4 users."""
    predictor = RecordingPredictor(delay=0.05)
    classifier = make_classifier(predictor, max_queue_wait_ms=50)  # one call of up to 512 tokens at a time
    classifier.scheduler.meter.rate = 100.0  # as if the first sample had been one slow call
    classifier.scheduler.meter.prior = False

    async def scenario():
        users = [classifier.classify([f"user {user} text {i}" for i in range(10)], CHUNK) for user in range(4)]
        return await asyncio.gather(*users, return_exceptions=True)

    answers = asyncio.run(scenario())
    assert all(isinstance(answer, list) and len(answer) == 10 for answer in answers), answers
    assert classifier.scheduler.round_tokens == 512


def test_prediction_metrics_count_answers_by_version_label_and_source():
    """Texts answered by the model, then by the cache, then by another request's computation."""
    predictor = RecordingPredictor(delay=0.05)
    classifier = make_classifier(predictor)
    stats = classifier.stats
    before = [row[:] for row in stats.answers]
    scored_before = sum(stats.buckets)

    async def scenario():
        await classifier.classify(["longer text here", "x"], CHUNK)            # model: 2 (both POSITIVE)
        await classifier.classify(["longer text here"], CHUNK)                 # cache: 1
        await asyncio.gather(classifier.classify(["joined text"], CHUNK),      # model: 1, shared: 1
                             classifier.classify(["joined text"], CHUNK))

    asyncio.run(scenario())
    positive = classifier.labels.index("POSITIVE")
    delta = [now - then for now, then in zip(stats.answers[positive], before[positive])]
    from transformer.metrics import SOURCES

    assert dict(zip(SOURCES, delta)) == {"cache": 1, "model": 3, "shared": 1}
    assert sum(stats.buckets) - scored_before == 5  # every answer's top score observed once


def test_a_models_text_replacements_name_its_cache_entries_and_change_what_the_model_reads(tmp_path):
    """Emoji read as names live beside the tokenizer, not in the ONNX file (the fingerprint): the keys
    name the table, so answers given under another table (or none) are never read back."""
    shutil.copyfile(default_base() / "tokenizer.json", tmp_path / "tokenizer.json")
    TextReplacements({"\U0001F621": "enraged face"}).write_beside(tmp_path / "tokenizer.json")
    plain = make_classifier(RecordingPredictor())
    named = make_classifier(RecordingPredictor(), bundle_dir=tmp_path)
    digest = named.encoder.replacements.digest
    for mode in Truncation:
        assert named._how[mode] == plain._how[mode] + f".r{digest}"
    angry, smitten = "\U0001F621", "\U0001F60D"
    assert plain.encoder.tokenize([angry])[0].ids == plain.encoder.tokenize([smitten])[0].ids  # both [UNK]
    assert named.encoder.tokenize([angry])[0].tokens == ["[CLS]", "enraged", "face", "[SEP]"]
