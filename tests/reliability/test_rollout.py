"""A model rollout under load, and its rollback, on a stack started the way `sentiment up` starts it.

Two tiny BERTs with different random weights stand for the old and the new model: they answer very
differently, so an answer from the wrong version, or a request mixing versions, cannot hide.
Both are fp32 exports (deterministic), so every answer can be held to what Redis stores for that
text under each version's fingerprint.
"""

from __future__ import annotations

import random
import shutil
import threading
import time

import httpx
import numpy as np
import pytest

from sentiment.model.export_options import ExportOptions
from sentiment.model.triton_repository import bundle_dir
from sentiment.stack.rollout import RolloutOptions, rollout
from tests.conftest import TransformerServer, TritonServer, metric_total, started, wait_until
from tests.support.stacks import supervised_stack
from tests.support.tiny import build_tiny_checkpoint
from transformer.bundle import ModelBundle
from transformer.core.prediction import answer_mode, cache_key, decode_value
from transformer.core.tokenization import normalize_text

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("require_redis_server")]

POOL = [f"review {i}: the {random.Random(i).choice(['plot', 'cast', 'score', 'ending'])} was "
        f"{random.Random(i + 1).choice(['wonderful', 'dull', 'moving', 'a mess', 'fine'])}" for i in range(240)]
WORKERS = 4


