"""The model alone on a bench run's texts: ONNX Runtime on the served ONNX file, tokenization and the
transformer's windows included (the ceiling, in tokens per second, that the stack is compared with)."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

from sentiment.measure.cpu import machine_cpu_seconds
from sentiment.measure.textpool import TextPool, serving_encoder


@dataclass(frozen=True)
class Ceiling:
    tokens_per_s: float          # the texts' tokens (special tokens excluded) per second
    window_tokens_per_s: float   # every window's tokens, special tokens included
    texts_per_s: float
    texts: int
    windows: int
    seconds: float
    batch: int
    others_cpu_s: float | None = None  # CPU seconds of every other process on the machine meanwhile


def mixed_ceiling(onnx_file: Path, bundle_dir: Path, pool: TextPool, threads: int, batch: int = 32,
                  chunk: int = 640, min_seconds: float = 12.0) -> Ceiling:
    """ONNX Runtime on the served ONNX file: the pool's texts in order, `chunk` at a time, each chunk
    tokenized and cut into the transformer's windows (stride 0), its windows sorted by length and run
    in batches of `batch`, tokenization included, until `min_seconds` have passed."""
    from sentiment.model.export import OnnxClassifier
    from sentiment.model.triton_repository import OUTPUT_NAME

    encoder = serving_encoder(bundle_dir)
    runner = OnnxClassifier(onnx_file, encoder, threads=threads)
    texts = [t.text for t in pool.texts]
    warm = sorted((w for text in encoder.windows(texts[:batch]) for w in text.windows), key=lambda e: len(e.ids))
    runner.session.run([OUTPUT_NAME], encoder.pad(warm[-batch:]))
    done = tokens = window_tokens = windows = 0
    machine, own = machine_cpu_seconds(), resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    while True:
        part = [texts[(done + i) % len(texts)] for i in range(chunk)]
        split = encoder.windows(part)
        ordered = sorted((w for text in split for w in text.windows), key=lambda e: len(e.ids))
        for first in range(0, len(ordered), batch):
            runner.session.run([OUTPUT_NAME], encoder.pad(ordered[first:first + batch]))
        done += len(part)
        tokens += sum(text.token_count for text in split)
        window_tokens += sum(text.cost for text in split)
        windows += len(ordered)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            mine = resource.getrusage(resource.RUSAGE_SELF)
            others = machine_cpu_seconds() - machine - (mine.ru_utime + mine.ru_stime - own.ru_utime - own.ru_stime)
            return Ceiling(tokens / elapsed, window_tokens / elapsed, done / elapsed, done, windows, elapsed, batch,
                           round(max(others, 0.0), 1))
