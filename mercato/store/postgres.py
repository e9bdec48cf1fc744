"""The scale-out serving store: PostgreSQL through psycopg 3 and a connection pool.

The same contract as :class:`~mercato.store.sqlite.SqliteStore` (the store contract tests run
against both), with these choices:

* **Bulk writes**: a write's partials are merged per key in Python first (the kernel's
  :func:`~mercato.metrics.kernel.merge`, so ``ON CONFLICT`` meets each key once), copied into
  a temporary table with ``COPY``, and merged into the rollups with one
  ``INSERT … SELECT … ON CONFLICT … DO UPDATE``: counts and sums add, ``least``/``greatest``
  take the extremes (both ignore NULL, "nothing yet").
* **Sketches** are united in Python (PostgreSQL has no DataSketches): the keys of incoming
  sketches are inserted empty if missing and their stored rows locked ``FOR UPDATE``, the
  stored sketches merged into the incoming ones, and the upsert then stores the union. Two
  writers of one key take turns on the row lock, so neither loses the other's sketch.
* **Offsets** are upserted in the same transaction as the rows they account for.
* **Reads** are one statement each (both layers in one snapshot); a read by day, which first
  reads the merchant's ``days_through`` watermark, runs in one REPEATABLE READ transaction.
* **Partitions**: speed and final rollups are partitioned by month of ``bucket``, created on
  demand (:mod:`mercato.store.postgres_schema`).
* **Schema**: run ``mercato db migrate`` first; the store refuses an unmigrated or newer
  database with a one-line error naming that command.

**Citus.** ``merchant_id`` leads the key of every rollup table, so the rollups (and the
merchants) can be distributed by it, colocated, and the small bookkeeping tables kept as
reference tables. After ``mercato db migrate``, on the coordinator::

    SELECT create_distributed_table('speed_rollups', 'merchant_id');
    SELECT create_distributed_table('final_rollups', 'merchant_id', colocate_with => 'speed_rollups');
    SELECT create_distributed_table('daily_rollups', 'merchant_id', colocate_with => 'speed_rollups');
    SELECT create_distributed_table('merchants', 'merchant_id', colocate_with => 'speed_rollups');
    SELECT create_reference_table('definition_versions');
    SELECT create_reference_table('serving_version');
    SELECT create_reference_table('serving_changes');
    SELECT create_reference_table('consumer_offsets');
    SELECT create_reference_table('sealed_hours');
    SELECT create_reference_table('watermarks');
    SELECT create_reference_table('job_runs');
    SELECT create_reference_table('leases');
    SELECT create_reference_table('schema_migrations');

Monthly partitions created later are distributed with their parent. This is tested here on
plain PostgreSQL only, never on a Citus cluster.
"""  # noqa: E501

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg_pool import ConnectionPool

from mercato.metrics.kernel import PARTIAL_SCHEMA, merge, merge_sketches
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
    StoreUnavailableError,
    StoreWriteError,
    UnknownVersionError,
)
from mercato.store.postgres_ops import Connection, PostgresDays, PostgresJobs, PostgresVersions
from mercato.store.postgres_schema import check_schema, ensure_partitions, month_of, where
from mercato.store.sqlite import _table

if TYPE_CHECKING:
    from mercato.config import StoreConfig

COLUMNS = ", ".join(PARTIAL_SCHEMA.names)
DAY_COLUMNS = COLUMNS.replace("bucket", "day")
KEY_COLUMNS = "merchant_id, version, metric, dimension, member, bucket"
INCOMING = f"""
    CREATE TEMPORARY TABLE IF NOT EXISTS incoming (
        version bigint, merchant_id text COLLATE "C", metric text COLLATE "C",
        dimension text COLLATE "C", member text COLLATE "C", bucket bigint,
        count bigint, sum bigint, min bigint, max bigint, sketch bytea, invalid bigint,
        PRIMARY KEY ({KEY_COLUMNS})
    ) ON COMMIT DELETE ROWS
"""
SET_OFFSET = """
    INSERT INTO consumer_offsets (consumer, partition, next_offset) VALUES (%s, %s, %s)
    ON CONFLICT (consumer, partition) DO UPDATE SET next_offset = excluded.next_offset
"""


