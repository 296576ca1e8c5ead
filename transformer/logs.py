"""JSON log lines that join up with traces and metrics: error answers, and a sampled prediction log.

One line per error answer (HTTP 4xx/5xx, gRPC the same rows of `errors.ERROR_TABLE`; shed requests
are the 503s with code `overloaded` and `"shed": true`), with the trace and span id when tracing is
on, and never a text of the request:

    {"time": "...", "level": "warning", "event": "error_answer", "protocol": "rest",
     "route": "/project/bulk-predict", "status": 413, "code": "request_too_large",
     "message": "...", "duration_ms": 0.41, "trace_id": "...", "span_id": "..."}

The prediction log (off unless PREDICTION_LOG_SAMPLE_RATE > 0) writes a sampled fraction of the
answers: the text's cache key (its text part a SHA-256), label, score, model version, source
(cache, model, shared) and the request's latency so far; the raw text only with
PREDICTION_LOG_TEXT=true. Both go to the logger `transformer.requests`, one JSON document per line.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from datetime import datetime, timezone
from typing import Mapping, Sequence

import orjson

from transformer import tracing
from transformer.errors import CLIENT_CLOSED_STATUS

log = logging.getLogger("transformer.requests")
MAX_MESSAGE = 300  # characters of an error message in a log line (messages never quote texts)


def install_handler(stream=None) -> None:
    """Lines of `transformer.requests` as they are (each is a JSON document) on stderr, not through
    KServe's text format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def _line(level: int, document: dict) -> None:
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if tracing.tracer is not None:
        ids = tracing.current_ids()
        if ids is not None:
            document["trace_id"], document["span_id"] = ids
    log.log(level, orjson.dumps({"time": stamp, "level": logging.getLevelName(level).lower(), **document}).decode())


def error_answer(protocol: str, route: str, status: int, code: str | None, message: str | None,
                 started: float) -> None:
    """The line of one error answer (a client that left got none: 499 is counted, not logged)."""
    if status == CLIENT_CLOSED_STATUS:
        return
    code = code or ("internal_error" if status >= 500 else "http_error")
    document = {"event": "error_answer", "protocol": protocol, "route": route, "status": status, "code": code,
                "message": (message or "")[:MAX_MESSAGE],
                "duration_ms": round((time.perf_counter() - started) * 1000, 3)}
    if code == "overloaded":
        document["shed"] = True
    _line(logging.ERROR if status >= 500 else logging.WARNING, document)


class PredictionLog:
    """A sampled line per answered text (see the module docstring)."""

    def __init__(self, sample_rate: float, with_text: bool, labels: Sequence[str], version: str,
                 chance=random.random):
        self.sample_rate = sample_rate
        self.with_text = with_text
        self.labels = list(labels)
        self.version = version
        self._chance = chance

    def record(
        self, started: float, answers: Sequence[tuple[str, Mapping]], texts: Mapping[str, str] | None = None
    ) -> None:
        """`answers`: (source, {cache key: Prediction}) pairs; `texts`: cache key -> raw text, only
        needed with `with_text`."""
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        for source, predictions in answers:
            for key, prediction in predictions.items():
                if self._chance() >= self.sample_rate:
                    continue
                best = prediction.best
                document = {"event": "prediction", "key": key, "label": self.labels[best],
                            "score": round(prediction.probabilities[best], 6), "version": self.version,
                            "source": source, "latency_ms": latency_ms}
                if self.with_text and texts is not None:
                    document["text"] = texts.get(key)
                _line(logging.INFO, document)
