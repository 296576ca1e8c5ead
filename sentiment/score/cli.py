"""`sentiment score`: its flags, turned into `ScoreOptions` at this boundary."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from sentiment.score.client import RequestOptions, RetryPolicy

API_KEY_ENV = "SENTIMENT_API_KEY"


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {number}")
    return number


def _cmd_score(args: argparse.Namespace) -> int:
    from sentiment.score.run import ScoreOptions, run_score

    if not args.verbose:  # httpx logs every request at INFO: thousands of lines under the progress bar
        logging.getLogger("httpx").setLevel(logging.WARNING)
    options = ScoreOptions(
        input=Path(args.input), output=Path(args.output) if args.output else None, url=args.url,
        column=args.column, input_format=args.format, delimiter=args.delimiter,
        request=RequestOptions(truncation=args.truncation, top_k=args.top_k, raw_scores=args.raw_scores),
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None, batch_size=args.batch_size,
        concurrency=args.concurrency, retry=RetryPolicy(attempts=args.retries + 1, max_wait_s=args.max_retry_wait),
        timeout_s=args.timeout, restart=args.restart, progress_bar=not args.no_progress)
    return run_score(options)


def add_score_command(commands) -> None:
    parser = commands.add_parser(
        "score", help="score a CSV, JSONL or text file through the running stack (resumable)",
        description="Sends the file's texts to the running stack's /project/bulk-predict and writes the same rows "
                    "with label and score added (CSV stays CSV; JSONL and text files give JSONL), in input order. "
                    "Interrupted (Ctrl-C, a crash, the server gone)? Run the same command again: it continues "
                    "where the checkpoint (OUTPUT.progress.json) says, each row written once.")
    parser.add_argument(
        "input", help="a .csv/.tsv (header row), .jsonl (one object per line) or text file (one text per line)"
    )
    parser.add_argument("-o", "--output", help="default: INPUT's name with .scored.csv or .scored.jsonl")
    parser.add_argument("--url", default="http://localhost:8000", help="the transformer (default %(default)s)")
    parser.add_argument("--column", help="the text column/field (default: text, review, sentence, content, ... "
                                         "whichever the input has)")
    parser.add_argument("--format", choices=["csv", "jsonl", "text"], help="default: from INPUT's extension")
    parser.add_argument("--delimiter", help="CSV delimiter (default ',' ; tab for .tsv)")
    parser.add_argument("--truncation", choices=["chunk", "head", "error"],
                        help="texts longer than the model's window (default: the server's, chunk)")
    parser.add_argument("--top-k", type=_positive, help="ask for the k best labels; adds a predictions column")
    parser.add_argument("--raw-scores", action="store_true", help="ask for raw scores; adds a predictions column")
    parser.add_argument("--api-key", help=f"sent as Authorization: Bearer KEY (default: ${API_KEY_ENV})")
    parser.add_argument(
        "--batch-size", type=_positive, help="texts per request (default 64, never above the server's limit)"
    )
    parser.add_argument("--concurrency", type=_positive, default=2, help="requests in flight (default %(default)s)")
    parser.add_argument("--retries", type=int, default=7,
                        help="retries of a request on 429/503/504 or a lost connection, honouring Retry-After "
                             "(default %(default)s)")
    parser.add_argument("--max-retry-wait", type=float, default=30.0, help="longest wait before a retry, seconds")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default %(default)s)")
    parser.add_argument("--restart", action="store_true", help="ignore an interrupted run's progress and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_cmd_score)