def _upsert(table: str) -> str:
    return f"""
        INSERT INTO {table} (version, {COLUMNS})
        SELECT version, {COLUMNS} FROM incoming ORDER BY {KEY_COLUMNS}  -- writers lock in one order
        ON CONFLICT ({KEY_COLUMNS}) DO UPDATE SET
            count = coalesce({table}.count + excluded.count, {table}.count, excluded.count),
            sum = coalesce({table}.sum + excluded.sum, {table}.sum, excluded.sum),
            min = least({table}.min, excluded.min),
            max = greatest({table}.max, excluded.max),
            sketch = coalesce(excluded.sketch, {table}.sketch),
            invalid = {table}.invalid + excluded.invalid
    """


def _lock_sketches(table: str) -> tuple[str, str]:
    """Statements that make every incoming sketch's row exist, then lock and read them."""
    placeholders = (
        f"INSERT INTO {table} ({KEY_COLUMNS}) SELECT {KEY_COLUMNS} FROM incoming"
        f" WHERE sketch IS NOT NULL ORDER BY {KEY_COLUMNS} ON CONFLICT DO NOTHING"
    )
    join = " AND ".join(f"t.{c} = i.{c}" for c in KEY_COLUMNS.split(", "))
    locked = (
        f"SELECT {', '.join(f't.{c}' for c in KEY_COLUMNS.split(', '))}, t.sketch"
        f" FROM {table} t JOIN incoming i ON {join} WHERE i.sketch IS NOT NULL"
        f" ORDER BY {', '.join(f't.{c}' for c in KEY_COLUMNS.split(', '))} FOR UPDATE OF t"
    )
    return placeholders, locked


SPEED, FINAL = "speed_rollups", "final_rollups"
UPSERTS = {SPEED: _upsert(SPEED), FINAL: _upsert(FINAL)}
LOCKS = {SPEED: _lock_sketches(SPEED), FINAL: _lock_sketches(FINAL)}


