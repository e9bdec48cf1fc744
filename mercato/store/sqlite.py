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

The schema is created and upgraded by the store itself: ``PRAGMA user_version`` is the number
of :data:`MIGRATIONS` applied; a database newer than this code is refused.
"""

from __future__ import annotations

import errno
import itertools
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import pyarrow as pa
import pyarrow.compute as pc

from mercato.metrics.kernel import PARTIAL_SCHEMA, empty_partials, merge_sketches, sort_partials
from mercato.store.base import (
    REGISTERED,
    DefinitionVersion,
    SealedHour,
    check_expected_offsets,
    check_timezone,
    conform_partials,
    days_watermark,
    metric_names,
)
from mercato.store.errors import (
    InvalidPartialsError,
    StoreClosedError,
    StoreError,
    StoreSchemaError,
    StoreUnavailableError,
    StoreWriteError,
    UnknownVersionError,
)
from mercato.store.sqlite_days import SqliteDays
from mercato.store.sqlite_jobs import SqliteJobs
from mercato.store.sqlite_versions import SqliteVersions

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


# Append only: a released migration is never edited, a change is a new entry.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE definition_versions (
            id         INTEGER PRIMARY KEY,
            hash       TEXT    NOT NULL UNIQUE,
            text       TEXT    NOT NULL,
            created_at INTEGER NOT NULL,  -- epoch milliseconds
            state      TEXT    NOT NULL DEFAULT 'registered'
        )
        """,
        """
        CREATE TABLE serving_version (
            singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
            version   INTEGER NOT NULL REFERENCES definition_versions (id)
        )
        """,
        _rollup_table("speed_rollups"),
        _rollup_table("final_rollups"),
        """
        CREATE TABLE consumer_offsets (
            consumer    TEXT    NOT NULL,
            partition   INTEGER NOT NULL,
            next_offset INTEGER NOT NULL,
            PRIMARY KEY (consumer, partition)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE merchants (
            merchant_id TEXT    NOT NULL PRIMARY KEY,
            timezone    TEXT,
            updated_at  INTEGER NOT NULL  -- epoch milliseconds
        ) WITHOUT ROWID
        """,
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
        """
        CREATE TABLE leases (
            name       TEXT    NOT NULL PRIMARY KEY,  -- e.g. "scheduler"
            holder     TEXT    NOT NULL,
            expires_at INTEGER NOT NULL  -- epoch milliseconds
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE sealed_hours (
            version     INTEGER NOT NULL,
            hour        INTEGER NOT NULL,  -- epoch seconds at which the UTC hour starts
            fingerprint TEXT    NOT NULL,  -- of the archive files the seal read
            events      INTEGER NOT NULL,  -- distinct events counted
            sealed_at   INTEGER NOT NULL,  -- epoch milliseconds
            PRIMARY KEY (version, hour)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE watermarks (
            name    TEXT    NOT NULL,  -- e.g. "sealed_through"
            version INTEGER NOT NULL,
            value   INTEGER NOT NULL,
            PRIMARY KEY (name, version)
        ) WITHOUT ROWID
        """,
        _rollup_table("daily_rollups").replace("bucket ", "day ").replace("bucket)", "day)"),
        "ALTER TABLE job_runs ADD COLUMN output TEXT",
        # a seal replaces an hour of final rows across merchants
        "CREATE INDEX final_rollups_by_bucket ON final_rollups (version, bucket)",
    ),
    (  # 3: promote and rollback
        """
        CREATE TABLE serving_changes (
            id         INTEGER PRIMARY KEY,
            version    INTEGER NOT NULL,
            previous   INTEGER,
            changed_at INTEGER NOT NULL  -- epoch milliseconds
        )
        """,
    ),
    (  # 4: events a metric matched but could not use (see mercato.metrics.kernel)
        *(
            f"ALTER TABLE {table} ADD COLUMN invalid INTEGER NOT NULL DEFAULT 0"
            for table in ("speed_rollups", "final_rollups", "daily_rollups")
        ),
        # the few rows that have some, for totals across merchants
        "CREATE INDEX speed_rollups_invalid ON speed_rollups (version, bucket) WHERE invalid > 0",
        "CREATE INDEX final_rollups_invalid ON final_rollups (version, bucket) WHERE invalid > 0",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

COLUMNS = ", ".join(PARTIAL_SCHEMA.names)
WIDTH = len(PARTIAL_SCHEMA.names)
DAY_COLUMNS = COLUMNS.replace("bucket", "day")


def _upsert(table: str) -> str:
    # NULL means "nothing yet": x + NULL is x, and min/max ignore NULL (SQLite's scalar
    # min()/max() return NULL if any argument is NULL, hence the coalesce).
    return f"""
        INSERT INTO {table} (version, {COLUMNS}) VALUES ({", ".join("?" * (1 + WIDTH))})
        ON CONFLICT (version, merchant_id, metric, dimension, member, bucket) DO UPDATE SET
            count = coalesce({table}.count + excluded.count, {table}.count, excluded.count),
            sum = coalesce({table}.sum + excluded.sum, {table}.sum, excluded.sum),
            min = coalesce(min({table}.min, excluded.min), {table}.min, excluded.min),
            max = coalesce(max({table}.max, excluded.max), {table}.max, excluded.max),
            sketch = CASE
                WHEN {table}.sketch IS NULL THEN excluded.sketch
                WHEN excluded.sketch IS NULL THEN {table}.sketch
                ELSE merge_sketches({table}.sketch, excluded.sketch)
            END,
            invalid = {table}.invalid + excluded.invalid
    """


UPSERT_SPEED = _upsert("speed_rollups")
UPSERT_FINAL = _upsert("final_rollups")
SET_OFFSET = """
    INSERT INTO consumer_offsets (consumer, partition, next_offset) VALUES (?, ?, ?)
    ON CONFLICT (consumer, partition) DO UPDATE SET next_offset = excluded.next_offset
"""

# The exception a sketch merge raised inside SQLite, which only reports that "a user-defined
# function raised"; kept per thread so the write can name the real cause.
_function_failure = threading.local()


def _merge_two(left: bytes, right: bytes) -> bytes | None:
    try:
        return merge_sketches([left, right])
    except Exception as exc:
        _function_failure.exc = exc
        raise


class SqliteStore(SqliteJobs, SqliteVersions, SqliteDays):
    """The store in one SQLite file at ``path``, created and migrated on open."""

    def __init__(self, path: Path, config: StoreConfig) -> None:
        self.path = Path(path)
        self._config = config
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
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

    # -- definitions versions ---------------------------------------------------------------

    def register_version(self, hash: str, text: str) -> int:
        with self._connection() as db:
            db.execute(
                "INSERT INTO definition_versions (hash, text, created_at, state)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (hash) DO NOTHING",
                (hash, text, _now_ms(), REGISTERED),
            )
            row = db.execute("SELECT id FROM definition_versions WHERE hash = ?", (hash,))
            return int(row.fetchone()[0])

    def versions(self) -> list[DefinitionVersion]:
        with self._connection() as db:
            rows = db.execute(
                "SELECT id, hash, text, created_at, state FROM definition_versions ORDER BY id"
            ).fetchall()
        return [
            DefinitionVersion(id, hash, text, datetime.fromtimestamp(ms / 1000, UTC), state)
            for id, hash, text, ms, state in rows
        ]

    def serving_version(self) -> int | None:
        with self._connection() as db:
            row = db.execute("SELECT version FROM serving_version").fetchone()
        return None if row is None else int(row[0])

    def set_serving_version(self, version: int) -> None:
        with self._connection() as db, _transaction(db):
            _check_version(db, version)
            row = db.execute("SELECT version FROM serving_version").fetchone()
            previous = None if row is None else int(row[0])
            if previous == version:
                return
            db.execute(
                "INSERT INTO serving_version (singleton, version) VALUES (1, ?)"
                " ON CONFLICT (singleton) DO UPDATE SET version = excluded.version",
                (version,),
            )
            db.execute(
                "INSERT INTO serving_changes (version, previous, changed_at) VALUES (?, ?, ?)",
                (version, previous, _now_ms()),
            )

    # -- rollups and offsets ----------------------------------------------------------------

    def write(
        self,
        version: int,
        consumer: str,
        partials: pa.Table,
        offsets: Mapping[int, int],
        expect: Mapping[int, int | None] | None = None,
    ) -> None:
        table = sort_partials(conform_partials(partials))
        positions = [(consumer, int(p), int(o)) for p, o in offsets.items()]
        with self._connection() as db:
            _function_failure.exc = None
            try:
                with _transaction(db):
                    _check_version(db, version)
                    if expect:
                        check_expected_offsets(consumer, expect, _offsets(db, consumer))
                    db.executemany(UPSERT_SPEED, _rows(version, table))
                    db.executemany(SET_OFFSET, positions)
            except sqlite3.Error as exc:
                cause = getattr(_function_failure, "exc", None) or exc
                _function_failure.exc = None
                raise StoreWriteError(
                    f"write of {table.num_rows} partials for {consumer!r} was rolled back: {cause}"
                ) from cause

    def write_sealed_hour(
        self, version: int, hour: int, partials: pa.Table, fingerprint: str, events: int
    ) -> None:
        table = sort_partials(conform_partials(partials))
        end = hour + 3600
        if table.num_rows:
            buckets = table["bucket"]
            low, high = pc.min(buckets).as_py(), pc.max(buckets).as_py()
            if low < hour or high >= end:
                raise InvalidPartialsError(f"partials of hour {hour} have buckets outside it")
        with self._connection() as db:
            _function_failure.exc = None
            try:
                with _transaction(db):
                    _check_version(db, version)
                    db.execute(
                        "DELETE FROM final_rollups"
                        " WHERE version = ? AND bucket >= ? AND bucket < ?",
                        (version, hour, end),
                    )
                    db.executemany(UPSERT_FINAL, _rows(version, table))
                    db.execute(
                        "INSERT INTO sealed_hours (version, hour, fingerprint, events, sealed_at)"
                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (version, hour) DO UPDATE SET"
                        " fingerprint = excluded.fingerprint, events = excluded.events,"
                        " sealed_at = excluded.sealed_at",
                        (version, hour, fingerprint, events, _now_ms()),
                    )
            except sqlite3.Error as exc:
                cause = getattr(_function_failure, "exc", None) or exc
                _function_failure.exc = None
                raise StoreWriteError(f"seal of hour {hour} was rolled back: {cause}") from cause

    def sealed_hours(self, version: int) -> dict[int, SealedHour]:
        with self._connection() as db:
            rows = db.execute(
                "SELECT hour, fingerprint, events, sealed_at FROM sealed_hours WHERE version = ?",
                (version,),
            ).fetchall()
        return {
            int(hour): SealedHour(int(hour), fingerprint, int(events), int(ms))
            for hour, fingerprint, events, ms in rows
        }

    def set_watermark(self, name: str, version: int, value: int) -> None:
        with self._connection() as db:
            db.execute(
                "INSERT INTO watermarks (name, version, value) VALUES (?, ?, ?)"
                " ON CONFLICT (name, version) DO UPDATE SET value = excluded.value",
                (name, version, value),
            )

    def watermark(self, name: str, version: int) -> int | None:
        with self._connection() as db:
            row = db.execute(
                "SELECT value FROM watermarks WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
        return None if row is None else int(row[0])

    def offsets(self, consumer: str) -> dict[int, int]:
        with self._connection() as db:
            return _offsets(db, consumer)

    def read(
        self,
        version: int,
        merchant_id: str,
        metrics: Sequence[str],
        start: int,
        end: int,
        dimension: str = "",
        sealed_through: int | None = None,
    ) -> pa.Table:
        return _table(
            self.read_rows(version, merchant_id, metrics, start, end, dimension, sealed_through)
        )

    def read_rows(
        self,
        version: int,
        merchant_id: str,
        metrics: Sequence[str],
        start: int,
        end: int,
        dimension: str = "",
        sealed_through: int | None = None,
    ) -> list[tuple[Any, ...]]:
        return self._layers(
            version, merchant_id, metrics, start, end, dimension, sealed_through, by_day=False
        )

    def read_rows_by_day(
        self,
        version: int,
        merchant_id: str,
        metrics: Sequence[str],
        start: int,
        end: int,
        dimension: str = "",
        sealed_through: int | None = None,
    ) -> list[tuple[Any, ...]]:
        return self._layers(
            version, merchant_id, metrics, start, end, dimension, sealed_through, by_day=True
        )

    def _layers(
        self,
        version: int,
        merchant_id: str,
        metrics: Sequence[str],
        start: int,
        end: int,
        dimension: str,
        sealed_through: int | None,
        *,
        by_day: bool,
    ) -> list[tuple[Any, ...]]:
        """Day rows up to the merchant's ``days_through`` (``by_day``), then final rows up to
        ``sealed_through``, then speed rows: one snapshot."""
        names = metric_names(metrics)
        if not names:
            return []
        marks = ", ".join("?" * len(names))
        where = (
            f"version = ? AND merchant_id = ? AND metric IN ({marks})"
            " AND dimension = ? AND bucket >= ? AND bucket < ?"
        )
        params = (version, merchant_id, *names, dimension)
        with self._connection() as db:
            days = start
            if by_day:
                db.execute("BEGIN")  # the watermark and the rows it speaks for, together
                row = db.execute(
                    "SELECT value FROM watermarks WHERE name = ? AND version = ?",
                    (days_watermark(merchant_id), version),
                ).fetchone()
                days = min(max(start, int(row[0])), end) if row else start
            try:
                cut = days if sealed_through is None else min(max(sealed_through, days), end)
                daily = (
                    f"SELECT {DAY_COLUMNS} FROM daily_rollups"
                    f" WHERE {where.replace('bucket', 'day')} UNION ALL "
                    if days > start
                    else ""
                )
                rows: list[tuple[Any, ...]] = db.execute(
                    f"{daily}SELECT {COLUMNS} FROM final_rollups WHERE {where}"
                    f" UNION ALL SELECT {COLUMNS} FROM speed_rollups WHERE {where}"
                    " ORDER BY 2, 3, 4, 5",  # metric, dimension, member, bucket
                    (*((*params, start, days) if days > start else ()),
                     *params, days, cut, *params, cut, end),
                ).fetchall()  # fmt: skip
            finally:
                if by_day:
                    db.execute("COMMIT")
        return rows

    def members(
        self,
        version: int,
        merchant_id: str,
        metric: str,
        dimension: str,
        start: int,
        end: int,
        sealed_through: int | None = None,
    ) -> list[tuple[str, int]]:
        where = "version = ? AND merchant_id = ? AND metric = ? AND dimension = ?"
        params = (version, merchant_id, metric, dimension)
        cut = start if sealed_through is None else min(max(sealed_through, start), end)
        with self._connection() as db:
            rows = db.execute(
                "SELECT member, coalesce(sum(count), 0) AS total FROM ("
                f" SELECT member, count FROM final_rollups WHERE {where}"
                "   AND bucket >= ? AND bucket < ?"
                f" UNION ALL SELECT member, count FROM speed_rollups WHERE {where}"
                "   AND bucket >= ? AND bucket < ?"
                ") GROUP BY member ORDER BY total DESC, member",
                (*params, start, cut, *params, cut, end),
            ).fetchall()
        return [(str(member), int(total)) for member, total in rows]

    # -- merchants --------------------------------------------------------------------------

    def set_merchant_timezone(self, merchant_id: str, timezone: str) -> None:
        check_timezone(timezone)
        with self._connection() as db, _transaction(db):
            row = db.execute(
                "SELECT timezone FROM merchants WHERE merchant_id = ?", (merchant_id,)
            ).fetchone()
            db.execute(
                "INSERT INTO merchants (merchant_id, timezone, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (merchant_id) DO UPDATE"
                " SET timezone = excluded.timezone, updated_at = excluded.updated_at",
                (merchant_id, timezone, _now_ms()),
            )
            if (row[0] if row else "UTC") != timezone:  # its local days are other days now
                db.execute("DELETE FROM daily_rollups WHERE merchant_id = ?", (merchant_id,))
                db.execute(  # 0: derive every day again
                    "UPDATE watermarks SET value = 0 WHERE name = ?", (days_watermark(merchant_id),)
                )

    def merchant_timezone(self, merchant_id: str) -> str | None:
        with self._connection() as db:
            row = db.execute(
                "SELECT timezone FROM merchants WHERE merchant_id = ?", (merchant_id,)
            ).fetchone()
        return None if row is None else row[0]

    # -- life cycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled connections; ones in use close when their call returns."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

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
            raise _error(exc, StoreError)(f"cannot open the store {self.path}: {exc}") from exc
        db.create_function("merge_sketches", 2, _merge_two, deterministic=True)
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
            with _transaction(db):
                current = self._check_schema(db)  # again: another process may have migrated
                for statements in MIGRATIONS[current:]:
                    for statement in statements:
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            error = _error(exc, StoreSchemaError)
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
        except sqlite3.Error as exc:
            raise _error(exc, StoreError)(f"store {self.path}: {exc}") from exc
        finally:
            if db.in_transaction:  # only if interrupted between BEGIN and COMMIT/ROLLBACK
                db.rollback()
            with self._lock:
                keep = not self._closed
                if keep:
                    self._idle.append(db)
            if not keep:
                db.close()


def _error(exc: sqlite3.Error, otherwise: type[StoreError]) -> type[StoreError]:
    """What an SQLite error is: a disk that is full or failing makes the store unavailable
    (the same call may succeed later: a service waits and tries again), else ``otherwise``."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
        return StoreUnavailableError
    return otherwise


def _offsets(db: sqlite3.Connection, consumer: str) -> dict[int, int]:
    rows = db.execute(
        "SELECT partition, next_offset FROM consumer_offsets WHERE consumer = ?", (consumer,)
    ).fetchall()
    return {int(p): int(o) for p, o in rows}


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a busy writer waits (busy_timeout) at BEGIN
    # instead of failing half way when a read transaction would need upgrading.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:  # SQLite rolls back by itself after some errors (disk full)
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _check_version(db: sqlite3.Connection, version: int) -> None:
    if db.execute("SELECT 1 FROM definition_versions WHERE id = ?", (version,)).fetchone() is None:
        raise UnknownVersionError(version)


def _rows(version: int, table: pa.Table) -> Iterable[tuple[Any, ...]]:
    columns = [table[name].to_pylist() for name in PARTIAL_SCHEMA.names]
    return zip(itertools.repeat(version, table.num_rows), *columns, strict=True)


def _table(rows: list[tuple[Any, ...]]) -> pa.Table:
    if not rows:
        return empty_partials()
    columns = list(zip(*rows, strict=True))
    arrays = [
        pa.array(values, field.type) for values, field in zip(columns, PARTIAL_SCHEMA, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=PARTIAL_SCHEMA)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
