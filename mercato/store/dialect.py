"""What differs between the SQL databases a store runs on, behind one small interface.

:class:`~mercato.store.sql.SqlStore` writes each operation once, with statements in SQLite's
placeholders (``?``), and runs them on a :class:`Db`: a driver's connection with its
:class:`Dialect`. A dialect (:class:`~mercato.store.sqlite.SqliteDialect`,
:class:`~mercato.store.postgres.PostgresDialect`) translates the statements, begins read
snapshots and write transactions its database's way, says which driver errors mean the
database is away, and does the bulk operations (a write's rows, a day's rows) as fast as its
database allows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import pyarrow as pa


class Cursor(Protocol):
    """What the operations use of a driver's cursor (sqlite3's, psycopg's)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What the operations use of a driver's connection (sqlite3's, psycopg's)."""

    def execute(self, statement: str, params: Sequence[Any], /) -> Cursor: ...


C = TypeVar("C", bound=Connection)


class Dialect(ABC, Generic[C]):
    """How one database does what :class:`~mercato.store.sql.SqlStore`'s operations
    need."""

    error: type[Exception]
    """The driver's base class of errors."""
    begin_read: str
    """Begins a read snapshot."""
    begin_write: str
    """Begins a write transaction."""
    lock: str
    """Ends a ``SELECT`` whose rows the write transaction goes on to change: locks them."""

    def sql(self, statement: str) -> str:
        """``statement``, written with ``?`` placeholders, in this dialect."""
        return statement

    @abstractmethod
    def total_of_sums(self, column: str) -> str:
        """An aggregate of the sums in ``column`` that never wraps nor fails: the total, or
        the kernel's OVERFLOW if one of them is or the total leaves 64 bits."""

    @abstractmethod
    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
        """A condition that ``column`` is one of ``values``, and its parameters."""

    @abstractmethod
    def in_transaction(self, db: C) -> bool:
        """Whether ``db`` is inside a transaction (one to roll back after an error)."""

    @abstractmethod
    def unavailable(self, exc: Exception) -> bool:
        """Whether the driver's error ``exc`` means the database is away or its disk full."""

    @abstractmethod
    def executemany(self, db: C, statement: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run ``statement`` (in this dialect) once per row."""

    @abstractmethod
    def merge(self, db: C, table: str, version: int, partials: pa.Table) -> None:
        """Merge ``partials`` (as :meth:`prepare` made them) into the rollups ``table`` of
        ``version``, in the caller's write transaction."""

    @abstractmethod
    def insert(self, db: C, table: str, columns: str, rows: Iterable[Sequence[Any]]) -> None:
        """Insert ``rows`` of ``columns`` into ``table``, in the caller's write transaction."""

    def prepare(self, db: C, partials: pa.Table) -> pa.Table:
        """``partials`` ready for :meth:`merge`, before the write transaction begins."""
        return partials

    def make_room(self, db: C, partials: pa.Table) -> None:
        """Before a write transaction: create what the rollups need to hold ``partials``'
        buckets (nothing to do where a table holds any bucket)."""

    def take_turns(self, db: C, name: str, numbers: list[int]) -> None:
        """Make the write transactions that name any of ``numbers`` (in order) under ``name``
        take turns until they end (nothing to do where the transaction holds the database's
        write lock)."""

    def cause(self, exc: Exception) -> BaseException:
        """What made the write fail with ``exc``, for the message of the StoreWriteError."""
        return exc


class Db(Generic[C]):
    """A connection of a store, taking the statements of this module in its dialect."""

    __slots__ = ("dialect", "raw")

    def __init__(self, raw: C, dialect: Dialect[C]) -> None:
        self.raw = raw
        self.dialect = dialect

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Cursor:
        return self.raw.execute(self.dialect.sql(statement), params)

    def rows(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self.execute(statement, params).fetchall()
        return rows

    def value(self, statement: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row, or None without rows."""
        row = self.execute(statement, params).fetchone()
        return None if row is None else row[0]

    def many(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.dialect.executemany(self.raw, self.dialect.sql(statement), rows)


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (a driver's may go on for several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