class LoadLoop:
    """Workers posting 1-6 pool texts per request until stopped; every response is kept."""

    def __init__(self, url: str):
        self.url = url
        self.stop = threading.Event()
        self.records: list[tuple[float, list[str], int, dict | str]] = []
        self.threads = [threading.Thread(target=self._run, args=(seed,)) for seed in range(WORKERS)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                texts = rng.sample(POOL, rng.randint(1, 6))
                response = client.post("/project/bulk-predict", json={"text": texts})
                body = response.json() if response.status_code == 200 else response.text
                self.records.append((time.monotonic(), texts, response.status_code, body))

    def __enter__(self) -> "LoadLoop":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


@pytest.fixture(scope="module")
def two_versions(tiny_repositories, tmp_path_factory):
    """A repository serving version 1 (tiny BERT, seed 1) and a second checkpoint (seed 2) to roll out."""
    repository = tmp_path_factory.mktemp("rollout-repository")
    shutil.copytree(tiny_repositories["bert"], repository, dirs_exist_ok=True)
    checkpoint = build_tiny_checkpoint("bert", tmp_path_factory.mktemp("rollout-v2") / "bert", seed=2)
    return repository, checkpoint


def redis_answers(redis_url: str, repository, version: str, texts) -> dict[str, tuple[float, ...] | None]:
    """What Redis holds for each text under the key of `version` (chunk mode, the default)."""
    import redis
    from transformer.settings import Settings

    bundle = ModelBundle.load(bundle_dir(repository, version))
    settings = Settings()
    mode = answer_mode("chunk", bundle.max_length, settings.window_stride, settings.aggregation)
    keys = [
        cache_key(settings.cache_prefix, bundle.fingerprint, mode, normalize_text(t, bundle.lowercase)) for t in texts
    ]
    values = redis.Redis.from_url(redis_url).mget(keys)
    return {text: (decoded.probabilities if (decoded := decode_value(raw, bundle.labels)) else None)
            for text, raw in zip(texts, values)}


def version_of(body: dict, texts: list[str], answers: dict[str, dict]) -> set[str]:
    """The versions whose stored answers every text of this response equals (empty: none does)."""
    matching = set()
    for version, stored in answers.items():
        if all(stored[text] is not None and np.allclose([p["score"] for p in sorted(ranked, key=lambda p: p["label"])],
                                                         stored[text], atol=1e-5)
               for text, ranked in zip(texts, body["predictions"])):
            matching.add(version)
    return matching


def cache_hit_ratio(url: str, seconds: float) -> float:
    """Texts answered from a cache over all texts received, in the next `seconds`."""
    hits_before = metric_total(url, "sentiment_texts_total", source="cache")
    received_before = metric_total(url, "sentiment_texts_received_total")
    time.sleep(seconds)
    return ((metric_total(url, "sentiment_texts_total", source="cache") - hits_before)
            / max(1.0, metric_total(url, "sentiment_texts_received_total") - received_before))


def test_rollout_and_rollback_under_load_lose_nothing_and_never_mix(two_versions, tmp_path):
    repository, checkpoint = two_versions
    logs = tmp_path / "logs"
    with supervised_stack(repository, logs) as (stack, _messages):
        url = stack.url
        with LoadLoop(url) as load:
            with httpx.Client(base_url=url, timeout=30) as client:  # every pool text served once: the replay sample
                for start in range(0, len(POOL), 6):
                    assert client.post("/project/bulk-predict", json={"text": POOL[start:start + 6]}).status_code == 200
            time.sleep(1)
            hit_ratio_before = cache_hit_ratio(url, seconds=2)
            forward = rollout(RolloutOptions(logs=logs, checkpoint=checkpoint, export=ExportOptions(variant="fp32")),
                              say=lambda _line: None)
            switched = time.monotonic()
            hit_ratio = cache_hit_ratio(url, seconds=2)
            back = rollout(RolloutOptions(logs=logs, to_version="1"), say=lambda _line: None)
            time.sleep(1)
        answers = {version: redis_answers(stack.redis_url, repository, version, POOL) for version in ("1", "2")}
    records = load.records
    failed = [r for r in records if r[2] != 200]
    unexplained = [r for r in records if r[2] == 200 and len(version_of(r[3], r[1], answers)) != 1]
    during = [r for r in records if r[0] >= switched]
    direct_flips = sum(int(np.argmax(answers["1"][t])) != int(np.argmax(answers["2"][t])) for t in POOL)
    print(f"\n[rollout] {len(records)} requests under load ({len(during)} after the switch), {len(failed)} failed; "
          f"forward {forward.seconds}, back {back.seconds}; hit ratio in the 2 s before the rollout "
          f"{hit_ratio_before:.2f}, in the 2 s after the switch {hit_ratio:.2f}; "
          f"shadow report: {forward.report['shadow']['flips']} flips of {forward.report['shadow']['sample']} "
          f"(direct comparison: {direct_flips} of {len(POOL)})")
    assert len(records) > 200 and not failed, failed[:3]
    assert not unexplained, unexplained[:3]  # each response is one version's answers, never a mix
    assert direct_flips > 0  # the versions really differ: a mix would have been seen
    assert forward.report["shadow"]["sample"] == len(POOL)
    assert forward.report["shadow"]["flips"] == direct_flips
    assert hit_ratio_before >= 0.9  # the load repeats the pool, which is cached
    assert hit_ratio >= 0.9  # the replay warmed the new version's entries
    assert (forward.from_version, forward.to_version, back.to_version) == ("1", "2", "1")


def test_a_transformer_pinned_to_a_version_triton_does_not_serve_is_not_ready(tiny_repositories, logs_dir,
                                                                             copy_tree):
    repository = copy_tree(tiny_repositories["bert"], "pinned-elsewhere")
    bundle_file = bundle_dir(repository, "1") / "bundle.json"
    bundle_file.write_text(ModelBundle.load(bundle_file.parent).model_copy(update={"version": "2"}).model_dump_json())
    for triton in started(TritonServer(repository, logs_dir / "pinned-triton")):
        server = TransformerServer(triton, logs_dir, extra_args=["--model_bundle", str(bundle_file.parent)])
        server.start(wait_healthy=False)
        try:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                wait_until(lambda: "not ready" in client.get("/project/health").json().get("reason", ""), 10,
                           message="health names the missing version")
                assert client.get("/v2/models/sentiment/ready").status_code != 200
                refused = client.post("/project/bulk-predict", json={"text": [f"new {time.time_ns()}"]})
                assert refused.status_code == 503 and refused.json()["code"] == "predictor_unavailable"
                assert client.get("/project/live").status_code == 200
        finally:
            server.stop()
