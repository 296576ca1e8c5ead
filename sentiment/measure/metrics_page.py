"""Reading a Prometheus /metrics page (the transformer's, Triton's): one parser, prometheus_client's,
for the measurements and the tests alike."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

Series = tuple[str, tuple[tuple[str, str], ...]]  # a sample's name and its sorted labels
_COUNTER = re.compile(r"^# TYPE (\S+) counter\s*$", re.MULTILINE)


def read_page(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def parse(text: str) -> list[Sample]:
    """Every sample of a text exposition, named as exposed, so as PromQL names it: the parser appends
    `_total` to a counter that has none (Triton's `nv_inference_count`), and this takes it off again."""
    bare = {name for name in _COUNTER.findall(text) if not name.endswith("_total")}
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name in bare and sample.name == family.name + "_total":
                sample = sample._replace(name=family.name)
            samples.append(sample)
    return samples


def scrape(url: str, timeout: float = 5.0) -> list[Sample]:
    return parse(read_page(url, timeout))


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(sample.value for sample in samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def totals(samples: Iterable[Sample]) -> dict[str, float]:
    """Each sample name's sum over its label sets; histogram buckets and `_created` stamps left out."""
    sums: dict[str, float] = {}
    for sample in samples:
        if not sample.name.endswith(("_bucket", "_created")):
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def series(samples: Iterable[Sample]) -> set[Series]:
    return {(sample.name, tuple(sorted(sample.labels.items()))) for sample in samples}
