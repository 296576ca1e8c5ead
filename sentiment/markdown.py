"""Markdown tables: the one writer of the benchmark reports and the model evaluations."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], numeric_from: int = 1,
                   text_columns: Sequence[int] = ()) -> list[str]:
    """A markdown table; columns from `numeric_from` on are right-aligned (numbers), except `text_columns`."""
    align = ["---" if i < numeric_from or i in text_columns else "---:" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|",
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]
