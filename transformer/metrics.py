"""Prometheus metrics of the transformer, in the default registry that KServe serves on /metrics.

Every label has a bounded set of values: protocol (rest, grpc), route (a fixed list), status (HTTP
status codes; gRPC calls are counted with the HTTP status of their row in `errors.ERROR_TABLE`).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable, Sequence

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

REQUESTS = Counter("sentiment_requests_total", "Requests by protocol, route and status (499: the client went away)",
                   ["protocol", "route", "status"])
REQUEST_LATENCY = Histogram("sentiment_request_duration_seconds", "Request latency by protocol and route",
                            ["protocol", "route"], buckets=_LATENCY_BUCKETS)
REQUEST_BYTES = Histogram("sentiment_request_size_bytes", "Body size of inference requests", ["protocol", "route"],
                          buckets=(100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 1_000_000, 4_000_000))
INFLIGHT = Gauge("sentiment_inflight_requests", "Inference requests being served (bodies complete, not yet answered)")
SHED = Counter("sentiment_shed_requests_total", "Requests refused with 503 to bound latency", ["reason"])
QUEUED_TOKENS = Gauge("sentiment_queued_tokens", "Tokens of windows waiting for or in a predictor call")
THROUGHPUT = Gauge("sentiment_model_throughput_tokens_per_second", "Measured model throughput (EWMA) used for shedding")
TEXTS_PER_REQUEST = Histogram("sentiment_texts_per_request", "Texts in one classification request",
                              buckets=(1, 2, 5, 10, 20, 50, 100, 256))
TEXTS_RECEIVED = Counter(
    "sentiment_texts_received_total", "Texts sent by clients in admitted requests (repeats included)"
)
TEXTS = Counter("sentiment_texts_total", "Distinct texts of each request by where the answer came from: cache, model "
                "(computed for this request) or shared (an identical text another request was computing)", ["source"])
TEXT_TOKENS = Histogram("sentiment_text_tokens", "Tokens of each text the model computed",
                        buckets=(8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384))
WINDOWS = Counter(
    "sentiment_windows_total", "Windows the model computed (a text longer than the model's window has several)"
)
LONG_TEXTS = Counter("sentiment_long_texts_total", "Computed texts longer than the model's window, by truncation mode",
                     ["mode"])
CACHE_LOOKUPS = Counter(
    "sentiment_cache_lookups_total", "Cache lookups per text by tier and result", ["tier", "result"]
)
CACHE_ERRORS = Counter("sentiment_cache_errors_total", "Cache operations that failed (served without cache)",
                       ["operation", "reason"])
CACHE_CORRUPT = Counter(
    "sentiment_cache_corrupt_values_total", "Cache values that could not be decoded (treated as misses)"
)
SINGLE_FLIGHT_JOINS = Counter("sentiment_singleflight_joins_total", "Texts that waited for an identical in-flight miss")
TOKENIZE_SECONDS = Histogram("sentiment_tokenize_seconds", "Tokenization time per batch of misses",
                             buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0))
PREDICTOR_BATCH_SIZE = Histogram("sentiment_predictor_batch_size", "Windows per call to the predictor",
                                 buckets=(1, 2, 4, 8, 16, 32, 64, 128))
PREDICTOR_BATCH_TOKENS = Histogram(
    "sentiment_predictor_batch_tokens",
    "Padded tokens (rows x length) per predictor call",
    buckets=(64, 256, 512, 1024, 2048, 4096, 8192, 16384),
)
PREDICTOR_LATENCY = Histogram("sentiment_predictor_latency_seconds", "Predictor call latency", buckets=_LATENCY_BUCKETS)
PREDICTOR_ERRORS = Counter("sentiment_predictor_errors_total", "Failed predictor calls", ["reason"])
PREDICTOR_READY = Gauge("sentiment_predictor_ready", "1 when the predictor is ready and serves our model fingerprint")
API_KEY_CHECKS = Counter("sentiment_api_key_checks_total", "API key checks of calls that need a key (API_KEYS set), "
                         "by outcome: accepted, missing, wrong", ["outcome"])
API_KEY_RELOADS = Counter("sentiment_api_key_reloads_total", "Re-reads of the API keys file (SIGHUP or a change), by "
                          "result: loaded, failed (the keys already loaded stay)", ["result"])
API_KEYS_LOADED = Gauge("sentiment_api_keys_loaded", "API keys in use (0: API_KEYS unset, every route open)")


def record_lookups(tier: str, found: Sequence[bytes | None]) -> None:
    hits = sum(value is not None for value in found)
    if hits:
        CACHE_LOOKUPS.labels(tier=tier, result="hit").inc(hits)
    if len(found) - hits:
        CACHE_LOOKUPS.labels(tier=tier, result="miss").inc(len(found) - hits)


SCORE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
SOURCES = ("cache", "model", "shared")


class PredictionStats:
    """What the model answers, per model version: answers by top label and by where they came from
    (`sentiment_predictions_total{version,label,source}`) and the top score's distribution
    (`sentiment_prediction_top_score{version}`). Kept in plain lists and exposed by a collector: a
    request of ten texts costs a few microseconds, where ten `observe()` calls would cost fifteen.
    Labels are bounded: versions (one or two at a time, one per rollout), the model's labels, three sources.
    """

    def __init__(self):
        self._versions: dict[str, "VersionStats"] = {}
        REGISTRY.register(self)

    def for_version(self, version: str, labels: Sequence[str]) -> "VersionStats":
        stats = self._versions.get(version)
        if stats is None or stats.labels != tuple(labels):
            stats = self._versions[version] = VersionStats(tuple(labels))
        return stats

    def collect(self):
        answers = CounterMetricFamily("sentiment_predictions", "Answers by model version, top label and source "
                                      "(cache, model, shared)", labels=["version", "label", "source"])
        scores = HistogramMetricFamily("sentiment_prediction_top_score", "Top label's probability of each answer",
                                       labels=["version"])
        for version, stats in self._versions.items():
            for label_index, label in enumerate(stats.labels):
                for source_index, source in enumerate(SOURCES):
                    answers.add_metric([version, label, source], stats.answers[label_index][source_index])
            cumulative, buckets = 0, []
            for bound, count in zip(SCORE_BUCKETS, stats.buckets):
                cumulative += count
                buckets.append((str(bound), cumulative))
            buckets.append(("+Inf", cumulative + stats.buckets[-1]))
            scores.add_metric([version], buckets, stats.score_sum)
        yield answers
        yield scores


class VersionStats:
    __slots__ = ("labels", "answers", "buckets", "score_sum")

    def __init__(self, labels: tuple[str, ...]):
        self.labels = labels
        self.answers = [[0] * len(SOURCES) for _ in labels]
        self.buckets = [0] * (len(SCORE_BUCKETS) + 1)
        self.score_sum = 0.0

    def record(self, probabilities_of_each: Iterable[Sequence[float]], source: int) -> None:
        """One answer per distinct text of a request, all from one `source` (an index into SOURCES)."""
        answers, buckets = self.answers, self.buckets
        for probabilities in probabilities_of_each:
            top = max(probabilities)
            answers[probabilities.index(top)][source] += 1
            buckets[bisect_left(SCORE_BUCKETS, top)] += 1
            self.score_sum += top


PREDICTIONS = PredictionStats()
