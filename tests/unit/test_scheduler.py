"""The batch scheduler: fair across requests, capped by rows and tokens, and what admission reads."""

import asyncio

import numpy as np
import pytest

from sentiment.model.build import default_base
from transformer.core.scheduler import BatchScheduler, ThroughputMeter
from transformer.core.tokenization import TextEncoder


class SlowPredictor:
    def __init__(self, delay: float = 0.02):
        self.delay = delay
        self.calls: list[list[int]] = []  # per call: the real length of each row

    async def infer(self, inputs):
        self.calls.append(inputs["attention_mask"].sum(axis=1).tolist())
        await asyncio.sleep(self.delay)
        lengths = inputs["attention_mask"].sum(axis=1).astype(np.float32)
        return np.stack([-lengths, lengths], axis=1)


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(default_base() / "tokenizer.json", 64, True, pad_to_multiple_of=8, stride=8)


def windows(encoder, texts):
    return [w for text in encoder.windows(texts) for w in text.windows]


def test_a_short_request_leads_the_next_call_while_a_huge_one_waits(encoder):
    predictor = SlowPredictor()
    scheduler = BatchScheduler(predictor, encoder, max_rows=8, max_batch_tokens=8 * 64, max_concurrent=1)

    async def scenario():
        huge = scheduler.submit(windows(encoder, [" ".join(f"w{i}" for i in range(300))] * 6))  # ~36 long windows
        await asyncio.sleep(0)
        short = scheduler.submit(windows(encoder, ["short one", "short two"]))
        done_short = await asyncio.gather(*short)
        await asyncio.gather(*huge)
        return done_short

    done_short = asyncio.run(scenario())
    first_short_call = next(i for i, call in enumerate(predictor.calls) if min(call) < 10)
    assert first_short_call == 1  # one call of the huge request was already running, then ours
    assert len(predictor.calls) >= 6
    assert len(done_short) == 2 and all(row.shape == (2,) for row in done_short)


def test_results_come_back_in_submission_order(encoder):
    predictor = SlowPredictor(0)
    scheduler = BatchScheduler(predictor, encoder, max_rows=3, max_batch_tokens=10_000, max_concurrent=2)
    texts = ["a", "a b c d e f g h i j", "a b", "a b c d e", "a b c"]
    encodings = windows(encoder, texts)

    async def scenario():
        return await asyncio.gather(*scheduler.submit(encodings))

    results = asyncio.run(scenario())
    assert [row[1] for row in results] == [len(e.ids) for e in encodings]  # each row is its own window's
    assert all(len(call) <= 3 for call in predictor.calls)


def test_calls_respect_the_token_budget_and_the_concurrency(encoder):
    predictor = SlowPredictor(0.01)
    scheduler = BatchScheduler(predictor, encoder, max_rows=64, max_batch_tokens=128, max_concurrent=2)
    running = []

    async def scenario():
        futures = scheduler.submit(windows(encoder, [f"text number {i} with some words" for i in range(40)]))
        while not all(f.done() for f in futures):
            running.append(scheduler._running)
            await asyncio.sleep(0.002)

    asyncio.run(scenario())
    assert max(running) <= 2
    for call in predictor.calls:
        width = encoder.padded_width(max(call))
        assert len(call) * width <= 128


def test_expected_wait_counts_what_runs_ahead_under_round_robin(encoder):
    scheduler = BatchScheduler(SlowPredictor(), encoder, max_rows=8, max_batch_tokens=64, max_concurrent=1,
                               meter=ThroughputMeter(prior_tokens_per_s=100))
    assert not scheduler.backlog_beyond_next_round
    assert scheduler.expected_wait_s(50) == 0  # nothing ahead: its own work is not a wait

    async def scenario():
        scheduler.submit(windows(encoder, [" ".join(f"w{i}" for i in range(300))]))  # a long text: many windows
        scheduler.submit(windows(encoder, ["tiny"]))
        return scheduler.backlog_beyond_next_round, scheduler.expected_wait_s(10), scheduler._running_tokens

    backlogged, wait, running = asyncio.run(scenario())
    assert backlogged
    # ahead of 10 new tokens: at most 10 of each queued request, plus a slot of the calls in flight
    assert wait == pytest.approx((10 + 3 + running) / 100, rel=0.35)


def test_throughput_counts_busy_time_only():
    now = [0.0]
    meter = ThroughputMeter(prior_tokens_per_s=1.0, alpha=1.0, min_sample_s=0.2, clock=lambda: now[0])
    meter.busy()
    now[0] = 0.1
    meter.completed(100)  # 0.1 s busy: not a sample yet
    meter.idle()
    now[0] = 5.0  # a long idle gap is not counted
    meter.busy()
    now[0] = 5.15
    meter.completed(100)
    assert meter.rate == pytest.approx(800.0)  # 200 tokens in 0.25 s of busy time


def test_a_stream_of_short_requests_does_not_starve_a_long_one(encoder):
    predictor = SlowPredictor(0.002)
    scheduler = BatchScheduler(predictor, encoder, max_rows=8, max_batch_tokens=512, max_concurrent=1)

    async def scenario():
        long_text = scheduler.submit(windows(encoder, [" ".join(f"w{i}" for i in range(200))]))
        shorts = 0
        while not all(f.done() for f in long_text) and shorts < 2000:
            scheduler.submit(windows(encoder, [f"short {shorts}"]))  # always someone new waiting
            shorts += 1
            await asyncio.sleep(0.0005)
        return all(f.done() for f in long_text), shorts

    done, shorts = asyncio.run(scenario())
    assert done and shorts < 2000  # it got its share of tokens while new requests kept coming
