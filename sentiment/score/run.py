"""One `sentiment score` run: rows in, batches out to the server concurrently, answers written in
input order with a checkpoint, a progress bar, and a summary at the end."""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import httpx

from sentiment.score.checkpoint import (CheckpointMismatch, Progress, fresh_progress, load_progress, save_progress,
                                        sidecar_of)
from sentiment.score.client import (RequestOptions, RetryPolicy, ScoringClient, ScoringStopped, ServerLimits,
                                    TextResult, cache_counters)
from sentiment.score.tables import Answer, InputFormat, InputTable, OutputWriter, Row, TableError

log = logging.getLogger(__name__)

DEFAULT_BATCH = 64       # texts per request: the server re-batches across requests, so more buys little
BODY_SHARE = 0.8         # of the server's body limit a batch's texts may fill (JSON escapes, the rest)
CHECKPOINT_EVERY_S = 1.0


@dataclass(frozen=True)
class ScoreOptions:
    input: Path
    output: Path | None = None
    url: str = "http://localhost:8000"
    column: str | None = None
    input_format: str | None = None
    delimiter: str | None = None
    request: RequestOptions = field(default_factory=RequestOptions)
    api_key: str | None = None
    batch_size: int | None = None     # texts per request; default: min(64, the server's limit)
    concurrency: int = 2
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float = 120.0
    restart: bool = False
    progress_bar: bool = True

    def resume_key(self) -> dict:
        """What must be equal for a run to continue another one's output."""
        return {"column": self.column, "format": self.input_format, "delimiter": self.delimiter,
                "truncation": self.request.truncation, "top_k": self.request.top_k,
                "raw_scores": self.request.raw_scores}


@dataclass
class RunReport:
    progress: Progress
    output: Path
    rows_this_run: int
    seconds: float
    resumed_from: int
    limits: ServerLimits
    retries: int
    cache: dict[str, float] | None
    complete: bool

    @property
    def texts_per_second(self) -> float:
        return self.rows_this_run / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        p = self.progress
        state = "done" if self.complete else "INTERRUPTED (run the same command again to continue)"
        lines = [f"{state}: {p.rows_done} rows in {self.output}" +
                 (f" (resumed at row {self.resumed_from})" if self.resumed_from else ""),
                 f"this run: {self.rows_this_run} rows in {self.seconds:.1f} s = {self.texts_per_second:.0f} texts/s, "
                 f"{self.retries} requests retried; limits from the {self.limits.source}: {self.limits.max_texts} "
                 f"texts/request, {self.limits.max_text_chars} characters/text"]
        total = sum(p.label_counts.values())
        counts = ", ".join(f"{label} {n} ({n / total:.1%})" for label, n in p.ranked_labels()) if total else "none"
        mean = f"{p.mean_score:.4f}" if p.mean_score is not None else "n/a"
        lines.append(f"labels: {counts}; mean score of the chosen label {mean}; rows with an error: {p.errors}")
        if self.cache is None:
            lines.append("cache hits: not available (the server's /metrics could not be read)")
        else:
            asked = sum(self.cache.values())
            hits = self.cache.get("cache", 0.0)
            share = f" ({hits / asked:.1%})" if asked else ""
            lines.append(
                f"cache hits (server-wide during this run, from /metrics sentiment_texts_total): "
                f"{hits:.0f} of {asked:.0f} distinct texts per request{share}; computed "
                f"{self.cache.get('model', 0):.0f}, shared with a concurrent request {self.cache.get('shared', 0):.0f}"
            )
        return lines


def default_output(table: InputTable, writer: OutputWriter) -> Path:
    return table.path.with_name(table.path.stem + ".scored" + writer.suffix)


def batches(rows: Iterator[Row], size: Callable[[], int], max_chars: int) -> Iterator[list[Row]]:
    """Consecutive rows, at most `size()` per batch (read per batch: it shrinks after the server refused
    a batch for its size) and about `max_chars` of text (one longer text alone)."""
    batch: list[Row] = []
    chars = 0
    for row in rows:
        length = len(row.text or "")
        if batch and (len(batch) >= size() or chars + length > max_chars):
            yield batch
            batch, chars = [], 0
        batch.append(row)
        chars += length
    if batch:
        yield batch


