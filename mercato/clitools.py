"""What every ``mercato`` command shares: consoles, the error wrapper, the configuration of
the invocation, option parsers, one ``--format`` option, tables that fit the terminal, and a
progress bar that only shows on a terminal.

Commands live beside the role they drive (``mercato/batch/cli.py``, …); :mod:`mercato.cli`
names them in a table and imports one only when it runs. This module is imported by those
commands, never by :mod:`mercato.cli` itself, so ``mercato --help`` does not pay for it.
"""

from __future__ import annotations

import csv
import functools
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, ParamSpec, TypeVar

import click
import msgspec
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from mercato.config import Config, load_config
from mercato.errors import MercatoError

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

TABLE, JSON, CSV = "table", "json", "csv"
_JSON_FLAG = "mercato.json_flag"


def friendly(func: Callable[P, R]) -> Callable[P, R]:
    """Turn Mercato's own errors into one line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except MercatoError as exc:
            errors.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
            sys.exit(1)

    return wrapper


def context_config(ctx: click.Context) -> Config:
    """The configuration of this invocation (``--config`` and ``MERCATO_*``), read once; a
    bad one ends the command with exit status 2."""
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "config" not in obj:
        try:
            obj["config"] = load_config(obj.get("config_path"))
        except MercatoError as exc:
            errors.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
            sys.exit(2)
    config: Config = obj["config"]
    return config


def config_path(ctx: click.Context) -> str | None:
    """The ``--config`` file of this invocation (for processes it starts), if any."""
    path: str | None = ctx.ensure_object(dict).get("config_path")
    return path


@contextmanager
def progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on a terminal (``advance(done, total)``); silent otherwise."""
    if not console.is_terminal:
        yield lambda done, total: None
        return
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


# -- option values ------------------------------------------------------------------------------


