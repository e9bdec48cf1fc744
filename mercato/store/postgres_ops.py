"""The PostgreSQL store's job runs and leases, operator views of versions, and local days.

Mixins of :class:`~mercato.store.postgres.PostgresStore`, kept apart so the rollup store stays
readable; each mirrors its SQLite twin (:mod:`~mercato.store.sqlite_jobs`,
:mod:`~mercato.store.sqlite_versions`, :mod:`~mercato.store.sqlite_days`). A lease is taken
by one upsert whose ``WHERE`` admits only a free, expired or own lease: of racing holders,
PostgreSQL's row lock on the conflicting key lets exactly one see a change. Times are epoch
milliseconds of the calling machine's clock, as in SQLite.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg
import pyarrow as pa

from mercato.metrics.kernel import PARTIAL_SCHEMA
from mercato.store.base import (
    RUNNING,
    JobRun,
    Layer,
    ServingChange,
    VersionTotal,
    conform_day_partials,
    days_watermark,
    join_totals,
    layer_table,
    metric_names,
)
from mercato.store.errors import StoreError, UnknownJobRunError

Connection = psycopg.Connection[tuple[Any, ...]]

TAKE_LEASE = """
    INSERT INTO leases (name, holder, expires_at) VALUES (%s, %s, %s)
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
    WHERE leases.holder = excluded.holder OR leases.expires_at <= %s
"""
RUN_COLUMNS = "id, job, params, attempt, status, started_at, finished_at, error, output"
ROLLUP_TABLES = ("speed_rollups", "final_rollups", "daily_rollups")
DAY_COLUMNS = ", ".join(name if name != "bucket" else "day" for name in PARTIAL_SCHEMA.names)


class PostgresJobs:
    """Job runs and leases over the store's connection pool."""

    if TYPE_CHECKING:

        def _connection(self) -> AbstractContextManager[Connection]: ...

    def start_job_run(self, job: str, params: Mapping[str, Any], attempt: int) -> int:
        encoded = msgspec.json.encode(dict(params)).decode()
        with self._connection() as db:
            row = db.execute(
                "INSERT INTO job_runs (job, params, attempt, status, started_at)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (job, encoded, attempt, RUNNING, _now_ms()),
            ).fetchone()
        return int(row[0]) if row else 0

    def finish_job_run(
        self, run_id: int, status: str, error: str | None = None, output: str | None = None
    ) -> None:
        with self._connection() as db:
            cursor = db.execute(
                "UPDATE job_runs SET status = %s, finished_at = %s, error = %s, output = %s"
                " WHERE id = %s",
                (status, _now_ms(), error, output, run_id),
            )
            if cursor.rowcount == 0:
                raise UnknownJobRunError(run_id)

    def job_runs(self, job: str | None = None, limit: int = 100) -> list[JobRun]:
        where, args = ("WHERE job = %s", (job,)) if job is not None else ("", ())
        with self._connection() as db:
            rows = db.execute(
                f"SELECT {RUN_COLUMNS} FROM job_runs {where} ORDER BY id DESC LIMIT %s",
                (*args, max(limit, 0)),
            ).fetchall()
        return [_job_run(row) for row in rows]

    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        now = _now_ms()
        with self._connection() as db:
            cursor = db.execute(TAKE_LEASE, (name, holder, now + round(seconds * 1000), now))
            return cursor.rowcount == 1

    def release_lease(self, name: str, holder: str) -> None:
        with self._connection() as db:
            db.execute("DELETE FROM leases WHERE name = %s AND holder = %s", (name, holder))


