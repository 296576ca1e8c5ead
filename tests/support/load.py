"""Closed-loop load for fault tests: clients that send new texts until told to stop, recording every
answer, so a test can say which requests a fault touched and how they ended."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx


def closed_loop_clients(url: str, stop: threading.Event, records: list, workers: int = 4,
                        texts: int = 1) -> ThreadPoolExecutor:
    """`workers` clients posting `texts` new texts per request to /project/bulk-predict until `stop`;
    each answer is appended to `records` as (start, seconds, status or None, body or error)."""
    def worker(index: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            n = 0
            while not stop.is_set():
                n += 1
                started = time.monotonic()
                batch = [f"worker {index} request {n} text {i} {time.time_ns()}: a decent film" for i in range(texts)]
                try:
                    response = client.post("/project/bulk-predict", json={"text": batch})
                    records.append((started, time.monotonic() - started, response.status_code, response.text[:300]))
                except httpx.HTTPError as error:
                    records.append((started, time.monotonic() - started, None, repr(error)))

    pool = ThreadPoolExecutor(workers)
    for index in range(workers):
        pool.submit(worker, index)
    return pool
