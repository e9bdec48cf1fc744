"""Tables fitted to the terminal: text wraps, columns go in their order, numbers stay whole."""

from __future__ import annotations

import io
import itertools

import pytest
from rich.console import Console

from mercato.clitools import Column, fitted_table

COLUMNS = [
    Column("partition", number=True),
    Column("start", number=True, drop=3),
    Column("end", number=True),
    Column("bytes", number=True, drop=1),
    Column("newest", whole=True, drop=2),
    Column("error"),
]
VALUES = [
    [p, 1_234_567 * p, 22_040_000 + p, 123_456_789_012, "2026-11-26 10:00:00",
     "cannot read /var/lib/mercato/" + "x" * 40 + " [on] and on"]
    for p in range(3)
]  # fmt: skip
ROWS = [[c.text(v) for c, v in zip(COLUMNS, values, strict=True)] for values in VALUES]


def render(width: int) -> tuple[str, list[str]]:
    console = Console(width=width, record=True, file=io.StringIO())
    table, hidden = fitted_table(COLUMNS, ROWS, width, title=None)
    console.print(table)
    return console.export_text(), hidden


@pytest.mark.parametrize("width", [40, 60, 80, 100, 160, 300])
def test_a_table_fits_and_cuts_no_number(width: int) -> None:
    text, hidden = render(width)
    lines = text.splitlines()
    assert max(map(len, lines)) <= width
    assert "…" not in text
    cells = {cell.strip() for line in lines for cell in line.split("│")}
    for values in VALUES:
        for column, value in zip(COLUMNS, values, strict=True):
            if (column.number or column.whole) and column.key not in hidden:
                shown = f"{value:,}" if column.number else value
                assert shown in cells, (width, shown)
    assert "[on]" in text  # brackets in a value are shown, not read as markup


def test_columns_are_left_out_highest_drop_first() -> None:
    hidden = [render(width)[1] for width in (300, 100, 80, 60)]
    assert hidden[0] == []
    for fewer, more in itertools.pairwise(hidden):
        assert set(fewer) <= set(more)
    assert hidden[-1][:1] == ["start"]  # drop=3 goes first
    assert "partition" not in hidden[-1]
    assert "end" not in hidden[-1]  # never dropped
