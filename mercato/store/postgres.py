"""The scale-out serving store: PostgreSQL through psycopg 3 and a connection pool.

The operations are :class:`~mercato.store.sql.SqlStore`'s, as for
:class:`~mercato.store.sqlite.SqliteStore` (the store contract tests run against both); this
module holds the connection pool and the dialect, with these choices:

* **Bulk writes**: a write's partials are merged per key in Python first (the kernel's
  :func:`~mercato.metrics.kernel.merge`, so ``ON CONFLICT`` meets each key once), copied into
  a temporary table with ``COPY``, and merged into the rollups with one
  ``INSERT … SELECT … ON CONFLICT … DO UPDATE``: counts and sums add, ``least``/``greatest``
  take the extremes (both ignore NULL, "nothing yet").
* **Replacing rows** (a sealed hour's final rows, a merchant's local days): the old rows are
  deleted and the new ones copied straight into the table with ``COPY``, in one transaction
  (as fast as through a temporary table, and simpler). Seals of one hour take turns on an
  advisory lock, so the second one's ``DELETE`` sees the first one's rows.
* **Sketches** are united in Python (PostgreSQL has no DataSketches): the keys of incoming
  sketches are inserted empty if missing and their stored rows locked ``FOR UPDATE``, the
  stored sketches merged into the incoming ones, and the upsert then stores the union. Two
  writers of one key take turns on the row lock, so neither loses the other's sketch.
* **Offsets** are upserted in the same transaction as the rows they account for.
* **Reads** of one statement are one snapshot (both layers in one statement); a read of
  several (a read by day, which first reads the merchant's ``days_through`` watermark; layer
  totals) runs in one ``REPEATABLE READ READ ONLY`` transaction. Writes run at READ
  COMMITTED and lock the rows they read to decide (``FOR UPDATE``).
* **Partitions**: speed and final rollups are partitioned by month of ``bucket``, created on
  demand before a write's transaction (:mod:`mercato.store.postgres_schema`).
* **Errors**: a server that is away or a pool with no free connection in time
  (``OperationalError``) makes the store unavailable.
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

import functools
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

from mercato.metrics.kernel import SUM_LIMIT, merge, merge_sketches
from mercato.store.dialect import Dialect, first_line
from mercato.store.errors import StoreClosedError, StoreError
from mercato.store.postgres_schema import check_schema, ensure_partitions, month_of, where
from mercato.store.sql import COLUMNS, FINAL, OVERFLOW_SQL, SPEED, SqlStore, rows_of, upsert

if TYPE_CHECKING:
    from mercato.config import StoreConfig

Connection = psycopg.Connection[tuple[Any, ...]]

KEY_COLUMNS = "merchant_id, version, metric, dimension, member, bucket"  # the rollups' key
INCOMING = f"""
    CREATE TEMPORARY TABLE IF NOT EXISTS incoming (
        version bigint, merchant_id text COLLATE "C", metric text COLLATE "C",
        dimension text COLLATE "C", member text COLLATE "C", bucket bigint,
        count bigint, sum bigint, min bigint, max bigint, sketch bytea, invalid bigint,
        PRIMARY KEY ({KEY_COLUMNS})
    ) ON COMMIT DELETE ROWS
