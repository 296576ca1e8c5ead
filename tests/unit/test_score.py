"""`sentiment score`'s pure logic: tables, batches, the checkpoint, and the client's retry and per-row
error handling against scripted HTTP answers (httpx.MockTransport)."""

from __future__ import annotations

import csv
import json

import httpx
import pytest

from sentiment.score.checkpoint import CheckpointMismatch, fresh_progress, load_progress, save_progress, sidecar_of
from sentiment.score.client import (RequestOptions, RetryPolicy, ScoringClient, ScoringStopped, ServerLimits,
                                    retry_after_s)
from sentiment.score.run import ScoreOptions, batches
from sentiment.score.tables import InputFormat, InputTable, OutputWriter, Row, TableError, choose_column


def test_column_choice_and_its_error_lists_the_columns():
    assert choose_column(["id", "Review", "stars"], None) == "Review"
    assert choose_column(["only"], None) == "only"
    assert choose_column(["id", "body"], "id") == "id"
    with pytest.raises(TableError, match="'id', 'stars'"):
        choose_column(["id", "stars"], None)
    with pytest.raises(TableError, match="no column 'txt'.*'id', 'text'"):
        choose_column(["id", "text"], "txt")


def test_csv_rows_keep_their_fields_and_clashing_names_get_a_prefix(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('id,text,label\n1,"multi\nline, quoted",pos\n2,short\n', encoding="utf-8")
    table = InputTable(path, InputFormat.of(path), None)
    rows = list(table.rows())
    assert [row.text for row in rows] == ["multi\nline, quoted", "short"]
    assert rows[1].problem is None and rows[1].fields == ["2", "short"]
    writer = OutputWriter(table, with_ranked=False)
    from sentiment.score.tables import Answer

    out = writer.header() + writer.encode(rows[0], Answer("POSITIVE", 0.75)) + writer.encode(rows[1], Answer(error="x"))
    parsed = list(csv.reader(out.decode().splitlines(keepends=True)))
    assert parsed[0] == ["id", "text", "label", "predicted_label", "score", "error"]
    assert parsed[1] == ["1", "multi\nline, quoted", "pos", "POSITIVE", "0.75", ""]
    assert parsed[2] == ["2", "short", "", "", "", "x"]


def test_jsonl_and_text_rows(tmp_path):
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"id": 1, "review": "good"}\n\n{"id": 2}\nnot json\n', encoding="utf-8")
    table = InputTable(jsonl, InputFormat.of(jsonl), None)
    assert table.text_column == "review"
    rows = list(table.rows())
    assert [r.text for r in rows] == ["good", None, None]
    assert "missing" in rows[1].problem and "not JSON" in rows[2].problem
    text = tmp_path / "in.txt"
    text.write_text("one\r\ntwo\n\n", encoding="utf-8")
    assert [r.text for r in InputTable(text, InputFormat.of(text), None).rows()] == ["one", "two", ""]


def test_batches_respect_count_and_characters():
    rows = [Row(str(i), "x" * n) for i, n in enumerate([10, 10, 10, 50, 5, 5])]
    sizes = [[len(r.text) for r in b] for b in batches(iter(rows), size=lambda: 2, max_chars=30)]
    assert sizes == [[10, 10], [10], [50], [5, 5]]
    shrinking = iter([3, 3, 3, 1, 1, 1, 1, 1, 1, 1])
    sizes = [len(b) for b in batches(iter(rows), size=lambda: next(shrinking), max_chars=1000)]
    assert sizes == [3, 1, 1, 1]


