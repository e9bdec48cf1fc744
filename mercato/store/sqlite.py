"""The embedded serving store: one SQLite file in WAL mode.

Why these settings:

* **WAL** lets the query API's readers (threads or other processes) read while the
  aggregator writes; each read sees the last committed transaction.
* **synchronous=NORMAL**: a commit is atomic but the last ones may be lost on power failure.
  Nothing is lost for good: the consumers' offsets are committed with the rows they account
  for, so the aggregator re-reads the log from the older offsets that came with the older data
  and counts nothing twice.
* Rollups are ``WITHOUT ROWID`` tables keyed ``(version, merchant_id, metric, dimension,
  member, bucket)``: a merchant's range read is one contiguous scan of the primary key, and
  writes sorted in key order touch neighbouring pages.
* One connection per thread at a time, from a small pool. Connections are made with
  ``check_same_thread=False`` only so ``close()`` may close them from any thread; the pool
  never hands one connection to two threads at once.

The operations are :class:`~mercato.store.sql.SqlStore`'s; this module holds the connection
pool, the schema and the dialect: a write transaction is ``BEGIN IMMEDIATE`` (the write lock
up front, so a busy writer waits at ``BEGIN`` for ``busy_timeout`` instead of failing half
way when a read transaction would need upgrading), a read snapshot a deferred ``BEGIN``; a
write's rows go in sorted, by ``executemany`` of one upsert whose sketches unite in the
registered function ``merge_sketches`` (the kernel's); rows that replace stored ones (a sealed
hour, local days) by ``executemany`` of a plain insert in key order, after deleting the old
ones; a full or failing disk makes the store unavailable.

The schema is created and upgraded by the store itself: ``PRAGMA user_version`` is the number
of :data:`MIGRATIONS` applied; a database newer than this code is refused.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
import tempfile
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import pyarrow as pa

from mercato.metrics.kernel import PARTIAL_SCHEMA, add_sums, merge_sketches, sort_partials
from mercato.store.dialect import Db, Dialect
from mercato.store.errors import (
    StoreClosedError,
    StoreError,
    StoreSchemaError,
    StoreUnavailableError,
)
from mercato.store.schema import Types, invalid_column, tables
from mercato.store.sql import FINAL, SPEED, SqlStore, rows_of, upsert

if TYPE_CHECKING:
    from mercato.config import StoreConfig


def _rollup_table(name: str) -> str:
    return f"""
        CREATE TABLE {name} (
            version     INTEGER NOT NULL,
            merchant_id TEXT    NOT NULL,
            metric      TEXT    NOT NULL,
            dimension   TEXT    NOT NULL,
            member      TEXT    NOT NULL,
            bucket      INTEGER NOT NULL,
            count       INTEGER,
            sum         INTEGER,
            min         INTEGER,
            max         INTEGER,
            sketch      BLOB,
            PRIMARY KEY (version, merchant_id, metric, dimension, member, bucket)
        ) WITHOUT ROWID
    """


TYPES = Types(
    serial="INTEGER PRIMARY KEY",  # the rowid
    integer="INTEGER",
    small="INTEGER",
    key="TEXT",
    text="TEXT",
    keyed=" WITHOUT ROWID",  # the table is its primary key's b-tree
)

# Append only: a released migration is never edited, a change is a new entry.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        *tables(TYPES, "definition_versions", "serving_version"),
        _rollup_table("speed_rollups"),
        _rollup_table("final_rollups"),
        *tables(TYPES, "consumer_offsets", "merchants"),
        """
        CREATE TABLE job_runs (
            id          INTEGER PRIMARY KEY,
            job         TEXT    NOT NULL,
            params      TEXT    NOT NULL DEFAULT '{}',  -- JSON
            attempt     INTEGER NOT NULL DEFAULT 1,
            status      TEXT    NOT NULL,
            started_at  INTEGER NOT NULL,  -- epoch milliseconds
            finished_at INTEGER,
            error       TEXT
        )
        """,
        "CREATE INDEX job_runs_by_job ON job_runs (job, started_at)",
    ),
    (  # 2: the batch layer and the scheduler
        *tables(TYPES, "leases", "sealed_hours", "watermarks"),
        _rollup_table("daily_rollups").replace("bucket ", "day ").replace("bucket)", "day)"),
        "ALTER TABLE job_runs ADD COLUMN output TEXT",
        # a seal replaces an hour of final rows across merchants
        "CREATE INDEX final_rollups_by_bucket ON final_rollups (version, bucket)",
    ),
    (  # 3: promote and rollback
        *tables(TYPES, "serving_changes"),
    ),
    (  # 4: events a metric matched but could not use (see mercato.metrics.kernel)
        *invalid_column(TYPES),
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def _upsert(table: str) -> str:
    return upsert(
        table,
        f"VALUES ({', '.join('?' * (1 + len(PARTIAL_SCHEMA.names)))})",
        least="min",
        greatest="max",
        sketch=f"""CASE
            WHEN {table}.sketch IS NULL THEN excluded.sketch
            WHEN excluded.sketch IS NULL THEN {table}.sketch
            ELSE merge_sketches({table}.sketch, excluded.sketch)
        END""",
        fits="typeof({a} + {b}) = 'integer'",  # an integer sum beyond 64 bits is a float
    )


UPSERTS = {SPEED: _upsert(SPEED), FINAL: _upsert(FINAL)}

# The exception a sketch merge raised inside SQLite, which only reports that "a user-defined
# function raised"; kept per thread so the write can name the real cause.
_function_failure = threading.local()


def _merge_two(left: bytes, right: bytes) -> bytes | None:
    try:
        return merge_sketches([left, right])
    except Exception as exc:
        _function_failure.exc = exc
        raise


class _CheckedSum:
    """The aggregate ``checked_sum``: sums added as the kernel adds them (add_sums)."""

    def __init__(self) -> None:
        self.total: int | None = None

    def step(self, value: int | None) -> None:
        self.total = add_sums(self.total, value)

    def finalize(self) -> int | None:
        return self.total


class SqliteDialect(Dialect[sqlite3.Connection]):
    """SQLite's way: ``?``, ``IN (…)``, the database's write lock, sketches merged in SQL."""

    error = sqlite3.Error
    begin_read = "BEGIN"  # deferred: the snapshot is taken by the first read
    begin_write = "BEGIN IMMEDIATE"
    lock = ""  # the write transaction holds the database's write lock

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
        return f"{column} IN ({', '.join('?' * len(values))})", tuple(values)

    def total_of_sums(self, column: str) -> str:
        return f"checked_sum({column})"  # SQLite's sum() raises on overflow

    def in_transaction(self, db: sqlite3.Connection) -> bool:
        return db.in_transaction

    def unavailable(self, exc: Exception) -> bool:
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)

    def executemany(
        self, db: sqlite3.Connection, statement: str, rows: Iterable[Sequence[Any]]
    ) -> None:
        db.executemany(statement, rows)

    def prepare(self, db: sqlite3.Connection, partials: pa.Table) -> pa.Table:
        return sort_partials(partials)  # key order: neighbouring pages

    def merge(self, db: sqlite3.Connection, table: str, version: int, partials: pa.Table) -> None:
        _function_failure.exc = None
        db.executemany(UPSERTS[table], rows_of(version, partials))

    def insert(
        self, db: sqlite3.Connection, table: str, columns: str, rows: Iterable[Sequence[Any]]
    ) -> None:
        marks = ", ".join("?" * len(columns.split(", ")))
        db.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)

    def cause(self, exc: Exception) -> BaseException:
        failure: BaseException | None = getattr(_function_failure, "exc", None)
        _function_failure.exc = None
        return failure or exc


class SqliteStore(SqlStore[sqlite3.Connection]):
    """The store in one SQLite file at ``path``, created and migrated on open."""

    def __init__(self, path: Path, config: StoreConfig) -> None:
        self.path = Path(path)
        self._config = config
        self._dialect = SqliteDialect()
        self._name = f"store {self.path}"
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        self._cleanup: weakref.finalize[Any, Any] | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EIO)
            error = StoreUnavailableError if full else StoreError
            raise error(f"cannot create {self.path.parent}: {exc.strerror}") from exc
        connection = self._connect()
        try:
            self._prepare(connection)
        except BaseException:
            connection.close()
            raise
        self._idle.append(connection)

    @classmethod
    def temporary(cls, config: StoreConfig | None = None) -> Self:
        """A store in a new temporary directory, deleted on close (or when the store is
        collected, or at exit): the real store, for tests and trials."""
        from mercato.config import StoreConfig  # noqa: PLC0415 (config imports the scheduler)

        directory = tempfile.mkdtemp(prefix="mercato-store-")
        try:
            store = cls(Path(directory) / "store.sqlite3", config or StoreConfig())
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        store._cleanup = weakref.finalize(store, shutil.rmtree, directory, ignore_errors=True)
        return store

    def close(self) -> None:
        """Close the pooled connections; ones in use close when their call returns."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        if self._cleanup is not None:
            self._cleanup()

    def _connect(self) -> sqlite3.Connection:
        config = self._config
        try:
            db = sqlite3.connect(
                self.path,
                timeout=config.busy_timeout_ms / 1000,
                isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE … COMMIT
                check_same_thread=False,  # the pool hands a connection to one thread at a time
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from exc
        try:
            db.execute(f"PRAGMA busy_timeout = {int(config.busy_timeout_ms)}")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute(f"PRAGMA cache_size = -{int(config.cache_mb) * 1024}")
            db.execute(f"PRAGMA mmap_size = {int(config.mmap_mb) * 1024 * 1024}")
        except sqlite3.Error as exc:
            db.close()
            if exc.sqlite_errorcode == sqlite3.SQLITE_NOTADB:
                raise StoreSchemaError(f"{self.path} is not an SQLite database") from exc
            error = StoreUnavailableError if self._dialect.unavailable(exc) else StoreError
            raise error(f"cannot open the store {self.path}: {exc}") from exc
        db.create_function("merge_sketches", 2, _merge_two, deterministic=True)
        # typeshed wants finalize() -> int; an all-NULL group has no sum (NULL)
        db.create_aggregate("checked_sum", 1, _CheckedSum)  # type: ignore[arg-type]
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        """Refuse a newer or foreign database, switch to WAL, apply pending migrations."""
        try:
            self._check_schema(db)  # before changing anything in a file we may not own
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"the store {self.path} cannot use WAL (journal mode {mode})")
            if self._check_schema(db) == SCHEMA_VERSION:
                return
            with self._transaction(Db(db, self._dialect), self._dialect.begin_write):
                current = self._check_schema(db)  # again: another process may have migrated
                for statements in MIGRATIONS[current:]:
                    for statement in statements:
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            error = StoreUnavailableError if self._dialect.unavailable(exc) else StoreSchemaError
            raise error(f"cannot use {self.path} as a Mercato store: {exc}") from exc

    def _check_schema(self, db: sqlite3.Connection) -> int:
        current = int(db.execute("PRAGMA user_version").fetchone()[0])
        if current > SCHEMA_VERSION:
            raise StoreSchemaError(
                f"the store {self.path} has schema version {current}, newer than this Mercato"
                f" knows ({SCHEMA_VERSION}): upgrade Mercato, or point [store] path elsewhere"
            )
        if current == 0 and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreSchemaError(f"{self.path} is an SQLite database but not a Mercato store")
        return current

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreClosedError(f"the store {self.path} is closed")
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._connect()
        try:
            yield db
        finally:
            if db.in_transaction:  # only if interrupted between BEGIN and COMMIT/ROLLBACK
                db.rollback()
            with self._lock:
                keep = not self._closed
                if keep:
                    self._idle.append(db)
            if not keep:
                db.close()
