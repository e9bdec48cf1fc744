"""The SQLite store's local-day rows: each merchant's final partials merged per local day.

A mixin of :class:`~mercato.store.sqlite.SqliteStore`. Rows of ``daily_rollups`` have the
partials' columns with ``day`` (epoch seconds of the local midnight, in the merchant's time
zone) in place of the bucket; the batch layer derives them from final rows
(:mod:`mercato.batch.days`) so long ranges read one row per day instead of 96. How far a
merchant's days are derived is the watermark ``days_through/<merchant>``; changing the
merchant's time zone deletes its days and sets the watermark to 0: derive them all again
(see ``set_merchant_timezone``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mercato.metrics.kernel import PARTIAL_SCHEMA
from mercato.store.base import conform_day_partials, days_watermark, metric_names

COLUMNS = ", ".join(name if name != "bucket" else "day" for name in PARTIAL_SCHEMA.names)
MARKS = ", ".join("?" * (1 + len(PARTIAL_SCHEMA.names)))
INSERT_DAY = f"INSERT INTO daily_rollups (version, {COLUMNS}) VALUES ({MARKS})"


class SqliteDays:
    """Local-day rows over the store's connection pool."""

    if TYPE_CHECKING:

        def _connection(self) -> AbstractContextManager[sqlite3.Connection]: ...

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
        rows = [(version, *values) for values in zip(*columns, strict=True)]
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "DELETE FROM daily_rollups WHERE version = ? AND merchant_id = ?"
                    " AND day >= ? AND day < ?",
                    (version, merchant_id, start, end),
                )
                db.executemany(INSERT_DAY, rows)
                if days_through is not None:
                    db.execute(
                        "INSERT INTO watermarks (name, version, value) VALUES (?, ?, ?)"
                        " ON CONFLICT (name, version) DO UPDATE SET value = excluded.value",
                        (days_watermark(merchant_id), version, days_through),
                    )
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

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
        marks = ", ".join("?" * len(names))
        with self._connection() as db:
            rows: list[tuple[Any, ...]] = db.execute(
                f"SELECT {COLUMNS} FROM daily_rollups"
                f" WHERE version = ? AND merchant_id = ? AND metric IN ({marks})"
                "   AND dimension = ? AND day >= ? AND day < ?"
                " ORDER BY metric, dimension, member, day",
                (version, merchant_id, *names, dimension, start, end),
            ).fetchall()
        return rows

    def days_to_rederive(self, version: int) -> list[str]:
        with self._connection() as db:
            rows = db.execute(
                "SELECT name FROM watermarks WHERE version = ? AND name LIKE 'days_through/%'"
                " AND value = 0 ORDER BY name",
                (version,),
            ).fetchall()
        return [str(name).split("/", 1)[1] for (name,) in rows]

    def final_merchants(self, version: int, start: int, end: int) -> list[str]:
        with self._connection() as db:
            rows = db.execute(
                "SELECT DISTINCT merchant_id FROM final_rollups"
                " WHERE version = ? AND bucket >= ? AND bucket < ? ORDER BY merchant_id",
                (version, start, end),
            ).fetchall()
        return [str(m) for (m,) in rows]