def parse_hour_option(name: str, text: str | None) -> datetime | None:
    """A ``--from``/``--to`` value: ``YYYY-MM-DDTHH`` or ``YYYY-MM-DD``, in UTC."""
    if text is None:
        return None
    for pattern in ("%Y-%m-%dT%H", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise MercatoError(f"{name} takes a UTC hour YYYY-MM-DDTHH or a date YYYY-MM-DD, not {text!r}")


def parse_partitions(text: str) -> list[int]:
    """A ``--partitions`` value: comma-separated partition numbers."""
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise MercatoError(f"--partitions takes numbers like 0,1,2, not {text!r}") from None


# -- output -------------------------------------------------------------------------------------


def format_option(*formats: str, json_flag: bool = False) -> Callable[[F], F]:
    """``--format`` with ``formats`` (the first is the default), passed to the command as
    ``fmt``. ``json_flag`` also accepts the older ``--json``, hidden from the help."""
    choices = formats or (TABLE, JSON)

    def decorate(func: F) -> F:
        func = click.option(
            "--format",
            "fmt",
            type=click.Choice(choices),
            default=choices[0],
            show_default=True,
            callback=_json_flag_wins,
            help="How to print the result.",
        )(func)
        if json_flag:
            func = click.option(
                "--json",
                is_flag=True,
                hidden=True,
                expose_value=False,
                is_eager=True,  # seen before --format, whatever the order on the command line
                callback=_note_json_flag,
            )(func)
        return func

    return decorate


def _note_json_flag(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[_JSON_FLAG] = True


def _json_flag_wins(ctx: click.Context, _param: click.Parameter, value: str) -> str:
    return JSON if ctx.meta.get(_JSON_FLAG) else value


def print_json(value: object) -> None:
    """``value`` as one line of JSON on stdout (structs, datetimes and all)."""
    click.echo(msgspec.json.encode(value).decode())


@dataclass(frozen=True)
class Column:
    """A column of a command's tabular output.

    ``key`` names the record's field (and the CSV header); ``header`` is the table's heading.
    A ``number`` is right-aligned and, like any ``whole`` column (times, ids), never cut nor
    wrapped. When the terminal is too narrow for every column, the ones with the highest
    ``drop`` are left out first (0: always kept).
    """

    key: str
    header: str = ""
    number: bool = False
    whole: bool = False
    drop: int = 0
    show: Callable[[Any], str] | None = None  # the value as table text (rich markup)

    @property
    def unbroken(self) -> bool:
        return self.number or self.whole

    def text(self, value: object) -> str:
        if self.show is not None:
            return self.show(value)
        if value is None:
            return ""
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        if isinstance(value, datetime):
            return value.isoformat(timespec="seconds")
        return escape(str(value))  # shown as it is, whatever brackets it holds


TEXT_MIN_WIDTH = 12  # a text column narrower than its content wraps down to this


def print_records(
    fmt: str,
    columns: Sequence[Column],
    records: Sequence[Mapping[str, Any]],
    *,
    title: str | None = None,
) -> None:
    """``records`` as a table fitted to the terminal, as CSV, or as a JSON list."""
    if fmt == JSON:
        print_json(list(records))
    elif fmt == CSV:
        print_csv(columns, records)
    else:
        print_table(columns, records, title=title)


def print_csv(columns: Sequence[Column], records: Sequence[Mapping[str, Any]]) -> None:
    """``records`` as CSV with a header row of the columns' keys; values unformatted."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([c.key for c in columns])
    for record in records:
        writer.writerow([_csv_value(record.get(c.key)) for c in columns])
    sys.stdout.flush()


def _csv_value(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return msgspec.json.encode(value).decode()
    return value


def print_table(
    columns: Sequence[Column],
    records: Sequence[Mapping[str, Any]],
    *,
    title: str | None = None,
    width: int | None = None,
) -> None:
    """``records`` as a table as wide as the terminal at most; see :func:`fitted_table`."""
    rows = [[c.text(record.get(c.key)) for c in columns] for record in records]
    table, hidden = fitted_table(columns, rows, width or console.width, title=title)
    console.print(table)
    if hidden:
        errors.print(
            f"[dim]left out to fit the terminal: {', '.join(hidden)} "
            "(a wider terminal, or --format json, shows them)[/]",
            highlight=False,
        )


def fitted_table(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int, *, title: str | None
) -> tuple[Table, list[str]]:
    """A table of ``rows`` that fits ``width`` without cutting a number: numbers and other
    unbroken columns keep their width, text columns share the rest (each wrapping down to
    :data:`TEXT_MIN_WIDTH` at least), and if that is still too wide the columns with the
    highest ``drop`` are left out. Returns the table and the headers of those left out."""
    widths = [_widths(c, [row[i] for row in rows]) for i, c in enumerate(columns)]
    kept = list(range(len(columns)))
    # droppable columns, the first to go first
    order = sorted((i for i, c in enumerate(columns) if c.drop), key=lambda i: -columns[i].drop)
    while sum(widths[i][0] + 3 for i in kept) + 1 > width and order:
        kept.remove(order.pop(0))
    squeezed: dict[int, int] = {}
    if sum(widths[i][2] + 3 for i in kept) + 1 > width:  # as wide as they like: too wide
        unbroken = [i for i in kept if columns[i].unbroken]
        squeezed = {i: widths[i][0] for i in unbroken}
        squeezed |= _shares(
            {i: widths[i][1] for i in kept if i not in squeezed},
            width - 1 - sum(widths[i][0] + 3 for i in unbroken),
        )
    table = Table(title=title)
    for i in kept:
        column = columns[i]
        table.add_column(
            column.header or column.key,
            justify="right" if column.number else "left",
            width=squeezed.get(i),  # only when squeezed: headings wrap, numbers fit exactly
            overflow="fold",  # a long word wraps onto the next line, never "…"
        )
    for row in rows:
        table.add_row(*(row[i] for i in kept))
    hidden = [columns[i].header or columns[i].key for i in range(len(columns)) if i not in kept]
    return table, hidden


def _widths(column: Column, cells: Sequence[str]) -> tuple[int, int, int]:
    """The least, the wrapped and the natural width of ``column``. An unbroken column's least
    is its widest cell (or heading word), a text's that up to :data:`TEXT_MIN_WIDTH`; the
    natural width has the heading on one line."""
    heading = column.header or column.key
    word = max((len(w) for w in heading.split()), default=0)
    widest = max(max((Text.from_markup(cell).cell_len for cell in cells), default=0), word)
    least = widest if column.unbroken else min(widest, TEXT_MIN_WIDTH)
    return least, widest, max(widest, len(heading))


def _shares(natural: Mapping[int, int], room: int) -> dict[int, int]:
    """Widths for text columns of these ``natural`` widths (cell padding and borders aside)
    in ``room`` characters, when they do not all fit: the narrow keep theirs, the wide share
    the rest equally. Empty when they fit."""
    room -= 3 * len(natural)
    if sum(natural.values()) <= room:
        return {}
    shares = {}
    for k, i in enumerate(sorted(natural, key=natural.__getitem__)):
        shares[i] = max(1, min(natural[i], room // (len(natural) - k)))
        room -= shares[i]
    return shares
