"""The mixed-length workload of `sentiment bench`: its text pool, the parsing of its k6 and
Prometheus numbers, and its report section."""

import json
import re

import pytest

from sentiment.measure.bench import WORKLOADS, BenchOptions
from sentiment.measure.k6 import LoadResult, LoadShape, parse_summary
from sentiment.durations import duration_seconds
from sentiment.measure.ceiling import Ceiling
from sentiment.measure.metrics_page import parse, series, total, totals
from sentiment.measure.mixed import mixed_report
from sentiment.measure.stack_probe import stack_diagnostics
from sentiment.measure.textpool import (
    PREDICATES, SUBJECTS, TextMix, TextPool, generate_pool, pool_size, sentence, tokenizer_counter,
)
from sentiment.model.build import default_base
from sentiment.paths import LOADTEST_DIR
from transformer.core.tokenization import TextEncoder, normalize_text


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(default_base() / "tokenizer.json", max_length=128, uses_token_type_ids=True, stride=0)


@pytest.fixture(scope="module")
def pool(encoder) -> TextPool:
    return generate_pool(3000, tokenizer_counter(encoder), seed=7, run_id="1764300000")


# ---- the pool ---------------------------------------------------------------------------------------
def test_the_mix_is_drawn_in_its_proportions(pool):
    shares = pool.shares()
    assert shares["short"] == pytest.approx(0.80, abs=0.025)
    assert shares["medium"] == pytest.approx(0.15, abs=0.02)
    assert shares["long"] == pytest.approx(0.05, abs=0.012)
    assert len(pool.texts) == 3000


def test_every_text_has_the_serving_tokenizers_count_within_its_range(pool, encoder):
    counts = [w.token_count for w in encoder.windows([t.text for t in pool.texts])]
    assert counts == [t.tokens for t in pool.texts]
    for text in pool.texts:
        if text.size == "medium":
            assert 100 <= text.tokens <= 400
        elif text.size == "long":
            assert 1000 <= text.tokens <= 3000
        else:  # one of the k6 workload's sentences, then the unique tail
            body, tail = text.text.rsplit(" (", 1)
            assert body in {sentence(n) for n in range(len(SUBJECTS) * len(PREDICATES))} and tail.endswith(")")
            assert text.tokens < 40
    longs = [t.tokens for t in pool.texts if t.size == "long"]
    assert max(longs) - min(longs) > 1000  # spread over the range, not stuck at one end


def test_every_text_is_new_even_to_a_normalizing_cache(pool):
    keys = {normalize_text(t.text, lowercase=True) for t in pool.texts}
    assert len(keys) == len(pool.texts)


def test_the_pool_is_determined_by_seed_and_run_id(encoder):
    count = tokenizer_counter(encoder)
    first, again = generate_pool(300, count, seed=3, run_id="r"), generate_pool(300, count, seed=3, run_id="r")
    assert first.texts == again.texts
    other_seed = generate_pool(300, count, seed=4, run_id="r")
    assert [t.size for t in other_seed.texts] != [t.size for t in first.texts]
    other_run = generate_pool(300, count, seed=3, run_id="s")
    assert [t.size for t in other_run.texts] == [t.size for t in first.texts]  # same mix, new texts
    assert not {t.text for t in other_run.texts} & {t.text for t in first.texts}


def test_a_mix_must_add_up_and_describes_itself():
    assert TextMix().describe() == ("80 % short (one short sentence like the other workloads'), 15 % medium "
                                    "(100–400 tokens), 5 % long (1,000–3,000 tokens)")
    with pytest.raises(ValueError):
        TextMix((TextMix().classes[0],))


def test_the_pool_file_is_what_simulate_js_reads(pool, tmp_path):
    path = pool.write(tmp_path / "pool.json")
    data = json.loads(path.read_text())
    assert set(data["texts"][0]) == {"text", "tokens", "size"} and len(data["texts"]) == len(pool.texts)
    assert TextPool.read(path).texts == pool.texts


def test_the_short_sentences_are_simulate_js_sentences():
    script = (LOADTEST_DIR / "simulate.js").read_text()

    def js_list(name: str) -> tuple[str, ...]:
        body = re.search(rf"const {name} = \[(.*?)\];", script, re.S)[1]
        return tuple(item.replace("\\'", "'") for item in re.findall(r"'((?:[^'\\]|\\.)*)'", body))

    assert js_list("SUBJECTS") == SUBJECTS and js_list("PREDICATES") == PREDICATES
    assert "open(TEXT_POOL_FILE)" in script


