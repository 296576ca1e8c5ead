"""One bulk-predict request through the transformer in-process, to see what it crosses and costs.

The request goes through the real REST transport, core, classifier, scheduler and tokenizer; only
the predictor is replaced by an in-memory one (logits of the right shape), so no Triton is needed.

  count     modules and calls of `transformer/` that one uncached bulk-predict of a few texts crosses
            (a sys.setprofile/threading.setprofile count; a coroutine's resumption counts as a call)
  overhead  microseconds per request (the best of --rounds) with tracing off and with tracing on but
            the request unsampled (OTEL_TRACES_SAMPLER=always_off), for a cache hit and for new texts

To compare two builds, run it from each with PYTHONPATH naming that build's checkout, e.g.
  git archive <commit> transformer | tar -x -C /tmp/before
  PYTHONPATH=/tmp/before .venv/bin/python scripts/request_path.py overhead
  PYTHONPATH=. .venv/bin/python scripts/request_path.py overhead
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

BUNDLE = "model_repository/sentiment/1/bundle"


class MemoryPredictor:
    """Logits from the count of real tokens of each row (so answers differ by text)."""

    version = "1"
    protocol = "memory"

    def __init__(self, labels: int):
        self.labels = labels

    async def infer(self, inputs):
        lengths = inputs["attention_mask"].sum(axis=1).astype(np.float32)
        return np.stack([lengths / (10 + i) for i in range(self.labels)], axis=1)

    async def model_ready(self):
        return True

    async def close(self):
        pass


def build(bundle: str):
    """The REST transport over a core whose predictor is in memory and verified."""
    from transformer.core.service import ServingCore
    from transformer.settings import Settings
    from transformer.transport.rest import RestTransport

    settings = Settings(model_bundle=bundle)
    core = ServingCore.from_settings(settings)
    classifier = core.generation.classifier
    classifier.scheduler.predictor = MemoryPredictor(len(classifier.labels))
    core.generation.monitor.status.ready, core.generation.monitor.status.fingerprint = True, "match"
    return RestTransport(None, core, settings.model_name)


async def post(app, texts: list[str]) -> bytes:
    body = json.dumps({"text": texts}).encode()
    scope = {"type": "http", "method": "POST", "path": "/project/bulk-predict", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    received = iter([{"type": "http.request", "body": body, "more_body": False}])
    sent: list[dict] = []

    async def receive():
        message = next(received, None)
        if message is None:  # a client that still waits for its answer
            await asyncio.Event().wait()
        return message

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 200, sent
    return sent[1]["body"]


def count(bundle: str, texts: int) -> dict:
    """Project modules and calls crossed by one uncached request (after a warm-up request)."""
    root = str(Path(__import__("transformer").__file__).parent)
    calls: Counter = Counter()

    def profile(frame, event, _arg):
        if event == "call" and frame.f_code.co_filename.startswith(root):
            calls[(frame.f_code.co_filename, frame.f_code.co_qualname)] += 1

    async def run():
        app = build(bundle)
        await post(app, ["warm-up text to start the thread pool"])
        batch = [f"a new text number {i} about a film" for i in range(texts)]
        threading.setprofile(profile)
        sys.setprofile(profile)
        try:
            await post(app, batch)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]

    asyncio.run(run())
    modules = sorted({os.path.relpath(path, os.path.dirname(root)) for path, _ in calls})
    return {"modules": len(modules), "calls": sum(calls.values()), "functions": len(calls), "module_names": modules}


def overhead(bundle: str, requests: int, rounds: int) -> dict:
    """Microseconds per request: tracing off, then on with every request unsampled, in turns."""
    from transformer import tracing

    os.environ["OTEL_TRACES_SAMPLER"] = "always_off"

    async def timed(app, make_texts) -> float:
        started = time.perf_counter()
        for i in range(requests):
            await post(app, make_texts(i))
        return (time.perf_counter() - started) / requests * 1e6

    async def run() -> dict:
        app = build(bundle)
        hit = ["the same text, answered from the cache"] * 10
        await post(app, hit)
        tracing.setup(("console",))
        on, results = tracing.tracer, {}
        for turn in range(rounds):
            for mode in ("off", "unsampled"):
                tracing.tracer = on if mode == "unsampled" else None
                results.setdefault(f"hit_{mode}_us", []).append(await timed(app, lambda i: hit))
                results.setdefault(f"new_{mode}_us", []).append(await timed(
                    app, lambda i, mode=mode, turn=turn: [f"{mode} {turn} {i} {j} a new text" for j in range(10)]))
        tracing.tracer = None
        # The best round of each: on a shared machine the others measure its other load as well.
        return {name: round(min(values), 1) for name, values in results.items()}

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("count", "overhead"))
    parser.add_argument("--bundle", default=BUNDLE, help="a model bundle directory (default: %(default)s)")
    parser.add_argument("--texts", type=int, default=3, help="count: texts in the request")
    parser.add_argument("--requests", type=int, default=2000, help="overhead: requests per timing")
    parser.add_argument("--rounds", type=int, default=5, help="overhead: turns of off/unsampled")
    args = parser.parse_args()
    import logging

    logging.disable(logging.INFO)
    result = count(args.bundle, args.texts) if args.what == "count" else overhead(args.bundle, args.requests,
                                                                                  args.rounds)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
