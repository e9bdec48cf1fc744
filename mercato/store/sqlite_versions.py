"""The SQLite store's operator view of definitions versions: serving history, totals across
merchants for a diff, and dropping a version.

A mixin of :class:`~mercato.store.sqlite.SqliteStore`. These are the only reads that span
merchants; they serve operators' commands (``mercato diff``, ``mercato versions``), never the
query API, whose reads go through the merchant-scoped methods.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mercato.store.base import Layer, ServingChange, VersionTotal, join_totals, layer_table
from mercato.store.errors import StoreError

ROLLUP_TABLES = ("speed_rollups", "final_rollups", "daily_rollups")


class SqliteVersions:
    """Serving history, cross-merchant totals and version removal over the store's pool."""

    if TYPE_CHECKING:

        def _connection(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def serving_history(self, limit: int = 20) -> list[ServingChange]:
        with self._connection() as db:
            rows = db.execute(
                "SELECT version, previous, changed_at FROM serving_changes"
                " ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            ServingChange(int(v), None if p is None else int(p), _time(ms)) for v, p, ms in rows
        ]

    def layer_totals(
        self, version: int, start: int, end: int, period: int = 86_400, layer: Layer = "final"
    ) -> Iterator[VersionTotal]:
        table = layer_table(layer)
        with self._connection() as db:
            rows = db.execute(
                "SELECT merchant_id, metric, bucket - bucket % ? AS period,"
                "       sum(count), sum(sum), min(min), max(max)"
                f" FROM {table}"
                " WHERE version = ? AND dimension = '' AND bucket >= ? AND bucket < ?"
                " GROUP BY merchant_id, metric, period ORDER BY merchant_id, metric, period",
                (period, version, start, end),
            ).fetchall()
            sketches = db.execute(
                "SELECT merchant_id, metric, bucket - bucket % ? AS period, sketch"
                f" FROM {table} WHERE version = ? AND dimension = '' AND bucket >= ?"
                "   AND bucket < ? AND sketch IS NOT NULL ORDER BY merchant_id, metric, period",
                (period, version, start, end),
            ).fetchall()
        yield from join_totals(rows, sketches)

    def invalid_totals(
        self, version: int, start: int, end: int, sealed_through: int | None = None
    ) -> dict[str, int]:
        cut = start if sealed_through is None else min(max(sealed_through, start), end)
        totals: dict[str, int] = {}
        with self._connection() as db:
            db.execute("BEGIN")  # both layers from one snapshot
            try:
                for table, low, high in (
                    ("final_rollups", start, cut),
                    ("speed_rollups", cut, end),
                ):
                    for metric, count in db.execute(
                        f"SELECT metric, sum(invalid) FROM {table} WHERE version = ?"
                        " AND bucket >= ? AND bucket < ? AND invalid > 0 AND dimension = ''"
                        " GROUP BY metric",
                        (version, low, high),
                    ):
                        totals[metric] = totals.get(metric, 0) + int(count)
            finally:
                db.execute("COMMIT")
        return totals

    def drop_version(self, version: int) -> int:
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                dropped = _drop(db, version)
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return dropped


def _drop(db: sqlite3.Connection, version: int) -> int:
    serving = db.execute("SELECT version FROM serving_version").fetchone()
    if serving is not None and int(serving[0]) == version:
        raise StoreError(f"version {version} is serving: promote another one first")
    dropped = 0
    for table in ROLLUP_TABLES:
        dropped += db.execute(f"DELETE FROM {table} WHERE version = ?", (version,)).rowcount
    db.execute("DELETE FROM sealed_hours WHERE version = ?", (version,))
    db.execute("DELETE FROM watermarks WHERE version = ?", (version,))
    row = db.execute("SELECT hash FROM definition_versions WHERE id = ?", (version,)).fetchone()
    if row is not None:
        db.execute("UPDATE definition_versions SET state = 'dropped' WHERE id = ?", (version,))
        db.execute("DELETE FROM consumer_offsets WHERE consumer = ?", (f"aggregator/{row[0]}",))
    return dropped


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