def test_the_pool_outlasts_a_run():
    assert pool_size(LoadShape(ramp_up="10s", hold="60s", ramp_down="5s")) == 17000  # 85 s at 200 texts/s
    assert pool_size(LoadShape(ramp_up="5s", hold="1m30s", ramp_down="5s")) == 22000
    assert pool_size(LoadShape(ramp_up="1s", hold="1s", ramp_down="1s")) == 2600   # 10 s of graceful stop added
    assert pool_size(LoadShape(ramp_up="0s", hold="0s", ramp_down="0s")) == 2000   # the least


# ---- k6 and Prometheus numbers ------------------------------------------------------------------------
def pool_summary() -> dict:
    trend = lambda p99, count: {"values": {"med": p99 / 3, "p(99)": p99, "count": count}}  # noqa: E731
    return {"state": {"testRunDurationMs": 75500.0}, "metrics": {
        "http_req_duration{scenario:load}": {"values": {"med": 90.0, "p(99)": 900.0}},
        "http_reqs{scenario:load}": {"values": {"rate": 9.0, "count": 680}},
        "http_req_failed{scenario:load}": {"values": {"rate": 0.02}},
        "texts_classified": {"values": {"rate": 88.0, "count": 6640}},
        "tokens_classified": {"values": {"rate": 13000.5, "count": 981500}},
        "pool_request_duration": trend(2500.0, 664),
        "pool_request_duration{size:short}": trend(240.0, 70),
        "pool_request_duration{size:medium}": trend(480.0, 330),
        "pool_request_duration{size:long}": trend(2600.0, 264),
        "pool_request_duration{size:nothing}": {"values": {"count": 0}},
        "shed_requests{size:short}": {"values": {"count": 0}},
        "shed_requests{size:long}": {"values": {"count": 16}},
        "pool_wrapped_texts": {"values": {"count": 0}},
        "pool_requests_given_up": {"values": {"count": 2}},
    }}


def test_parse_summary_reads_the_pool_metrics():
    result = parse_summary(pool_summary(), "mixed")
    assert result.tokens_per_s == 13000.5 and result.texts_per_s == 88.0
    assert (result.short_p99_ms, result.short_requests) == (240.0, 70)
    assert (result.request_p99_ms, result.request_p50_ms) == (2500.0, pytest.approx(833.33, abs=0.01))
    assert result.p99_by_size == {"short": 240.0, "medium": 480.0, "long": 2600.0}
    assert result.requests_by_size == {"short": 70, "medium": 330, "long": 264}
    assert result.shed_by_size == {"short": 0, "long": 16} and result.wrapped_texts == 0 and result.given_up == 2
    assert result.duration_s == 75.5


def test_a_summary_without_a_pool_has_no_pool_numbers():
    result = parse_summary({"metrics": {"http_reqs{scenario:load}": {"values": {"rate": 1.0, "count": 9}},
                                        "pool_request_duration{size:short}": {"values": {"count": 0}}}}, "new")
    assert result.tokens_per_s is None and result.short_p99_ms is None and result.short_requests == 0
    assert result.p99_by_size is None and result.shed_by_size is None and result.duration_s is None


def test_prometheus_text_keeps_names_as_exposed_and_sums_label_sets():
    samples = parse('# HELP nv_inference_count x\n# TYPE nv_inference_count counter\n'
                    'nv_inference_count{model="sentiment",version="1"} 7\n'
                    '# TYPE sentiment_text_tokens histogram\n'
                    'sentiment_text_tokens_bucket{le="8.0"} 3.0\nsentiment_text_tokens_bucket{le="+Inf"} 4.0\n'
                    'sentiment_text_tokens_sum 123.0\nsentiment_text_tokens_count 4.0\n'
                    '# TYPE sentiment_texts_total counter\n'
                    'sentiment_texts_total{source="model"} 5.0\nsentiment_texts_total{source="cache"} 2.0\n'
                    'sentiment_text_tokens_created 1.7e+09\n')
    values = totals(samples)
    assert values["nv_inference_count"] == 7 and values["sentiment_text_tokens_sum"] == 123  # as PromQL names them
    assert values["sentiment_texts_total"] == 7 and total(samples, "sentiment_texts_total", source="model") == 5
    assert not any(name.endswith(("_bucket", "_created")) for name in values)
    assert ("sentiment_texts_total", (("source", "cache"),)) in series(samples) and len(samples) == 8


@pytest.mark.parametrize("duration, seconds", [("500ms", 0.5), ("5s", 5), ("2m", 120), ("1m30s", 90), ("1h", 3600),
                                               ("2.5s", 2.5), ("7", 7)])
def test_k6_and_prometheus_durations_in_seconds(duration, seconds):
    assert duration_seconds(duration) == seconds


@pytest.mark.parametrize("duration", ["", "5x", "1m 30s", "s", "-1s", "1s5"])
def test_a_duration_that_is_none_says_so(duration):
    with pytest.raises(ValueError, match="is not a duration"):
        duration_seconds(duration)