class PostgresVersions:
    """Serving history, cross-merchant totals and version removal over the store's pool."""

    if TYPE_CHECKING:

        def _connection(self) -> AbstractContextManager[Connection]: ...

    def serving_history(self, limit: int = 20) -> list[ServingChange]:
        with self._connection() as db:
            rows = db.execute(
                "SELECT version, previous, changed_at FROM serving_changes"
                " ORDER BY id DESC LIMIT %s",
                (max(limit, 0),),
            ).fetchall()
        return [
            ServingChange(int(v), None if p is None else int(p), _time(ms)) for v, p, ms in rows
        ]

    def layer_totals(
        self, version: int, start: int, end: int, period: int = 86_400, layer: Layer = "final"
    ) -> Iterator[VersionTotal]:
        table = layer_table(layer)
        where = "version = %s AND dimension = '' AND bucket >= %s AND bucket < %s"
        with self._connection() as db, db.transaction():
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            rows = db.execute(
                "SELECT merchant_id, metric, bucket - bucket %% %s AS period,"
                "       sum(count)::bigint, sum(sum)::bigint, min(min), max(max)"
                f" FROM {table} WHERE {where}"
                " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                (period, version, start, end),
            ).fetchall()
            sketches = db.execute(
                "SELECT merchant_id, metric, bucket - bucket %% %s AS period, sketch"
                f" FROM {table} WHERE {where} AND sketch IS NOT NULL ORDER BY 1, 2, 3",
                (period, version, start, end),
            ).fetchall()
        yield from join_totals(rows, sketches)

    def invalid_totals(
        self, version: int, start: int, end: int, sealed_through: int | None = None
    ) -> dict[str, int]:
        cut = start if sealed_through is None else min(max(sealed_through, start), end)
        totals: dict[str, int] = {}
        with self._connection() as db, db.transaction():
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            for table, low, high in (("final_rollups", start, cut), ("speed_rollups", cut, end)):
                for metric, count in db.execute(
                    f"SELECT metric, sum(invalid)::bigint FROM {table} WHERE version = %s"
                    " AND bucket >= %s AND bucket < %s AND invalid > 0 AND dimension = ''"
                    " GROUP BY metric",
                    (version, low, high),
                ).fetchall():
                    totals[metric] = totals.get(metric, 0) + int(count)
        return totals

    def drop_version(self, version: int) -> int:
        with self._connection() as db, db.transaction():
            serving = db.execute("SELECT version FROM serving_version FOR SHARE").fetchone()
            if serving is not None and int(serving[0]) == version:
                raise StoreError(f"version {version} is serving: promote another one first")
            dropped = 0
            for table in ROLLUP_TABLES:
                cursor = db.execute(f"DELETE FROM {table} WHERE version = %s", (version,))
                dropped += cursor.rowcount
            db.execute("DELETE FROM sealed_hours WHERE version = %s", (version,))
            db.execute("DELETE FROM watermarks WHERE version = %s", (version,))
            row = db.execute(
                "UPDATE definition_versions SET state = 'dropped' WHERE id = %s RETURNING hash",
                (version,),
            ).fetchone()
            if row is not None:
                db.execute(
                    "DELETE FROM consumer_offsets WHERE consumer = %s", (f"aggregator/{row[0]}",)
                )
        return dropped


class PostgresDays:
    """Local-day rows over the store's connection pool."""

    if TYPE_CHECKING:

        def _connection(self) -> AbstractContextManager[Connection]: ...

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
        columns = [table[name].to_pylist() for name in PARTIAL_SCHEMA.names]
        with self._connection() as db, db.transaction():
            db.execute(
                "DELETE FROM daily_rollups WHERE merchant_id = %s AND version = %s"
                " AND day >= %s AND day < %s",
                (merchant_id, version, start, end),
            )
            copy_in = f"COPY daily_rollups (version, {DAY_COLUMNS}) FROM STDIN"
            with db.cursor() as cursor, cursor.copy(copy_in) as copy:
                for values in zip(*columns, strict=True):
                    copy.write_row((version, *values))
            if days_through is not None:
                db.execute(
                    "INSERT INTO watermarks (name, version, value) VALUES (%s, %s, %s)"
                    " ON CONFLICT (name, version) DO UPDATE SET value = excluded.value",
                    (days_watermark(merchant_id), version, days_through),
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
        with self._connection() as db:
            rows: list[tuple[Any, ...]] = db.execute(
                f"SELECT {DAY_COLUMNS} FROM daily_rollups"
                " WHERE merchant_id = %s AND version = %s AND metric = ANY(%s)"
                "   AND dimension = %s AND day >= %s AND day < %s"
                " ORDER BY metric, dimension, member, day",
                (merchant_id, version, names, dimension, start, end),
            ).fetchall()
        return rows

    def days_to_rederive(self, version: int) -> list[str]:
        with self._connection() as db:
            rows = db.execute(
                "SELECT name FROM watermarks WHERE version = %s AND name LIKE 'days_through/%%'"
                " AND value = 0 ORDER BY name",
                (version,),
            ).fetchall()
        return [str(name).split("/", 1)[1] for (name,) in rows]

    def final_merchants(self, version: int, start: int, end: int) -> list[str]:
        with self._connection() as db:
            rows = db.execute(
                "SELECT DISTINCT merchant_id FROM final_rollups"
                " WHERE version = %s AND bucket >= %s AND bucket < %s ORDER BY merchant_id",
                (version, start, end),
            ).fetchall()
        return [str(m) for (m,) in rows]


def _job_run(row: tuple[Any, ...]) -> JobRun:
    id, job, params, attempt, status, started, finished, error, output = row
    return JobRun(
        id=int(id),
        job=job,
        params=msgspec.json.decode(params),
        attempt=int(attempt),
        status=status,
        started_at=_time(started),
        finished_at=None if finished is None else _time(finished),
        error=error,
        output=output,
    )


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
