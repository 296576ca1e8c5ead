"""Reading the transformer's own /metrics in tests."""

from __future__ import annotations

import urllib.request
from collections import Counter
from typing import Protocol


class HasUrl(Protocol):
    url: str


def request_counts(server: HasUrl) -> Counter:
    """sentiment_requests_total by (protocol, route, status), without the /metrics scrapes themselves."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: Counter = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sentiment_requests_total" and sample.labels.get("route") != "/metrics":
                labels = sample.labels
                counts[(labels["protocol"], labels["route"], labels["status"])] += int(sample.value)
    return counts