class PostgresStore(PostgresJobs, PostgresVersions, PostgresDays):
    """The store in the PostgreSQL database at ``dsn``, migrated by ``mercato db migrate``."""

    def __init__(self, dsn: str, config: StoreConfig) -> None:
        self._dsn = dsn
        self._closed = False
        self._months: set[int] = set()  # partitions known to exist
        self._months_lock = threading.Lock()
        timeout = config.connect_timeout_seconds
        try:  # one connection first: its error says why, and the schema is checked once
            with psycopg.connect(dsn, connect_timeout=max(round(timeout), 1)) as db:
                check_schema(db, dsn)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to the store {where(dsn)}: {_first_line(exc)}"
            ) from exc
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max(config.pool_size, 1),
            kwargs={"autocommit": True},
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
        except psycopg.Error as exc:  # PoolTimeout
            self._pool.close()
            raise StoreError(f"cannot connect to the store {where(dsn)}: {exc}") from exc

    # -- definitions versions ---------------------------------------------------------------

    def register_version(self, hash: str, text: str) -> int:
        with self._connection() as db:
            db.execute(
                "INSERT INTO definition_versions (hash, text, created_at, state)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (hash) DO NOTHING",
                (hash, text, _now_ms(), REGISTERED),
            )
            row = db.execute("SELECT id FROM definition_versions WHERE hash = %s", (hash,))
            return int(_one(row.fetchone()))

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
        with self._connection() as db, db.transaction():
            _check_version(db, version)
            row = db.execute("SELECT version FROM serving_version FOR UPDATE").fetchone()
            previous = None if row is None else int(row[0])
            if previous == version:
                return
            db.execute(
                "INSERT INTO serving_version (singleton, version) VALUES (1, %s)"
                " ON CONFLICT (singleton) DO UPDATE SET version = excluded.version",
                (version,),
            )
            db.execute(
                "INSERT INTO serving_changes (version, previous, changed_at) VALUES (%s, %s, %s)",
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
        table = _merged(conform_partials(partials), f"write for {consumer!r}")
        positions = [(consumer, int(p), int(o)) for p, o in offsets.items()]
        with self._connection() as db:
            self._partitions(db, table)
            try:
                with db.transaction():
                    _check_version(db, version)
                    if expect:
                        _check_offsets(db, consumer, expect)
                    _upsert_rows(db, SPEED, version, table)
                    if positions:
                        with db.cursor() as cursor:
                            cursor.executemany(SET_OFFSET, positions)
            except psycopg.Error as exc:
                raise StoreWriteError(
                    f"write of {table.num_rows} partials for {consumer!r} was rolled back:"
                    f" {_first_line(exc)}"
                ) from exc

    def write_sealed_hour(
        self, version: int, hour: int, partials: pa.Table, fingerprint: str, events: int
    ) -> None:
        table = _merged(conform_partials(partials), f"seal of hour {hour}")
        end = hour + 3600
        if table.num_rows:
            buckets = table["bucket"]
            low, high = pc.min(buckets).as_py(), pc.max(buckets).as_py()
            if low < hour or high >= end:
                raise InvalidPartialsError(f"partials of hour {hour} have buckets outside it")
        with self._connection() as db:
            self._partitions(db, table)
            try:
                with db.transaction():
                    _check_version(db, version)
                    # Seals of one hour take turns: under READ COMMITTED a second seal's
                    # DELETE would not see the first's new rows, and its upsert would then
                    # add to them (the hour counted twice). Once it holds the lock, its
                    # DELETE sees them.
                    db.execute(
                        "SELECT pg_advisory_xact_lock(hashtext('seal/' || %s::text), %s)",
                        (version, hour // 3600 % 2**31),
                    )
                    db.execute(
                        "DELETE FROM final_rollups"
                        " WHERE version = %s AND bucket >= %s AND bucket < %s",
                        (version, hour, end),
                    )
                    _upsert_rows(db, FINAL, version, table)
                    db.execute(
                        "INSERT INTO sealed_hours (version, hour, fingerprint, events, sealed_at)"
                        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (version, hour) DO UPDATE SET"
                        " fingerprint = excluded.fingerprint, events = excluded.events,"
                        " sealed_at = excluded.sealed_at",
                        (version, hour, fingerprint, events, _now_ms()),
                    )
            except psycopg.Error as exc:
                raise StoreWriteError(
                    f"seal of hour {hour} was rolled back: {_first_line(exc)}"
                ) from exc

    def sealed_hours(self, version: int) -> dict[int, SealedHour]:
        with self._connection() as db:
            rows = db.execute(
                "SELECT hour, fingerprint, events, sealed_at FROM sealed_hours WHERE version = %s",
                (version,),
            ).fetchall()
        return {
            int(hour): SealedHour(int(hour), fingerprint, int(events), int(ms))
            for hour, fingerprint, events, ms in rows
        }

    def set_watermark(self, name: str, version: int, value: int) -> None:
        with self._connection() as db:
            db.execute(
                "INSERT INTO watermarks (name, version, value) VALUES (%s, %s, %s)"
                " ON CONFLICT (name, version) DO UPDATE SET value = excluded.value",
                (name, version, value),
            )

    def watermark(self, name: str, version: int) -> int | None:
        with self._connection() as db:
            row = db.execute(
                "SELECT value FROM watermarks WHERE name = %s AND version = %s", (name, version)
            ).fetchone()
        return None if row is None else int(row[0])

    def offsets(self, consumer: str) -> dict[int, int]:
        with self._connection() as db:
            rows = db.execute(
                "SELECT partition, next_offset FROM consumer_offsets WHERE consumer = %s",
                (consumer,),
            ).fetchall()
        return {int(p): int(o) for p, o in rows}

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
        names = metric_names(metrics)
        if not names:
            return []
        cut = start if sealed_through is None else min(max(sealed_through, start), end)
        params = (merchant_id, version, names, dimension)
        with self._connection() as db:
            # one statement, so both layers come from the same snapshot
            rows: list[tuple[Any, ...]] = db.execute(
                f"SELECT {COLUMNS} FROM final_rollups WHERE {WHERE}"
                f" UNION ALL SELECT {COLUMNS} FROM speed_rollups WHERE {WHERE}"
                " ORDER BY metric, dimension, member, bucket",
                (*params, start, cut, *params, cut, end),
            ).fetchall()
        return rows

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
        names = metric_names(metrics)
        if not names:
            return []
        params = (merchant_id, version, names, dimension)
        with self._connection() as db, db.transaction():
            # one snapshot: the watermark and the rows it speaks for
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = db.execute(
                "SELECT value FROM watermarks WHERE name = %s AND version = %s",
                (days_watermark(merchant_id), version),
            ).fetchone()
            days = min(max(start, int(row[0])), end) if row else start
            low = days if sealed_through is None else max(days, sealed_through)
            cut = min(low, end)
            rows: list[tuple[Any, ...]] = db.execute(
                f"SELECT {DAY_COLUMNS} FROM daily_rollups WHERE {WHERE.replace('bucket', 'day')}"
                f" UNION ALL SELECT {COLUMNS} FROM final_rollups WHERE {WHERE}"
                f" UNION ALL SELECT {COLUMNS} FROM speed_rollups WHERE {WHERE}"
                " ORDER BY 2, 3, 4, 5",
                (*params, start, days, *params, days, cut, *params, cut, end),
            ).fetchall()
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
        params = (merchant_id, version, [metric], dimension)
        cut = start if sealed_through is None else min(max(sealed_through, start), end)
        with self._connection() as db:
            rows = db.execute(
                "SELECT member, coalesce(sum(count), 0)::bigint AS total FROM ("
                f" SELECT member, count FROM final_rollups WHERE {WHERE}"
                f" UNION ALL SELECT member, count FROM speed_rollups WHERE {WHERE}"
                ") AS layers GROUP BY member ORDER BY total DESC, member",
                (*params, start, cut, *params, cut, end),
            ).fetchall()
        return [(str(member), int(total)) for member, total in rows]

    # -- merchants --------------------------------------------------------------------------

    def set_merchant_timezone(self, merchant_id: str, timezone: str) -> None:
        check_timezone(timezone)
        with self._connection() as db, db.transaction():
            db.execute(  # the row exists and is locked: concurrent changes take turns
                "INSERT INTO merchants (merchant_id, timezone, updated_at) VALUES (%s, NULL, %s)"
                " ON CONFLICT (merchant_id) DO NOTHING",
                (merchant_id, _now_ms()),
            )
            row = db.execute(
                "SELECT timezone FROM merchants WHERE merchant_id = %s FOR UPDATE", (merchant_id,)
            ).fetchone()
            db.execute(
                "UPDATE merchants SET timezone = %s, updated_at = %s WHERE merchant_id = %s",
                (timezone, _now_ms(), merchant_id),
            )
            if ((row[0] if row else None) or "UTC") != timezone:  # its local days changed
                db.execute("DELETE FROM daily_rollups WHERE merchant_id = %s", (merchant_id,))
                db.execute(  # 0: derive every day again
                    "UPDATE watermarks SET value = 0 WHERE name = %s",
                    (days_watermark(merchant_id),),
                )

    def merchant_timezone(self, merchant_id: str) -> str | None:
        with self._connection() as db:
            row = db.execute(
                "SELECT timezone FROM merchants WHERE merchant_id = %s", (merchant_id,)
            ).fetchone()
        return None if row is None else row[0]

    # -- life cycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the pool; calls in flight finish first."""
        self._closed = True
        self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        if self._closed:
            raise StoreClosedError("the PostgreSQL store is closed")
        try:
            with self._pool.connection() as db:
                yield db
        except psycopg.OperationalError as exc:  # the server away, the pool exhausted
            raise StoreUnavailableError(f"PostgreSQL store: {_first_line(exc)}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL store: {_first_line(exc)}") from exc

    def _partitions(self, db: Connection, table: pa.Table) -> None:
        """Make sure the monthly partitions of ``table``'s buckets exist."""
        if not table.num_rows:
            return
        low, high = pc.min(table["bucket"]).as_py(), pc.max(table["bucket"]).as_py()
        if month_of(low) == month_of(high):
            months = {month_of(low)}
        else:
            months = {month_of(b) for b in pc.unique(table["bucket"]).to_pylist()}
        with self._months_lock:
            missing = months - self._months
        if missing:
            ensure_partitions(db, sorted(missing))
            with self._months_lock:
                self._months |= missing


WHERE = (
    "merchant_id = %s AND version = %s AND metric = ANY(%s) AND dimension = %s"
    " AND bucket >= %s AND bucket < %s"
)


def _merged(table: pa.Table, what: str) -> pa.Table:
    """One row per key (``ON CONFLICT`` may meet each key once per statement)."""
    if table.num_rows < 2:
        return table
    try:
        return merge([table])
    except Exception as exc:  # a sketch that is not one
        raise StoreWriteError(f"{what} was refused: {_first_line(exc)}") from exc


def _upsert_rows(db: Connection, target: str, version: int, table: pa.Table) -> None:
    if not table.num_rows:
        return
    db.execute(INCOMING)
    with db.cursor() as cursor:
        with cursor.copy(f"COPY incoming (version, {COLUMNS}) FROM STDIN") as copy:
            columns = [table[name].to_pylist() for name in PARTIAL_SCHEMA.names]
            for values in zip(*columns, strict=True):
                copy.write_row((version, *values))
        if pc.any(pc.is_valid(table["sketch"])).as_py():
            _unite_sketches(cursor, target)
        cursor.execute(UPSERTS[target])
        cursor.execute("DELETE FROM incoming")  # a later write in this transaction starts empty


def _unite_sketches(cursor: psycopg.Cursor[tuple[Any, ...]], target: str) -> None:
    placeholders, locked = LOCKS[target]
    cursor.execute(placeholders)
    stored = [row for row in cursor.execute(locked).fetchall() if row[-1] is not None]
    if not stored:
        return
    keys = [row[:-1] for row in stored]
    incoming = {
        row[:-1]: row[-1]
        for row in cursor.execute(
            f"SELECT {KEY_COLUMNS}, sketch FROM incoming WHERE sketch IS NOT NULL"
        ).fetchall()
    }
    try:
        united = [
            (merge_sketches([row[-1], incoming[key]]), *key)
            for row, key in zip(stored, keys, strict=True)
        ]
    except Exception as exc:  # a stored or incoming sketch that is not one
        raise psycopg.DataError(f"sketches do not merge: {_first_line(exc)}") from exc
    cursor.executemany(
        "UPDATE incoming SET sketch = %s WHERE"
        " merchant_id = %s AND version = %s AND metric = %s AND dimension = %s"
        " AND member = %s AND bucket = %s",
        united,
    )


def _check_offsets(db: Connection, consumer: str, expect: Mapping[int, int | None]) -> None:
    """Fence a write (see ``Store.write``): lock each expected partition of ``consumer`` for
    the rest of the transaction, in partition order (no deadlock between writers), then
    compare. A row lock cannot guard an offset not stored yet; an advisory lock can."""
    partitions = sorted(int(p) for p in expect)
    db.execute(
        "SELECT pg_advisory_xact_lock(hashtext(%s), p) FROM unnest(%s::int[]) AS p ORDER BY p",
        (consumer, partitions),
    )
    rows = db.execute(
        "SELECT partition, next_offset FROM consumer_offsets"
        " WHERE consumer = %s AND partition = ANY(%s)",
        (consumer, partitions),
    ).fetchall()
    check_expected_offsets(consumer, expect, {int(p): int(o) for p, o in rows})


def _check_version(db: Connection, version: int) -> None:
    if db.execute("SELECT 1 FROM definition_versions WHERE id = %s", (version,)).fetchone() is None:
        raise UnknownVersionError(version)


def _one(row: tuple[Any, ...] | None) -> Any:
    if row is None:
        raise StoreError("PostgreSQL store: a row expected, none returned")
    return row[0]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