"""


def _upsert(table: str) -> str:
    return upsert(
        table,
        f"SELECT version, {COLUMNS} FROM incoming ORDER BY {KEY_COLUMNS}",  # one lock order
        least="least",
        greatest="greatest",
        sketch=f"coalesce(excluded.sketch, {table}.sketch)",  # united before (_unite_sketches)
        fits=f"({{a}}::numeric + {{b}}) BETWEEN {-SUM_LIMIT} AND {SUM_LIMIT}",
    )


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


UPSERTS = {SPEED: _upsert(SPEED), FINAL: _upsert(FINAL)}
LOCKS = {SPEED: _lock_sketches(SPEED), FINAL: _lock_sketches(FINAL)}


@functools.cache
def _placeholders(statement: str) -> str:
    return statement.replace("%", "%%").replace("?", "%s")


class PostgresDialect(Dialect[Connection]):
    """PostgreSQL's way: ``%s``, ``= ANY(…)``, row locks, ``COPY``, sketches united in
    Python, monthly partitions."""

    error = psycopg.Error
    begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    begin_write = "BEGIN"
    lock = " FOR UPDATE"

    def __init__(self) -> None:
        self._months: set[int] = set()  # partitions known to exist
        self._months_lock = threading.Lock()

    def sql(self, statement: str) -> str:
        return _placeholders(statement)

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
        return f"{column} = ANY(?)", (list(values),)

    def total_of_sums(self, column: str) -> str:
        exact = f"sum({column}::numeric)"
        return (
            f"CASE WHEN bool_or({column} = {OVERFLOW_SQL}) THEN {OVERFLOW_SQL}"
            f" WHEN abs({exact}) > {SUM_LIMIT} THEN {OVERFLOW_SQL}"
            f" ELSE CAST({exact} AS bigint) END"
        )

    def in_transaction(self, db: Connection) -> bool:
        status = db.info.transaction_status
        return status in (TransactionStatus.INTRANS, TransactionStatus.INERROR)

    def unavailable(self, exc: Exception) -> bool:
        return isinstance(exc, psycopg.OperationalError)  # the server away, the pool exhausted

    def executemany(self, db: Connection, statement: str, rows: Iterable[Sequence[Any]]) -> None:
        with db.cursor() as cursor:
            cursor.executemany(statement, rows)

    def prepare(self, db: Connection, partials: pa.Table) -> pa.Table:
        table = _merged(partials)
        self.make_room(db, table)
        return table

    def merge(self, db: Connection, table: str, version: int, partials: pa.Table) -> None:
        if not partials.num_rows:
            return
        db.execute(INCOMING)
        self.insert(db, "incoming", f"version, {COLUMNS}", rows_of(version, partials))
        with db.cursor() as cursor:
            if pc.any(pc.is_valid(partials["sketch"])).as_py():
                _unite_sketches(cursor, table)
            cursor.execute(UPSERTS[table])
            cursor.execute("DELETE FROM incoming")  # a later write in this transaction starts empty

    def insert(
        self, db: Connection, table: str, columns: str, rows: Iterable[Sequence[Any]]
    ) -> None:
        with db.cursor() as cursor, cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def take_turns(self, db: Connection, name: str, numbers: list[int]) -> None:
        # Advisory locks, as a row lock cannot guard a row not stored yet; in order, so two
        # transactions never wait for each other.
        db.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s), n) FROM unnest(%s::int[]) AS n ORDER BY n",
            (name, numbers),
        )

    def make_room(self, db: Connection, partials: pa.Table) -> None:
        """Make sure the monthly partitions of ``partials``' buckets exist."""
        if not partials.num_rows:
            return
        buckets = partials["bucket"]
        low, high = pc.min(buckets).as_py(), pc.max(buckets).as_py()
        if month_of(low) == month_of(high):
            months = {month_of(low)}
        else:
            months = {month_of(b) for b in pc.unique(buckets).to_pylist()}
        with self._months_lock:
            missing = months - self._months
        if missing:
            ensure_partitions(db, sorted(missing))
            with self._months_lock:
                self._months |= missing


class PostgresStore(SqlStore[Connection]):
    """The store in the PostgreSQL database at ``dsn``, migrated by ``mercato db migrate``."""

    def __init__(self, dsn: str, config: StoreConfig) -> None:
        self._dsn = dsn
        self._dialect = PostgresDialect()
        self._name = "PostgreSQL store"
        self._closed = False
        timeout = config.connect_timeout_seconds
        try:  # one connection first: its error says why, and the schema is checked once
            with psycopg.connect(dsn, connect_timeout=max(round(timeout), 1)) as db:
                check_schema(db, dsn)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to the store {where(dsn)}: {first_line(exc)}"
            ) from exc
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max(config.pool_size, 1),
            kwargs={"autocommit": True},  # transactions are explicit: BEGIN … COMMIT
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
        except psycopg.Error as exc:  # PoolTimeout
            self._pool.close()
            raise StoreError(f"cannot connect to the store {where(dsn)}: {exc}") from exc

    def close(self) -> None:
        """Close the pool; calls in flight finish first."""
        self._closed = True
        self._pool.close()

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        if self._closed:
            raise StoreClosedError("the PostgreSQL store is closed")
        with self._pool.connection() as db:
            yield db


def _merged(table: pa.Table) -> pa.Table:
    """One row per key (``ON CONFLICT`` may meet each key once per statement)."""
    if table.num_rows < 2:
        return table
    try:
        return merge([table])
    except Exception as exc:  # a sketch that is not one
        raise psycopg.DataError(f"partials do not merge: {first_line(exc)}") from exc


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
        raise psycopg.DataError(f"sketches do not merge: {first_line(exc)}") from exc
    cursor.executemany(
        "UPDATE incoming SET sketch = %s WHERE"
        " merchant_id = %s AND version = %s AND metric = %s AND dimension = %s"
        " AND member = %s AND bucket = %s",
        united,
    )
