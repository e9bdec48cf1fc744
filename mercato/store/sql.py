"""The SQL stores' operations, each written once, run through a dialect.

:class:`SqlStore` implements every operation of :class:`~mercato.store.base.Store`: its
statements and the transactions around them. A backend adds its connection pool, its schema
migrations and its :class:`~mercato.store.dialect.Dialect`
(:class:`~mercato.store.sqlite.SqliteStore`, :class:`~mercato.store.postgres.PostgresStore`).
What a dialect decides:

* **placeholders**: the statements here are written with ``?``; a dialect translates them
  and says how a column is matched against a list (``IN (?, ?)``, ``= ANY(?)``);
* **transactions**: every write runs in one write transaction (SQLite ``BEGIN IMMEDIATE``),
  and every read of more than one statement in one read snapshot (SQLite: a deferred
  ``BEGIN``, whose snapshot is taken by its first read; PostgreSQL: ``REPEATABLE READ READ
  ONLY``), so a write committed between the statements is seen whole or not at all. A read of
  one statement is a snapshot by itself and runs without a transaction. Where a write reads a
  row to decide what to write, the dialect locks it (``FOR UPDATE`` on PostgreSQL; SQLite's
  transaction holds the whole database's write lock already);
* **bulk writes**: the rows of a write go in as one dialect-level operation (``merge``),
  which also unites sketches the backend's way. A seal's final rows and local-day rows
  replace stored ones, so they need no merging: the old rows are deleted and the new ones
  inserted in key order (``insert``), in one transaction;
* **errors**: the driver's errors become the store's (:mod:`mercato.store.errors`). Any error
  inside :meth:`SqlStore.write` or :meth:`SqlStore.write_sealed_hour` is a
  :class:`StoreWriteError` (nothing of it landed); elsewhere a database that is away or a full
  disk is a :class:`StoreUnavailableError` (the same call may succeed later), anything else a
  :class:`StoreError`.

A lease is taken by one upsert whose ``WHERE`` admits only a free, expired or own lease:
racing holders take turns on SQLite's write lock or on PostgreSQL's lock of the conflicting
row, so exactly one of them sees a change. Times are epoch milliseconds of the calling
machine's clock; processes sharing a store share the clock.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, Self

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from mercato.metrics.kernel import OVERFLOW, PARTIAL_SCHEMA, SUM_LIMIT, empty_partials
from mercato.names import (
    REGISTERED,
    RUNNING,
    aggregator_consumer,
    days_watermark,
    stale_days_watermark,
)
from mercato.store.base import (
    DefinitionVersion,
    JobRun,
    Layer,
    SealedHour,
    ServingChange,
    VersionTotal,
    check_expected_offsets,
    check_timezone,
    conform_day_partials,
    conform_partials,
    in_key_order,
    metric_names,
)
from mercato.store.dialect import C, Db, Dialect, first_line
from mercato.store.errors import (
    InvalidPartialsError,
    StoreError,
    StoreUnavailableError,
    StoreWriteError,
    UnknownJobRunError,
    UnknownVersionError,
)

COLUMNS = ", ".join(PARTIAL_SCHEMA.names)
DAY_COLUMNS = COLUMNS.replace("bucket", "day")
KEY_COLUMNS = "version, merchant_id, metric, dimension, member, bucket"
SPEED, FINAL, DAILY = "speed_rollups", "final_rollups", "daily_rollups"

SET_OFFSET = """
    INSERT INTO consumer_offsets (consumer, partition, next_offset) VALUES (?, ?, ?)
    ON CONFLICT (consumer, partition) DO UPDATE SET next_offset = excluded.next_offset
"""
WATERMARK = "SELECT value FROM watermarks WHERE name = ? AND version = ?"
SET_WATERMARK = """
    INSERT INTO watermarks (name, version, value) VALUES (?, ?, ?)
    ON CONFLICT (name, version) DO UPDATE SET value = excluded.value
"""
SEAL = """
    INSERT INTO sealed_hours (version, hour, fingerprint, events, sealed_at)
    VALUES (?, ?, ?, ?, ?) ON CONFLICT (version, hour) DO UPDATE SET
    fingerprint = excluded.fingerprint, events = excluded.events, sealed_at = excluded.sealed_at