def test_stack_diagnostics_from_counter_deltas():
    delta = {"transformer:sentiment_text_tokens_sum": 30000, "transformer:sentiment_text_tokens_count": 200,
             "transformer:sentiment_windows_total": 400, "transformer:sentiment_predictor_batch_size_count": 100,
             "transformer:sentiment_predictor_batch_size_sum": 400,
             "transformer:sentiment_predictor_batch_tokens_sum": 40000,
             "transformer:sentiment_predictor_latency_seconds_sum": 5.0,
             "triton:nv_inference_exec_count": 50, "triton:nv_inference_count": 100,
             "triton:nv_inference_request_success": 100, "triton:nv_inference_compute_infer_duration_us": 4e6,
             "triton:nv_inference_queue_duration_us": 2e5}
    g = stack_diagnostics(delta, 10.0, [0, 100, 300, 0], {"triton": 15.0, "machine": 19.0}, 10.2, special_tokens=2)
    assert g["tokens_per_s"] == 3000 and g["windows_per_text"] == 2 and g["windows_per_call"] == 4
    assert g["padded_tokens_per_call"] == 400 and g["real_token_share"] == pytest.approx(30800 / 40000, abs=1e-3)
    assert g["predictor_call_ms"] == 50 and g["triton_rows_per_execution"] == 2
    assert g["triton_compute_ms_per_execution"] == 80 and g["triton_queue_ms_per_request"] == 2
    assert g["queued_tokens_mean"] == 100 and g["queue_empty_share"] == 0.5
    empty = stack_diagnostics({}, 10.0, [], {}, 10.0)
    assert empty["windows_per_call"] is None and empty["queued_tokens_mean"] is None


# ---- the report ----------------------------------------------------------------------------------------
def test_the_mixed_section_has_the_table_and_the_ratios(pool, tmp_path):
    stack = parse_summary(pool_summary(), "stack")
    classic = LoadResult("classic", 1.0, 10.0, 0.0, 900.0, 0, 0, 4000.0, 0, 0, 10, tokens_per_s=1500.0,
                         request_p50_ms=1000.0, request_p99_ms=5000.0, short_p99_ms=1200.0, short_requests=3)
    ceiling = Ceiling(tokens_per_s=15000.0, window_tokens_per_s=16000.0, texts_per_s=100.0, texts=1280, windows=2600,
                      seconds=12.5, batch=32)
    new = {"this stack": parse_summary({"metrics": {"texts_classified": {"values": {"rate": 900.0}},
                                                    "http_req_duration{scenario:load}": {"values": {"p(99)": 200.0}}}},
                                       "new")}
    diagnostics = stack_diagnostics({"transformer:sentiment_text_tokens_sum": 980000,
                                     "transformer:sentiment_text_tokens_count": 6600}, 75.5, [], {}, 76.0)
    report = mixed_report("sentiment bench --workloads mixed new", pool, 10, LoadShape(), ceiling, classic, stack,
                          diagnostics, new, 1200.0, 2, "int8")
    text = report.render()
    assert text.startswith("## Mixed-length workload") and "- command: `sentiment bench --workloads mixed new`" in text
    assert "80 % short" in text and "5 % long (1,000–3,000 tokens)" in text
    assert "| this stack | 88.0 | 13,000 | 87 % | 833.3 | 2,500.0 | 240.0 (70) | 0 / 0 / 16 |" in text
    assert "| model alone (ONNX Runtime" in text and "| 15,000 | 100 % |" in text
    assert "**this stack: 87 % of the model alone's tokens/s**" in text
    assert "tokens/s ×8.7" in text and "short-request p99 ×0.20" in text
    assert "long 2,600.0 ms (264); shed attempts long 16; 2 requests still shed after 10 retries" in text
    assert "| this stack | 900 | 75 % |" in text  # every text new against the short-sentence ceiling

    document = tmp_path / "BENCHMARKS.md"
    document.write_text("# Benchmarks\n\nhand-written\n\n<!-- bench-results -->\nold results\n\n"
                        "<!-- mixed-results -->\nold mixed\n\n<!-- lever-results -->\nold levers\n")
    report.replace_section(document, "mixed-results")
    written = document.read_text()
    assert "old mixed" not in written and "old results" in written and "old levers" in written
    assert written.index("hand-written") < written.index("old results") < written.index("Mixed-length workload")
    assert written.index("Mixed-length workload") < written.index("old levers")


def test_only_a_run_of_every_generated_workload_rewrites_their_section():
    assert WORKLOADS["mixed"].pool and not WORKLOADS["new"].pool
    assert BenchOptions().writes_general_section() and "mixed" in BenchOptions().workloads
    partial = BenchOptions(workloads=("mixed", "new"))
    assert partial.general_workloads() == ["new"] and not partial.writes_general_section()
    assert not BenchOptions(workloads=("mixed",)).general_workloads()
