"""Cached exports of users' checkpoints are pruned by when they were last served; the export log
says int8's accuracy change in words that read right either way."""

import os
import time

from sentiment.model.export import VariantReport, choose_variant
from sentiment.model.export_cache import LAST_USED, cached_exports, mark_used, prune_exports


def _export(home, name: str, idle_days: float, size: int = 1000):
    folder = home / "exports" / name
    (folder / "sentiment" / "1").mkdir(parents=True)
    (folder / "sentiment" / "1" / "model.onnx").write_bytes(b"x" * size)
    mark_used(folder)
    then = time.time() - idle_days * 86400
    os.utime(folder / LAST_USED, (then, then))
    return folder


def test_prune_removes_only_exports_unused_for_longer_than_the_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("SENTIMENT_CACHE_DIR", str(tmp_path))
    old, recent = _export(tmp_path, "old", 30, size=5000), _export(tmp_path, "recent", 1)
    assert [e.path.name for e in cached_exports()] == ["old", "recent"]
    listed = prune_exports(7, dry_run=True)
    assert [e.path for e in listed] == [old] and listed[0].size_bytes >= 5000 and old.exists()
    assert [e.path for e in prune_exports(7)] == [old]
    assert not old.exists() and recent.exists()
    assert [e.path for e in prune_exports(0)] == [recent] and not recent.exists()


def test_prune_of_an_empty_cache_removes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SENTIMENT_CACHE_DIR", str(tmp_path))
    assert prune_exports(0) == []


def test_the_variant_reason_says_gains_and_losses_without_a_negative_loss():
    fp32 = VariantReport("fp32", 90.0, dev_accuracy=0.8695)
    variant, reason = choose_variant(fp32, VariantReport("int8", 23.0, dev_accuracy=0.8735), 1.0)
    assert variant == "int8" and "int8 gains 0.40 points of dev accuracy" in reason and "-" not in reason
    variant, reason = choose_variant(fp32, VariantReport("int8", 23.0, dev_accuracy=0.8605), 1.0)
    assert variant == "int8" and "int8 loses 0.90 points" in reason
    variant, reason = choose_variant(fp32, VariantReport("int8", 23.0, dev_accuracy=0.8495), 1.0)
    assert variant == "fp32" and "int8 loses 2.00 points" in reason and "over the limit" in reason


def test_the_variant_reason_states_the_size_not_a_speed_claim():
    fp32 = VariantReport("fp32", 91.0, dev_accuracy=0.88, sentences_per_second={"1": 150.0, "32": 120.0})
    int8 = VariantReport("int8", 23.0, dev_accuracy=0.879, sentences_per_second={"1": 100.0, "32": 180.0})
    assert choose_variant(fp32, int8, 1.0)[1] == (
        "int8 loses 0.10 points of dev accuracy against fp32 (it may lose up to 1.0) and is 4.0x smaller")