"""
TAKE_LEASE = """
    INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
    WHERE leases.holder = excluded.holder OR leases.expires_at <= ?
"""
WHERE_HOUR_ROWS = " WHERE version = ? AND bucket >= ? AND bucket < ?"
HOUR_ROWS = "FROM final_rollups" + WHERE_HOUR_ROWS
MARK_STALE = """
    INSERT INTO watermarks (name, version, value) VALUES (?, ?, ?)
    ON CONFLICT (name, version) DO UPDATE SET value = excluded.value
    WHERE excluded.value < watermarks.value
"""
RUN_COLUMNS = "id, job, params, attempt, status, started_at, finished_at, error, output"


# the kernel's OVERFLOW, written so that SQLite reads it as an integer (its literal
# -9223372036854775808 is minus a float)
OVERFLOW_SQL = f"({-SUM_LIMIT} - 1)"
assert OVERFLOW == -SUM_LIMIT - 1


def upsert(table: str, source: str, *, least: str, greatest: str, sketch: str, fits: str) -> str:
    """The statement merging rows from ``source`` (``VALUES …`` or ``SELECT …``) into the
    rollups ``table`` as :func:`~mercato.metrics.kernel.merge` would; ``least``/``greatest``
    name the dialect's scalar minimum and maximum, ``sketch`` is the united sketch, ``fits``
    a condition that ``{a} + {b}`` fits in a signed 64-bit integer."""
    # NULL means "nothing yet": x + NULL is x, and the extreme of x and NULL is x (SQLite's
    # scalar min()/max() return NULL if any argument is NULL, hence the coalesce). Sums never
    # wrap: OVERFLOW stays, and a total beyond 64 bits becomes it (kernel.add_sums).
    old, new = f"{table}.sum", "excluded.sum"
    return f"""
        INSERT INTO {table} (version, {COLUMNS}) {source}
        ON CONFLICT ({KEY_COLUMNS}) DO UPDATE SET
            count = coalesce({table}.count + excluded.count, {table}.count, excluded.count),
            sum = CASE
                WHEN {old} IS NULL THEN {new}
                WHEN {new} IS NULL THEN {old}
                WHEN {old} = {OVERFLOW_SQL} OR {new} = {OVERFLOW_SQL} THEN {OVERFLOW_SQL}
                WHEN {fits.format(a=old, b=new)} THEN {old} + {new}
                ELSE {OVERFLOW_SQL}
            END,
            min = coalesce({least}({table}.min, excluded.min), {table}.min, excluded.min),
            max = coalesce({greatest}({table}.max, excluded.max), {table}.max, excluded.max),
            sketch = {sketch},
            invalid = {table}.invalid + excluded.invalid
    """


class SqlStore(ABC, Generic[C]):
    """The store's operations over an SQL database; a backend adds connections and dialect."""

    _dialect: Dialect[C]
    _name: str  # the store in messages

    @abstractmethod
    def _connection(self) -> AbstractContextManager[C]:
        """A connection for one call, back to the pool after it (StoreClosedError once the
        store is closed)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store cannot be used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- definitions versions and watermarks ------------------------------------------------

    def register_version(self, hash: str, text: str) -> int:
        with self._db() as db:
            db.execute(
                "INSERT INTO definition_versions (hash, text, created_at, state)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (hash) DO NOTHING",
                (hash, text, now_ms(), REGISTERED),
            )
            return int(db.value("SELECT id FROM definition_versions WHERE hash = ?", (hash,)))

    def versions(self) -> list[DefinitionVersion]:
        with self._db() as db:
            rows = db.rows(
                "SELECT id, hash, text, created_at, state FROM definition_versions ORDER BY id"
            )
        return [
            DefinitionVersion(int(id), hash, text, moment(ms), state)
            for id, hash, text, ms, state in rows
        ]

    def serving_version(self) -> int | None:
        with self._db() as db:
            return _int(db.value("SELECT version FROM serving_version"))

    def set_serving_version(self, version: int) -> None:
        with self._writing() as db:
            _check_version(db, version)
            previous = _int(db.value(f"SELECT version FROM serving_version{self._dialect.lock}"))
            if previous == version:
                return
            db.execute(
                "INSERT INTO serving_version (singleton, version) VALUES (1, ?)"
                " ON CONFLICT (singleton) DO UPDATE SET version = excluded.version",
                (version,),
            )
            db.execute(
                "INSERT INTO serving_changes (version, previous, changed_at) VALUES (?, ?, ?)",
                (version, previous, now_ms()),
            )

    def serving_history(self, limit: int = 20) -> list[ServingChange]:
        with self._db() as db:
            rows = db.rows(
                "SELECT version, previous, changed_at FROM serving_changes"
                " ORDER BY id DESC LIMIT ?",
                (max(limit, 0),),  # a negative LIMIT is no limit to SQLite
            )
        return [ServingChange(int(v), _int(p), moment(ms)) for v, p, ms in rows]

    def drop_version(self, version: int) -> int:
        with self._writing() as db:
            serving = db.value(f"SELECT version FROM serving_version{self._dialect.lock}")
            if _int(serving) == version:
                raise StoreError(f"version {version} is serving: promote another one first")
            dropped = 0
            for table in (SPEED, FINAL, DAILY):
                dropped += db.execute(f"DELETE FROM {table} WHERE version = ?", (version,)).rowcount
            db.execute("DELETE FROM sealed_hours WHERE version = ?", (version,))
            db.execute("DELETE FROM watermarks WHERE version = ?", (version,))
            for (hash,) in db.rows(
                "UPDATE definition_versions SET state = 'dropped' WHERE id = ? RETURNING hash",
                (version,),
            ):
                db.execute(
                    "DELETE FROM consumer_offsets WHERE consumer = ?", (aggregator_consumer(hash),)
                )
        return dropped

    def set_watermark(self, name: str, version: int, value: int) -> None:
        with self._db() as db:
            db.execute(SET_WATERMARK, (name, version, value))

    def watermark(self, name: str, version: int) -> int | None:
        with self._db() as db:
            return _int(db.value(WATERMARK, (name, version)))

    # -- rollups and offsets ----------------------------------------------------------------

    def write(
        self,
        version: int,
        consumer: str,
        partials: pa.Table,
        offsets: Mapping[int, int],
        expect: Mapping[int, int | None] | None = None,
    ) -> None:
        table = conform_partials(partials)
        positions = [(consumer, int(p), int(o)) for p, o in offsets.items()]
        what = f"write of {table.num_rows} partials for {consumer!r}"
        with self._db() as db, self._rolled_back(what):
            table = self._dialect.prepare(db.raw, table)
            with self._transaction(db, self._dialect.begin_write):
                _check_version(db, version)
                if expect:  # writers of one partition take turns: one finds what it expects
                    partitions = sorted(int(p) for p in expect)
                    self._dialect.take_turns(db.raw, consumer, partitions)
                    check_expected_offsets(consumer, expect, _offsets(db, consumer))
                self._dialect.merge(db.raw, SPEED, version, table)
                db.many(SET_OFFSET, positions)

    def offsets(self, consumer: str) -> dict[int, int]:
        with self._db() as db:
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
        return to_table(
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
        with self._db() as db:
            rows = db.rows(
                "SELECT member, CAST(coalesce(sum(count), 0) AS bigint) AS total FROM ("
                f" SELECT member, count FROM final_rollups WHERE {where}"
                "   AND bucket >= ? AND bucket < ?"
                f" UNION ALL SELECT member, count FROM speed_rollups WHERE {where}"
                "   AND bucket >= ? AND bucket < ?"
                ") AS layers GROUP BY member ORDER BY total DESC, member",
                (*params, start, cut, *params, cut, end),
            )
        return [(str(member), int(total)) for member, total in rows]

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
        metric, values = self._dialect.any_of("metric", names)
        where = f"version = ? AND merchant_id = ? AND {metric} AND dimension = ?"
        params = (version, merchant_id, *values, dimension)
        # the days watermark and the rows it speaks for, together
        with self._reading() if by_day else self._db() as db:
            days = start
            if by_day:
                mark = db.value(WATERMARK, (days_watermark(merchant_id), version))
                days = start if mark is None else min(max(start, int(mark)), end)
            cut = days if sealed_through is None else min(max(sealed_through, days), end)
            daily = (
                f"SELECT {DAY_COLUMNS} FROM daily_rollups"
                f" WHERE {where} AND day >= ? AND day < ? UNION ALL "
                if days > start
                else ""
            )
            return db.rows(
                f"{daily}SELECT {COLUMNS} FROM final_rollups"
                f" WHERE {where} AND bucket >= ? AND bucket < ?"
                f" UNION ALL SELECT {COLUMNS} FROM speed_rollups"
                f" WHERE {where} AND bucket >= ? AND bucket < ?"
                " ORDER BY 2, 3, 4, 5",  # metric, dimension, member, bucket
                (*((*params, start, days) if days > start else ()),
                 *params, days, cut, *params, cut, end),
            )  # fmt: skip

    # -- the batch layer --------------------------------------------------------------------

    def write_sealed_hour(
        self, version: int, hour: int, partials: pa.Table, fingerprint: str, events: int
    ) -> list[str]:
        table = conform_partials(partials)
        end = hour + 3600
        if table.num_rows:
            low, high = pc.min(table["bucket"]).as_py(), pc.max(table["bucket"]).as_py()
            if low < hour or high >= end:
                raise InvalidPartialsError(f"partials of hour {hour} have buckets outside it")
        try:
            table = in_key_order(table)
        except Exception as exc:  # a repeated key's sketch that is not one
            cause = f"partials do not merge: {first_line(exc)}"
            raise StoreWriteError(f"seal of hour {hour} was rolled back: {cause}") from exc
        after = set(pc.unique(table["merchant_id"]).to_pylist())
        hour_rows = (version, hour, end)
        with self._db() as db, self._rolled_back(f"seal of hour {hour}"):
            self._dialect.make_room(db.raw, table)
            with self._transaction(db, self._dialect.begin_write):
                _check_version(db, version)
                # Seals of one hour take turns: under READ COMMITTED a second seal's DELETE
                # would not see the first's new rows, and its insert would then add to them
                # (the hour counted twice, or a key conflict). Once it has its turn, its
                # DELETE sees them.
                self._dialect.take_turns(db.raw, f"seal/{version}", [hour // 3600 % 2**31])
                before = db.rows(f"SELECT DISTINCT merchant_id {HOUR_ROWS}", hour_rows)
                db.execute(f"DELETE {HOUR_ROWS}", hour_rows)
                # the hour holds no final row now: a plain insert in key order, no upsert
                self._dialect.insert(db.raw, FINAL, f"version, {COLUMNS}", rows_of(version, table))
                db.execute(SEAL, (version, hour, fingerprint, events, now_ms()))
                replaced = sorted(after.union(str(m) for (m,) in before))
                _mark_stale_days(db, version, hour, replaced)
        return replaced

    def sealed_hours(self, version: int) -> dict[int, SealedHour]:
        with self._db() as db:
            rows = db.rows(
                "SELECT hour, fingerprint, events, sealed_at FROM sealed_hours WHERE version = ?",
                (version,),
            )
        return {
            int(hour): SealedHour(int(hour), fingerprint, int(events), int(ms))
            for hour, fingerprint, events, ms in rows
        }

    def final_merchants(
        self, version: int, start: int, end: int, timezones: Sequence[str] | None = None
    ) -> list[str]:
        rows = "SELECT DISTINCT merchant_id FROM final_rollups" + WHERE_HOUR_ROWS
        with self._db() as db:
            if timezones is None:
                found = db.rows(f"{rows} ORDER BY merchant_id", (version, start, end))
            else:  # the merchants with rows first: far fewer than their rows
                zone, values = self._dialect.any_of("coalesce(m.timezone, 'UTC')", timezones)
                found = db.rows(
                    f"SELECT f.merchant_id FROM ({rows}) AS f LEFT JOIN merchants AS m"
                    f" ON m.merchant_id = f.merchant_id WHERE {zone} ORDER BY f.merchant_id",
                    (version, start, end, *values),
                )
        return [str(m) for (m,) in found]

    def layer_totals(
        self, version: int, start: int, end: int, period: int = 86_400, layer: Layer = "final"
    ) -> Iterator[VersionTotal]:
        rows = f"FROM {layer_table(layer)} WHERE version = ? AND dimension = ''"
        params = (period, version, start, end)
        with self._reading() as db:  # the sums and the sketches of the same rows
            totals = db.rows(
                "SELECT merchant_id, metric, bucket - bucket % ? AS period,"
                f" CAST(sum(count) AS bigint), {self._dialect.total_of_sums('sum')},"
                " min(min), max(max)"
                f" {rows} AND bucket >= ? AND bucket < ? GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                params,
            )
            sketches = db.rows(
                f"SELECT merchant_id, metric, bucket - bucket % ? AS period, sketch {rows}"
                " AND bucket >= ? AND bucket < ? AND sketch IS NOT NULL ORDER BY 1, 2, 3",
                params,
            )
        yield from join_totals(totals, sketches)

    def invalid_totals(
        self, version: int, start: int, end: int, sealed_through: int | None = None
    ) -> dict[str, int]:
        cut = start if sealed_through is None else min(max(sealed_through, start), end)
        rows = (
            "SELECT metric, invalid FROM {} WHERE version = ? AND bucket >= ? AND bucket < ?"
            " AND invalid > 0 AND dimension = ''"  # what the partial indexes hold
        )
        with self._db() as db:  # one statement: both layers from one snapshot
            totals = db.rows(
                f"SELECT metric, CAST(sum(invalid) AS bigint) FROM ({rows.format(FINAL)}"
                f" UNION ALL {rows.format(SPEED)}) AS layers GROUP BY metric",
                (version, start, cut, version, cut, end),
            )
        return {str(metric): int(count) for metric, count in totals}

    # -- local days and merchants -----------------------------------------------------------

    def replace_days(
        self,
        version: int,
        merchant_id: str,
        start: int,
        end: int,
        partials: pa.Table,
        days_through: int | None = None,
    ) -> None:
        table = conform_day_partials(partials, merchant_id)
        with self._writing() as db:
            db.execute(
                "DELETE FROM daily_rollups"
                " WHERE version = ? AND merchant_id = ? AND day >= ? AND day < ?",
                (version, merchant_id, start, end),
            )
            self._dialect.insert(db.raw, DAILY, f"version, {DAY_COLUMNS}", rows_of(version, table))
            if days_through is not None:
                db.execute(SET_WATERMARK, (days_watermark(merchant_id), version, days_through))
            db.execute(  # the days a seal changed under are derived again now
                "DELETE FROM watermarks"
                " WHERE name = ? AND version = ? AND value >= ? AND value < ?",
                (stale_days_watermark(merchant_id), version, start, end),
            )

    def read_days(
        self,
        version: int,
        merchant_id: str,
        metrics: Sequence[str],
        start: int,
        end: int,
        dimension: str = "",
    ) -> list[tuple[Any, ...]]:
        names = metric_names(metrics)
        if not names:
            return []
        metric, values = self._dialect.any_of("metric", names)
        with self._db() as db:
            return db.rows(
                f"SELECT {DAY_COLUMNS} FROM daily_rollups"
                f" WHERE version = ? AND merchant_id = ? AND {metric}"
                "   AND dimension = ? AND day >= ? AND day < ?"
                " ORDER BY metric, dimension, member, day",
                (version, merchant_id, *values, dimension, start, end),
            )

    def days_to_rederive(self, version: int) -> list[str]:
        with self._db() as db:
            rows = db.rows(
                "SELECT name FROM watermarks WHERE version = ? AND name LIKE 'days_through/%'"
                " AND value = 0 ORDER BY name",
                (version,),
            )
        return [str(name).split("/", 1)[1] for (name,) in rows]

    def stale_days(self, version: int) -> dict[str, int]:
        with self._db() as db:
            rows = db.rows(
                "SELECT name, value FROM watermarks WHERE version = ? AND name LIKE 'days_stale/%'",
                (version,),
            )
        return {str(name).split("/", 1)[1]: int(value) for name, value in rows}

    def merchant_timezones(self, merchant_ids: Sequence[str]) -> dict[str, str]:
        zones: dict[str, str] = {}
        with self._db() as db:
            for at in range(0, len(merchant_ids), 500):  # within any SQLite's variables
                chunk = merchant_ids[at : at + 500]
                merchant, values = self._dialect.any_of("merchant_id", chunk)
                zones.update(
                    db.rows(
                        f"SELECT merchant_id, timezone FROM merchants WHERE {merchant}"
                        " AND timezone IS NOT NULL",
                        values,
                    )
                )
        return zones

    def timezones_in_use(self) -> list[str]:
        with self._db() as db:
            rows = db.rows(
                "SELECT DISTINCT timezone FROM merchants WHERE timezone IS NOT NULL ORDER BY 1"
            )
        return [str(zone) for (zone,) in rows]

    def set_merchant_timezone(self, merchant_id: str, timezone: str) -> None:
        check_timezone(timezone)
        with self._writing() as db:
            db.execute(  # the row exists, to be locked: concurrent changes take turns
                "INSERT INTO merchants (merchant_id, timezone, updated_at) VALUES (?, NULL, ?)"
                " ON CONFLICT (merchant_id) DO NOTHING",
                (merchant_id, now_ms()),
            )
            before = db.value(
                f"SELECT timezone FROM merchants WHERE merchant_id = ?{self._dialect.lock}",
                (merchant_id,),
            )
            db.execute(
                "UPDATE merchants SET timezone = ?, updated_at = ? WHERE merchant_id = ?",
                (timezone, now_ms(), merchant_id),
            )
            if (before or "UTC") != timezone:  # its local days are other days now
                db.execute("DELETE FROM daily_rollups WHERE merchant_id = ?", (merchant_id,))
                db.execute(  # 0: derive every day again
                    "UPDATE watermarks SET value = 0 WHERE name = ?", (days_watermark(merchant_id),)
                )

    def merchant_timezone(self, merchant_id: str) -> str | None:
        with self._db() as db:
            zone = db.value("SELECT timezone FROM merchants WHERE merchant_id = ?", (merchant_id,))
        return None if zone is None else str(zone)

    # -- job runs and leases ----------------------------------------------------------------

    def start_job_run(self, job: str, params: Mapping[str, Any], attempt: int) -> int:
        encoded = msgspec.json.encode(dict(params)).decode()
        with self._db() as db:
            [(run_id,)] = db.rows(  # every row fetched: SQLite ends the statement only then
                "INSERT INTO job_runs (job, params, attempt, status, started_at)"
                " VALUES (?, ?, ?, ?, ?) RETURNING id",
                (job, encoded, attempt, RUNNING, now_ms()),
            )
        return int(run_id)

    def finish_job_run(
        self, run_id: int, status: str, error: str | None = None, output: str | None = None
    ) -> None:
        with self._db() as db:
            cursor = db.execute(
                "UPDATE job_runs SET status = ?, finished_at = ?, error = ?, output = ?"
                " WHERE id = ?",
                (status, now_ms(), error, output, run_id),
            )
            if cursor.rowcount == 0:
                raise UnknownJobRunError(run_id)

    def job_runs(self, job: str | None = None, limit: int = 100) -> list[JobRun]:
        where, args = ("WHERE job = ?", (job,)) if job is not None else ("", ())
        with self._db() as db:
            rows = db.rows(
                f"SELECT {RUN_COLUMNS} FROM job_runs {where} ORDER BY id DESC LIMIT ?",
                (*args, max(limit, 0)),
            )
        return [_job_run(row) for row in rows]

    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        now = now_ms()
        with self._db() as db:
            cursor = db.execute(TAKE_LEASE, (name, holder, now + round(seconds * 1000), now))
            return cursor.rowcount == 1

    def release_lease(self, name: str, holder: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    # -- connections and transactions -------------------------------------------------------

    @contextmanager
    def _db(self) -> Iterator[Db[C]]:
        """A connection for one call, the driver's errors turned into the store's."""
        try:
            with self._connection() as raw:
                yield Db(raw, self._dialect)
        except self._dialect.error as exc:
            unavailable = self._dialect.unavailable(exc)
            error = StoreUnavailableError if unavailable else StoreError
            raise error(f"{self._name}: {first_line(exc)}") from exc

    @contextmanager
    def _transaction(self, db: Db[C], begin: str) -> Iterator[None]:
        """``begin`` … ``COMMIT``, or ``ROLLBACK`` on any error."""
        db.execute(begin)
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself after some errors (a full disk); a lost
            # connection cannot roll back, and the server does
            if self._dialect.in_transaction(db.raw):
                with contextlib.suppress(self._dialect.error):
                    db.execute("ROLLBACK")
            raise

    @contextmanager
    def _reading(self) -> Iterator[Db[C]]:
        """A connection in a read snapshot: for reads of more than one statement."""
        with self._db() as db, self._transaction(db, self._dialect.begin_read):
            yield db

    @contextmanager
    def _writing(self) -> Iterator[Db[C]]:
        """A connection in a write transaction."""
        with self._db() as db, self._transaction(db, self._dialect.begin_write):
            yield db

    @contextmanager
    def _rolled_back(self, what: str) -> Iterator[None]:
        """The driver's errors as :class:`StoreWriteError`: ``what`` was rolled back."""
        try:
            yield
        except self._dialect.error as exc:
            cause = self._dialect.cause(exc)
            raise StoreWriteError(f"{what} was rolled back: {first_line(cause)}") from cause


