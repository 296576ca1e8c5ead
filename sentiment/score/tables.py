"""The rows of an input file (CSV, JSONL or plain text) and their scored copies, byte for byte
appendable: each output row is encoded on its own, so the output can be cut back to a checkpoint."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, Sequence

import orjson

# Tried in this order when --column is not given (case-insensitive).
TEXT_COLUMN_NAMES = ("text", "review", "sentence", "content", "body", "comment", "message", "tweet", "document")
# What scoring adds to each row; a name the input already uses gets this prefix.
ADDED_FIELDS = ("label", "score", "error")
DETAIL_FIELD = "predictions"
CLASH_PREFIX = "predicted_"


class TableError(ValueError):
    """The input cannot be read as asked (unknown column, unreadable header); says what to pass."""


class InputFormat(str, Enum):
    CSV = "csv"
    JSONL = "jsonl"
    TEXT = "text"

    @classmethod
    def of(cls, path: Path, explicit: str | None = None) -> "InputFormat":
        if explicit:
            return cls(explicit)
        suffix = path.suffix.lower()
        if suffix in (".csv", ".tsv"):
            return cls.CSV
        if suffix in (".jsonl", ".ndjson", ".json"):
            return cls.JSONL
        return cls.TEXT


@dataclass(slots=True)
class Row:
    """One input row: its original fields, the text to score, or why it has none."""

    fields: Any                 # list[str] (CSV), dict (JSONL), str (plain text)
    text: str | None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """What scoring adds to a row: the best label and its score, or an error; `ranked` with --top-k/--raw-scores."""

    label: str | None = None
    score: float | None = None
    error: str | None = None
    ranked: list | None = None


def choose_column(columns: Sequence[str], wanted: str | None) -> str:
    """`wanted` when the input has it, else the first usual text column name; an error lists the columns."""
    listed = ", ".join(repr(c) for c in columns) or "(none)"
    if wanted is not None:
        if wanted in columns:
            return wanted
        raise TableError(f"the input has no column {wanted!r}; its columns are: {listed}")
    lowered = {column.lower(): column for column in reversed(columns)}
    for name in TEXT_COLUMN_NAMES:
        if name in lowered:
            return lowered[name]
    if len(columns) == 1:
        return columns[0]
    raise TableError(f"which column holds the text? pass --column NAME; the columns are: {listed}")


def output_names(columns: Sequence[str], with_ranked: bool) -> dict[str, str]:
    """Added field -> the name it gets in the output (prefixed where the input already has it)."""
    names = {}
    for field in ADDED_FIELDS + ((DETAIL_FIELD,) if with_ranked else ()):
        names[field] = CLASH_PREFIX + field if field in columns else field
    return names


class InputTable:
    """Reads rows lazily; `columns` and `text_column` are known once it is opened."""

    def __init__(self, path: Path, fmt: InputFormat, column: str | None, delimiter: str | None = None):
        self.path = path
        self.format = fmt
        self.delimiter = delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
        self.columns = self._columns()
        self.text_column = "text" if fmt is InputFormat.TEXT else choose_column(self.columns, column)
        self._index = self.columns.index(self.text_column) if fmt is InputFormat.CSV else -1

    def _open(self):
        return self.path.open("r", encoding="utf-8-sig", newline="" if self.format is InputFormat.CSV else None)

    def _columns(self) -> list[str]:
        if self.format is InputFormat.TEXT:
            return ["text"]
        with self._open() as handle:
            if self.format is InputFormat.CSV:
                header = next(csv.reader(handle, delimiter=self.delimiter), None)
                if not header:
                    raise TableError(f"{self.path} has no header row: the first row must name the columns")
                return header
            for line in handle:
                if line.strip():
                    try:
                        first = orjson.loads(line)
                    except orjson.JSONDecodeError as error:
                        raise TableError(f"{self.path}: the first line is not JSON ({error})") from None
                    if not isinstance(first, dict):
                        raise TableError(f"{self.path}: each line must be a JSON object")
                    return list(first)
        return []

    def rows(self) -> Iterator[Row]:
        with self._open() as handle:
            if self.format is InputFormat.CSV:
                reader = csv.reader(handle, delimiter=self.delimiter)
                next(reader, None)
                for values in reader:
                    if self._index < len(values):
                        yield Row(values, values[self._index])
                    else:
                        yield Row(values, None, f"the row has no {self.text_column!r} field")
            elif self.format is InputFormat.JSONL:
                for line in handle:
                    if line.strip():
                        yield self._json_row(line)
            else:
                for line in handle:
                    text = line.rstrip("\r\n")
                    yield Row(text, text)

    def _json_row(self, line: str) -> Row:
        try:
            document = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            return Row({"line": line.rstrip("\r\n")[:200]}, None, f"the line is not JSON ({error})")
        if not isinstance(document, dict):
            return Row({"value": document}, None, "the line is not a JSON object")
        text = document.get(self.text_column)
        if not isinstance(text, str):
            return Row(document, None, f"{self.text_column!r} is missing or not a string")
        return Row(document, text)

    def count(self) -> int:
        return sum(1 for _ in self.rows())


class OutputWriter:
    """Encodes scored rows as bytes in the input's own format (CSV stays CSV; JSONL and text give JSONL)."""

    def __init__(self, table: InputTable, with_ranked: bool):
        self.table = table
        self.names = output_names(table.columns, with_ranked)
        self.with_ranked = with_ranked
        self.csv = table.format is InputFormat.CSV

    @property
    def suffix(self) -> str:
        return ".csv" if self.csv and self.table.delimiter == "," else ".tsv" if self.csv else ".jsonl"

    def header(self) -> bytes:
        if not self.csv:
            return b""
        return self._csv_line(list(self.table.columns) + list(self.names.values()))

    def encode(self, row: Row, answer: Answer) -> bytes:
        added: dict[str, Any] = {self.names["label"]: answer.label, self.names["score"]: answer.score,
                                 self.names["error"]: answer.error}
        if self.with_ranked:
            added[self.names[DETAIL_FIELD]] = answer.ranked
        if self.csv:
            values = list(row.fields) + [""] * (len(self.table.columns) - len(row.fields))
            ranked = added.pop(self.names[DETAIL_FIELD], None) if self.with_ranked else None
            extra = ["" if v is None else (repr(v) if isinstance(v, float) else v) for v in added.values()]
            if self.with_ranked:
                extra.append(orjson.dumps(ranked).decode() if ranked is not None else "")
            return self._csv_line(values + extra)
        base = row.fields if isinstance(row.fields, dict) else {"text": row.fields}
        return orjson.dumps({**base, **added}) + b"\n"

    def _csv_line(self, values: list[str]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, delimiter=self.table.delimiter, lineterminator="\n").writerow(values)
        return buffer.getvalue().encode("utf-8")
