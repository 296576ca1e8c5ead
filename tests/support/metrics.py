"""Reading the transformer's own /metrics in tests (through sentiment.measure.metrics_page)."""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from sentiment.measure.metrics_page import scrape


class HasUrl(Protocol):
    url: str


def request_counts(server: HasUrl) -> Counter:
    """sentiment_requests_total by (protocol, route, status), without the /metrics scrapes themselves."""
    counts: Counter = Counter()
    for sample in scrape(server.url + "/metrics"):
        if sample.name == "sentiment_requests_total" and sample.labels.get("route") != "/metrics":
            labels = sample.labels
            counts[(labels["protocol"], labels["route"], labels["status"])] += int(sample.value)
    return counts
