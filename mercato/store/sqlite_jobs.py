"""The SQLite store's job runs and leases (the scheduler's part of the store).

A mixin of :class:`~mercato.store.sqlite.SqliteStore`, kept apart so the rollup store stays
readable. Every method is one statement, so each is atomic without an explicit transaction:
a lease is taken by one upsert whose ``WHERE`` admits only a free, expired or own lease, and
SQLite's write lock makes racing holders take turns, so exactly one of them sees a change.
Times are epoch milliseconds of this machine's clock; processes sharing a store file share
the clock.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from mercato.store.base import RUNNING, JobRun
from mercato.store.errors import UnknownJobRunError

TAKE_LEASE = """
    INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
    WHERE leases.holder = excluded.holder OR leases.expires_at <= ?
"""

RUN_COLUMNS = "id, job, params, attempt, status, started_at, finished_at, error, output"


class SqliteJobs:
    """Job runs and leases over the store's connection pool."""

    if TYPE_CHECKING:

        def _connection(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def start_job_run(self, job: str, params: Mapping[str, Any], attempt: int) -> int:
        encoded = msgspec.json.encode(dict(params)).decode()
        with self._connection() as db:
            cursor = db.execute(
                "INSERT INTO job_runs (job, params, attempt, status, started_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (job, encoded, attempt, RUNNING, _now_ms()),
            )
            return int(cursor.lastrowid or 0)

    def finish_job_run(
        self, run_id: int, status: str, error: str | None = None, output: str | None = None
    ) -> None:
        with self._connection() as db:
            cursor = db.execute(
                "UPDATE job_runs SET status = ?, finished_at = ?, error = ?, output = ?"
                " WHERE id = ?",
                (status, _now_ms(), error, output, run_id),
            )
            if cursor.rowcount == 0:
                raise UnknownJobRunError(run_id)

    def job_runs(self, job: str | None = None, limit: int = 100) -> list[JobRun]:
        where, args = ("WHERE job = ?", (job,)) if job is not None else ("", ())
        with self._connection() as db:
            rows = db.execute(
                f"SELECT {RUN_COLUMNS} FROM job_runs {where} ORDER BY id DESC LIMIT ?",
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
            db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))


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