def _mark_stale_days(db: Db[Any], version: int, hour: int, merchants: list[str]) -> None:
    """Record that the final rows of ``merchants`` changed in ``hour``, for those whose
    derived local days cover it: their days are derived again even if the seal stops before
    (see :meth:`SqlStore.stale_days`)."""
    covered = []
    for at in range(0, len(merchants), 500):  # within any SQLite's variables
        names, values = db.dialect.any_of(
            "name", [days_watermark(m) for m in merchants[at : at + 500]]
        )
        covered += db.rows(
            f"SELECT name FROM watermarks WHERE version = ? AND {names} AND value > ?",
            (version, *values, hour),
        )
    db.many(
        MARK_STALE,
        [(stale_days_watermark(name.split("/", 1)[1]), version, hour) for (name,) in covered],
    )


def _check_version(db: Db[Any], version: int) -> None:
    if db.value("SELECT 1 FROM definition_versions WHERE id = ?", (version,)) is None:
        raise UnknownVersionError(version)


def _offsets(db: Db[Any], consumer: str) -> dict[int, int]:
    rows = db.rows(
        "SELECT partition, next_offset FROM consumer_offsets WHERE consumer = ?", (consumer,)
    )
    return {int(p): int(o) for p, o in rows}


def _job_run(row: tuple[Any, ...]) -> JobRun:
    id, job, params, attempt, status, started, finished, error, output = row
    return JobRun(
        id=int(id),
        job=job,
        params=msgspec.json.decode(params),
        attempt=int(attempt),
        status=status,
        started_at=moment(started),
        finished_at=None if finished is None else moment(finished),
        error=error,
        output=output,
    )


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def now_ms() -> int:
    """Now, in epoch milliseconds (the stores' times)."""
    return time.time_ns() // 1_000_000