def answer_of(row: Row, result: TextResult, keep_ranked: bool) -> Answer:
    if row.problem is not None:
        return Answer(error=row.problem)
    if result.error is not None:
        return Answer(error=result.error)
    ranked = result.ranked or []
    if not ranked:
        return Answer(error="the server answered no label")
    best = ranked[0]
    return Answer(best.get("label"), best.get("score"), None, ranked if keep_ranked else None)


class OrderedOutput:
    """Appends answered batches in input order; checkpoints at most once a second (and at the end)."""

    def __init__(self, path: Path, sidecar: Path, progress: Progress, writer: OutputWriter, keep_ranked: bool):
        self.path = path
        self.sidecar = sidecar
        self.progress = progress
        self.writer = writer
        self.keep_ranked = keep_ranked
        with path.open("ab") as handle:  # cut back to the last checkpoint: what followed is written again
            handle.truncate(progress.output_bytes)
        self.handle = path.open("ab")
        if progress.output_bytes == 0:
            self.handle.write(writer.header())
            self.checkpoint()
        self.last_checkpoint = time.monotonic()

    def write(self, rows: list[Row], results: list[TextResult]) -> None:
        chunks = []
        for row, result in zip(rows, results):
            answer = answer_of(row, result, self.keep_ranked)
            self.progress.add(answer.label, answer.score)
            chunks.append(self.writer.encode(row, answer))
        self.handle.write(b"".join(chunks))
        self.progress.rows_done += len(rows)
        if time.monotonic() - self.last_checkpoint >= CHECKPOINT_EVERY_S:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Output on disk first, then the sidecar that vouches for it."""
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.progress.output_bytes = self.handle.tell()
        save_progress(self.sidecar, self.progress)
        self.last_checkpoint = time.monotonic()

    def close(self) -> None:
        self.checkpoint()
        self.handle.close()


def prepare(options: ScoreOptions) -> tuple[InputTable, OutputWriter, Path, Progress]:
    fmt = InputFormat.of(options.input, options.input_format)
    table = InputTable(options.input, fmt, options.column, options.delimiter)
    keep_ranked = options.request.top_k is not None or options.request.raw_scores
    writer = OutputWriter(table, keep_ranked)
    output = options.output or default_output(table, writer)
    sidecar = sidecar_of(output)
    expected = fresh_progress(options.input, options.resume_key())
    if options.restart:
        sidecar.unlink(missing_ok=True)
        output.unlink(missing_ok=True)
    progress = load_progress(sidecar, expected)
    if progress is not None and (not output.exists() or output.stat().st_size < progress.output_bytes):
        raise CheckpointMismatch(f"{output} is shorter than its checkpoint {sidecar} says ({progress.output_bytes} "
                                 "bytes): it was cut or replaced; pass --restart to start over")
    if progress is None:
        if output.exists():
            raise CheckpointMismatch(f"{output} exists and no interrupted run of it is recorded ({sidecar} is absent): "
                                     "pass --restart to score again into it, or another -o OUTPUT")
        progress = expected
    return table, writer, output, progress


async def score_file(options: ScoreOptions) -> RunReport:
    table, writer, output, progress = prepare(options)
    sidecar = sidecar_of(output)
    resumed_from = progress.rows_done
    total = table.count()  # reads the whole input once: a file that cannot be read fails before any request
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    timeout = httpx.Timeout(options.timeout_s, connect=10.0)
    pool = httpx.Limits(max_connections=options.concurrency + 2, max_keepalive_connections=options.concurrency + 2)
    async with httpx.AsyncClient(base_url=options.url.rstrip("/"), headers=headers, timeout=timeout,
                                 limits=pool) as http:
        limits = await ScoringClient.read_limits(http)
        client = ScoringClient(http, options.request, options.retry, limits)
        size = min(options.batch_size or DEFAULT_BATCH, limits.max_texts)
        max_chars = int(limits.max_body_bytes * BODY_SHARE)
        before = await cache_counters(http)
        output_rows = OrderedOutput(output, sidecar, progress, writer, writer.with_ranked)
        started = time.monotonic()
        bar = _progress_bar(total, progress.rows_done, options.progress_bar)
        complete = False
        try:
            rows = _skip(table.rows(), progress.rows_done)
            def batch_size() -> int:
                return min(size, client.split_batch_size or size)

            await _pipeline(client, batches(rows, batch_size, max_chars), output_rows, options.concurrency, bar)
            complete = True
        finally:
            output_rows.close()
            bar.close()
            seconds = time.monotonic() - started
        after = await cache_counters(http)
    if complete:
        sidecar.unlink(missing_ok=True)
    cache = (
        {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after} if before is not None and after is not None else None
    )
    return RunReport(progress, output, progress.rows_done - resumed_from, seconds, resumed_from, limits,
                     client.retries, cache, complete)


def _skip(rows: Iterator[Row], count: int) -> Iterator[Row]:
    for index, row in enumerate(rows):
        if index >= count:
            yield row


async def _pipeline(client: ScoringClient, work: Iterator[list[Row]], output: OrderedOutput, concurrency: int,
                    bar) -> None:
    """Up to `concurrency` requests in flight; answers are written strictly in input order, and no more
    than 2 x `concurrency` answered batches wait for an earlier one."""
    in_flight: dict[int, asyncio.Task] = {}
    done: dict[int, tuple[list[Row], list[TextResult]]] = {}
    next_seq = next_to_write = 0
    exhausted = False

    async def one(rows: list[Row]) -> tuple[list[Row], list[TextResult]]:
        return rows, await client.score([row.text if row.problem is None else None for row in rows])

    try:
        while True:
            while not exhausted and len(in_flight) < concurrency and next_seq - next_to_write < 2 * concurrency:
                rows = next(work, None)
                if rows is None:
                    exhausted = True
                    break
                in_flight[next_seq] = asyncio.create_task(one(rows))
                next_seq += 1
            if not in_flight:
                return
            finished, _ = await asyncio.wait(in_flight.values(), return_when=asyncio.FIRST_COMPLETED)
            for seq, task in list(in_flight.items()):
                if task in finished:
                    del in_flight[seq]
                    done[seq] = task.result()  # raises ScoringStopped: the finally below cancels the rest
            while next_to_write in done:
                rows, results = done.pop(next_to_write)
                output.write(rows, results)
                bar.update(len(rows))
                next_to_write += 1
    finally:
        for task in in_flight.values():
            task.cancel()
        if in_flight:
            await asyncio.gather(*in_flight.values(), return_exceptions=True)


def _progress_bar(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="text", unit_scale=True, smoothing=0.1, dynamic_ncols=True,
                disable=not enabled, file=sys.stderr, desc="scoring")


def run_score(options: ScoreOptions) -> int:
    """The CLI's entry: 0 done, 1 stopped by the server (resumable), 2 bad input or options, 130 interrupted."""
    try:
        report = asyncio.run(score_file(options))
    except (TableError, CheckpointMismatch) as error:
        print(f"sentiment score: {error}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as error:
        print(f"sentiment score: {options.input} is not UTF-8 text ({error.reason} at byte {error.start} of a "
              "line): convert it, e.g. iconv -f latin1 -t utf-8", file=sys.stderr)
        return 2
    except (OSError, csv.Error) as error:
        print(f"sentiment score: cannot read or write: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sentiment score: interrupted; the rows written so far are checkpointed: run the same command again "
              "to continue", file=sys.stderr)
        raise
    except ScoringStopped as error:
        print(f"sentiment score: stopped: {error}\n(the rows done so far are kept: run the same command again to "
              "continue)", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line, file=sys.stderr)
    return 0