def test_checkpoint_refuses_another_input_or_other_options(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("a\n")
    sidecar = sidecar_of(tmp_path / "out.jsonl")
    progress = fresh_progress(source, {"top_k": None})
    progress.rows_done, progress.output_bytes = 1, 10
    save_progress(sidecar, progress)
    assert load_progress(sidecar, fresh_progress(source, {"top_k": None})).rows_done == 1
    with pytest.raises(CheckpointMismatch, match="top_k"):
        load_progress(sidecar, fresh_progress(source, {"top_k": 2}))
    source.write_text("a\nb\n")
    with pytest.raises(CheckpointMismatch, match="--restart"):
        load_progress(sidecar, fresh_progress(source, {"top_k": None}))


def test_retry_after_forms():
    assert retry_after_s("3") == 3.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_s("soon") is None and retry_after_s(None) is None


LIMITS = ServerLimits(max_texts=4, max_text_chars=20, max_body_bytes=10_000, source="server")


def _client(handler, attempts=4) -> tuple[ScoringClient, httpx.AsyncClient]:
    http = httpx.AsyncClient(base_url="http://server", transport=httpx.MockTransport(handler))
    return ScoringClient(http, RequestOptions(top_k=2), RetryPolicy(attempts=attempts, max_wait_s=0.05, base_s=0.001),
                         LIMITS), http


def _ranked(texts):
    return {"predictions": [[{"label": "POSITIVE" if "good" in t else "NEGATIVE", "score": 0.9}] for t in texts]}


async def test_503_and_429_are_retried_honouring_retry_after_then_answered():
    calls = []

    def handler(request: httpx.Request):
        body = json.loads(request.content)
        calls.append(body)
        if len(calls) == 1:
            return httpx.Response(503, json={"error": "busy", "code": "overloaded"}, headers={"retry-after": "0"})
        if len(calls) == 2:
            return httpx.Response(429, json={"error": "slow down", "code": "overloaded"})
        return httpx.Response(200, json=_ranked(body["text"]))

    client, http = _client(handler)
    async with http:
        results = await client.score(["good", "bad"])
    assert [r.ranked[0]["label"] for r in results] == ["POSITIVE", "NEGATIVE"]
    assert client.retries == 2 and calls[0]["top_k"] == 2


async def test_retries_are_bounded():
    client, http = _client(lambda request: httpx.Response(503, json={"error": "down", "code": "predictor_unavailable"}),
                           attempts=3)
    async with http:
        with pytest.raises(ScoringStopped, match="after 3 tries.*down"):
            await client.score(["a"])
    assert client.retries == 2


async def test_a_text_the_server_refuses_is_that_rows_error_and_the_rest_are_scored():
    def handler(request: httpx.Request):
        texts = json.loads(request.content)["text"]
        for index, text in enumerate(texts):
            if text == "poison":
                return httpx.Response(
                    422, json={"error": f"text[{index}] bad", "code": "invalid_request", "index": index}
                )
        if len(texts) > 2:
            return httpx.Response(413, json={"error": "too many tokens", "code": "request_too_large"})
        return httpx.Response(200, json=_ranked(texts))

    client, http = _client(handler)
    async with http:
        results = await client.score(["good", "poison", "bad", "x" * 21, "good", None])
    assert results[0].ranked and results[2].ranked and results[4].ranked
    assert "text[1] bad" in results[1].error
    assert "21 characters" in results[3].error
    assert results[5].ranked is None and results[5].error is None
    assert client.split_batch_size == 1


async def test_a_refusal_of_the_whole_request_stops_the_run():
    client, http = _client(lambda request: httpx.Response(422, json={"error": "unknown field(s) ['top_k']",
                                                                     "code": "invalid_request"}))
    async with http:
        with pytest.raises(ScoringStopped, match="top_k"):
            await client.score(["a"])


def test_a_text_past_csv_default_field_limit_is_read(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("text\n" + "y" * 200_000 + "\nshort\n", encoding="utf-8")
    assert [len(row.text) for row in InputTable(path, InputFormat.CSV, None).rows()] == [200_000, 5]


def test_input_problems_are_exit_2_with_a_message(tmp_path, capsys):
    from sentiment.score.run import run_score

    missing = ScoreOptions(input=tmp_path / "absent.csv", url="http://127.0.0.1:9")
    assert run_score(missing) == 2 and "absent.csv" in capsys.readouterr().err
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    assert run_score(ScoreOptions(input=latin, url="http://127.0.0.1:9")) == 2
    assert "not UTF-8" in capsys.readouterr().err