def moment(ms: int) -> datetime:
    """The UTC time of ``ms`` epoch milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC)


def rows_of(version: int, table: pa.Table) -> Iterator[tuple[Any, ...]]:
    """The rows ``(version, *PARTIAL_SCHEMA's columns)`` of ``table``, for a bulk write."""
    columns = [table[name].to_pylist() for name in PARTIAL_SCHEMA.names]
    return zip(itertools.repeat(version, table.num_rows), *columns, strict=True)


def to_table(rows: list[tuple[Any, ...]]) -> pa.Table:
    """Rows in PARTIAL_SCHEMA's column order as a table of it."""
    if not rows:
        return empty_partials()
    columns = list(zip(*rows, strict=True))
    arrays = [
        pa.array(values, field.type) for values, field in zip(columns, PARTIAL_SCHEMA, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=PARTIAL_SCHEMA)


def layer_table(layer: str) -> str:
    """The rollup table of a layer of :meth:`Store.layer_totals`."""
    if layer not in ("final", "speed"):
        raise ValueError(f"layer: final or speed, not {layer!r}")
    return f"{layer}_rollups"


def join_totals(
    rows: Iterable[Sequence[Any]], sketches: Iterable[Sequence[Any]]
) -> Iterator[VersionTotal]:
    """:class:`VersionTotal` of rows ``(merchant, metric, period, count, sum, min, max)`` with
    their sketches, from rows ``(merchant, metric, period, sketch)``."""
    blobs: dict[tuple[str, str, int], list[bytes]] = {}
    for merchant, metric, at, blob in sketches:
        blobs.setdefault((merchant, metric, int(at)), []).append(blob)
    for merchant, metric, at, count, total, low, high in rows:
        key = (merchant, metric, int(at))
        yield VersionTotal(merchant, metric, int(at), count, total, low, high, blobs.get(key, []))
