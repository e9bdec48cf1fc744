"""An in-memory store for tests: the same contract as the SQLite store, nothing on disk.

Rollups are kept as one partials table per (version, merchant) and merged with the kernel's
own :func:`~mercato.metrics.kernel.merge`, so this twin is also the reference the SQLite
store's upserts are tested against.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from mercato.metrics.kernel import empty_partials, merge, sort_partials
from mercato.store.base import (
    RUNNING,
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
    days_watermark,
    metric_names,
)
from mercato.store.errors import (
    InvalidPartialsError,
    StoreClosedError,
    StoreError,
    StoreWriteError,
    UnknownJobRunError,
    UnknownVersionError,
)


class MemoryStore:
    """A thread-safe store held in dictionaries; writes swap in their result atomically."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # reentrant: read_rows_by_day reads under it
        self._closed = False
        self._versions: list[DefinitionVersion] = []
        self._serving: int | None = None
        self._history: list[ServingChange] = []
        self._rollups: dict[tuple[int, str], pa.Table] = {}
        self._final: dict[tuple[int, str], pa.Table] = {}
        self._days: dict[tuple[int, str], pa.Table] = {}
        self._sealed: dict[int, dict[int, SealedHour]] = {}
        self._watermarks: dict[tuple[str, int], int] = {}
        self._offsets: dict[str, dict[int, int]] = {}
        self._timezones: dict[str, str] = {}
        self._job_runs: dict[int, JobRun] = {}
        self._leases: dict[str, tuple[str, float]] = {}  # name: (holder, expires at)

    def register_version(self, hash: str, text: str) -> int:
        with self._lock:
            self._check_open()
            for version in self._versions:
                if version.hash == hash:
                    return version.id
            version = DefinitionVersion(len(self._versions) + 1, hash, text, datetime.now(UTC))
            self._versions.append(version)
            return version.id

    def versions(self) -> list[DefinitionVersion]:
        with self._lock:
            self._check_open()
            return list(self._versions)

    def serving_version(self) -> int | None:
        with self._lock:
            self._check_open()
            return self._serving

    def set_serving_version(self, version: int) -> None:
        with self._lock:
            self._check_version(version)
            if self._serving != version:
                change = ServingChange(version, self._serving, datetime.now(UTC))
                self._history.insert(0, change)
                self._serving = version

    def serving_history(self, limit: int = 20) -> list[ServingChange]:
        with self._lock:
            self._check_open()
            return self._history[:limit]

    def drop_version(self, version: int) -> int:
        with self._lock:
            self._check_version(version)
            if self._serving == version:
                raise StoreError(f"version {version} is serving: promote another one first")
            dropped = 0
            for tables in (self._rollups, self._final, self._days):
                for key in [k for k in tables if k[0] == version]:
                    dropped += tables.pop(key).num_rows
            self._sealed.pop(version, None)
            for mark in [k for k in self._watermarks if k[1] == version]:
                del self._watermarks[mark]
            index = next(i for i, v in enumerate(self._versions) if v.id == version)
            entry = self._versions[index]
            self._versions[index] = msgspec.structs.replace(entry, state="dropped")
            self._offsets.pop(f"aggregator/{entry.hash}", None)
            return dropped

    def layer_totals(
        self, version: int, start: int, end: int, period: int = 86_400, layer: Layer = "final"
    ) -> Iterator[VersionTotal]:
        source = {"final": self._final, "speed": self._rollups}.get(layer)
        if source is None:
            raise ValueError(f"layer: final or speed, not {layer!r}")
        with self._lock:
            self._check_open()
            tables = [t for k, t in sorted(source.items()) if k[0] == version]
        cells: dict[tuple[str, str, int], list[Any]] = {}
        for table in tables:
            for r in table.to_pylist():
                if r["dimension"] or not start <= r["bucket"] < end:
                    continue
                key = (r["merchant_id"], r["metric"], r["bucket"] - r["bucket"] % period)
                cell = cells.setdefault(key, [None, None, None, None, []])
                for i, name, pick in ((0, "count", _add), (1, "sum", _add), (2, "min", min),
                                      (3, "max", max)):  # fmt: skip
                    if r[name] is not None:
                        cell[i] = r[name] if cell[i] is None else pick(cell[i], r[name])
                if r["sketch"] is not None:
                    cell[4].append(r["sketch"])
        for key in sorted(cells):
            yield VersionTotal(*key, *cells[key])

    def invalid_totals(
        self, version: int, start: int, end: int, sealed_through: int | None = None
    ) -> dict[str, int]:
        cut = start if sealed_through is None else min(max(sealed_through, start), end)
        totals: dict[str, int] = {}
        with self._lock:
            self._check_open()
            layers = [(self._final, start, cut), (self._rollups, cut, end)]
            tables = [(t, low, high) for source, low, high in layers
                      for k, t in sorted(source.items()) if k[0] == version]  # fmt: skip
        for table, low, high in tables:
            for r in table.to_pylist():
                if r["invalid"] and not r["dimension"] and low <= r["bucket"] < high:
                    totals[r["metric"]] = totals.get(r["metric"], 0) + r["invalid"]
        return totals

    def write(
        self,
        version: int,
        consumer: str,
        partials: pa.Table,
        offsets: Mapping[int, int],
        expect: Mapping[int, int | None] | None = None,
    ) -> None:
        table = conform_partials(partials)
        next_offsets = {int(p): int(o) for p, o in offsets.items()}
        with self._lock:
            self._check_version(version)
            check_expected_offsets(consumer, expect, self._offsets.get(consumer, {}))
            # Compute every merchant's new table first, then swap them in with the offsets:
            # a failure on the way leaves the store as it was.
            merged: dict[tuple[int, str], pa.Table] = {}
            try:
                for merchant in pc.unique(table["merchant_id"]).to_pylist():
                    key = (version, merchant)
                    rows = table.filter(pc.equal(table["merchant_id"], merchant))
                    current = self._rollups.get(key, empty_partials())
                    merged[key] = sort_partials(merge([current, rows]))
            except (ValueError, RuntimeError, pa.ArrowException) as exc:
                raise StoreWriteError(f"write of {table.num_rows} partials failed: {exc}") from exc
            self._rollups.update(merged)
            self._offsets.setdefault(consumer, {}).update(next_offsets)

    def write_sealed_hour(
        self, version: int, hour: int, partials: pa.Table, fingerprint: str, events: int
    ) -> None:
        table = sort_partials(conform_partials(partials))
        end = hour + 3600
        outside = pc.or_(pc.less(table["bucket"], hour), pc.greater_equal(table["bucket"], end))
        if pc.any(outside).as_py():
            raise InvalidPartialsError(f"partials of hour {hour} have buckets outside it")
        with self._lock:
            self._check_version(version)
            final: dict[tuple[int, str], pa.Table] = {}
            for key, kept in self._final.items():
                if key[0] == version:
                    buckets = kept["bucket"]
                    kept = kept.filter(  # noqa: PLW2901
                        pc.or_(pc.less(buckets, hour), pc.greater_equal(buckets, end))
                    )
                final[key] = kept
            for merchant in pc.unique(table["merchant_id"]).to_pylist():
                key = (version, merchant)
                rows = table.filter(pc.equal(table["merchant_id"], merchant))
                final[key] = sort_partials(merge([final.get(key, empty_partials()), rows]))
            self._final = final
            sealed = SealedHour(
                hour, fingerprint, events, int(datetime.now(UTC).timestamp() * 1000)
            )
            self._sealed.setdefault(version, {})[hour] = sealed

    def sealed_hours(self, version: int) -> dict[int, SealedHour]:
        with self._lock:
            self._check_open()
            return dict(self._sealed.get(version, {}))

    def set_watermark(self, name: str, version: int, value: int) -> None:
        with self._lock:
            self._check_open()
            self._watermarks[(name, version)] = value

    def watermark(self, name: str, version: int) -> int | None:
        with self._lock:
            self._check_open()
            return self._watermarks.get((name, version))

    def offsets(self, consumer: str) -> dict[int, int]:
        with self._lock:
            self._check_open()
            return dict(self._offsets.get(consumer, {}))

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
        names = metric_names(metrics)
        cut = start if sealed_through is None else min(max(sealed_through, start), end)
        with self._lock:
            self._check_open()
            layers = [
                (self._final.get((version, merchant_id)), start, cut),
                (self._rollups.get((version, merchant_id)), cut, end),
            ]
        parts = []
        for table, low, high in layers:
            if table is None or not names or low >= high:
                continue
            mask = pc.and_(
                pc.and_(
                    pc.is_in(table["metric"], value_set=pa.array(names, pa.string())),
                    pc.equal(table["dimension"], dimension),
                ),
                pc.and_(pc.greater_equal(table["bucket"], low), pc.less(table["bucket"], high)),
            )
            parts.append(table.filter(mask))
        if not parts:
            return empty_partials()
        return pa.concat_tables(parts).sort_by(
            [(name, "ascending") for name in ("metric", "dimension", "member", "bucket")]
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
        table = self.read(version, merchant_id, metrics, start, end, dimension, sealed_through)
        return list(zip(*(table[name].to_pylist() for name in table.column_names), strict=True))

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
        with self._lock:  # the watermark and the rows from one state of the store
            self._check_open()
            mark = self._watermarks.get((days_watermark(merchant_id), version))
            days = min(max(start, mark), end) if mark is not None else start
            daily = self.read_days(version, merchant_id, metrics, start, days, dimension)
            rest = self.read_rows(
                version, merchant_id, metrics, days, end, dimension,
                None if sealed_through is None else max(days, sealed_through),
            )  # fmt: skip
        return daily + rest

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
        rows = self.read(version, merchant_id, [metric], start, end, dimension, sealed_through)
        totals: dict[str, int] = {}
        for member, count in zip(
            rows["member"].to_pylist(), rows["count"].to_pylist(), strict=True
        ):
            totals[member] = totals.get(member, 0) + (count or 0)
        return sorted(totals.items(), key=lambda item: (-item[1], item[0]))

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
        with self._lock:
            self._check_open()
            kept = self._days.get((version, merchant_id), empty_partials())
            outside = pc.or_(pc.less(kept["bucket"], start), pc.greater_equal(kept["bucket"], end))
            self._days[(version, merchant_id)] = sort_partials(
                pa.concat_tables([kept.filter(outside), table])
            )
            if days_through is not None:
                self._watermarks[(days_watermark(merchant_id), version)] = days_through

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
        with self._lock:
            self._check_open()
            table = self._days.get((version, merchant_id))
        if table is None or not names:
            return []
        mask = pc.and_(
            pc.and_(
                pc.is_in(table["metric"], value_set=pa.array(names, pa.string())),
                pc.equal(table["dimension"], dimension),
            ),
            pc.and_(pc.greater_equal(table["bucket"], start), pc.less(table["bucket"], end)),
        )
        rows = table.filter(mask)
        return list(zip(*(rows[name].to_pylist() for name in rows.column_names), strict=True))

    def days_to_rederive(self, version: int) -> list[str]:
        with self._lock:
            self._check_open()
            return sorted(
                name.split("/", 1)[1]
                for (name, v), value in self._watermarks.items()
                if v == version and name.startswith("days_through/") and value == 0
            )

    def final_merchants(self, version: int, start: int, end: int) -> list[str]:
        with self._lock:
            self._check_open()
            tables = [(k[1], t) for k, t in self._final.items() if k[0] == version]
        found = set()
        for merchant, table in tables:
            buckets = table["bucket"]
            inside = pc.and_(pc.greater_equal(buckets, start), pc.less(buckets, end))
            if pc.any(inside).as_py():
                found.add(merchant)
        return sorted(found)

    def set_merchant_timezone(self, merchant_id: str, timezone: str) -> None:
        check_timezone(timezone)
        with self._lock:
            self._check_open()
            if self._timezones.get(merchant_id, "UTC") != timezone:
                for key in [k for k in self._days if k[1] == merchant_id]:
                    del self._days[key]
                for mark in [k for k in self._watermarks if k[0] == days_watermark(merchant_id)]:
                    self._watermarks[mark] = 0  # derive every day again
            self._timezones[merchant_id] = timezone

    def merchant_timezone(self, merchant_id: str) -> str | None:
        with self._lock:
            self._check_open()
            return self._timezones.get(merchant_id)

    def start_job_run(self, job: str, params: Mapping[str, Any], attempt: int) -> int:
        # Through JSON, as the SQLite store keeps them, so both hand back the same values.
        copied = msgspec.json.decode(msgspec.json.encode(dict(params)))
        with self._lock:
            self._check_open()
            run_id = len(self._job_runs) + 1
            self._job_runs[run_id] = JobRun(
                run_id, job, copied, attempt, RUNNING, datetime.now(UTC)
            )
            return run_id

    def finish_job_run(
        self, run_id: int, status: str, error: str | None = None, output: str | None = None
    ) -> None:
        with self._lock:
            self._check_open()
            run = self._job_runs.get(run_id)
            if run is None:
                raise UnknownJobRunError(run_id)
            self._job_runs[run_id] = msgspec.structs.replace(
                run, status=status, finished_at=datetime.now(UTC), error=error, output=output
            )

    def job_runs(self, job: str | None = None, limit: int = 100) -> list[JobRun]:
        with self._lock:
            self._check_open()
            runs = [r for r in reversed(self._job_runs.values()) if job in (None, r.job)]
        return runs[: max(limit, 0)]

    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        with self._lock:
            self._check_open()
            now = time.time()
            current = self._leases.get(name)
            if current is not None and current[0] != holder and current[1] > now:
                return False
            self._leases[name] = (holder, now + seconds)
            return True

    def release_lease(self, name: str, holder: str) -> None:
        with self._lock:
            self._check_open()
            if self._leases.get(name, ("", 0.0))[0] == holder:
                del self._leases[name]

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the store is closed")

    def _check_version(self, version: int) -> None:
        self._check_open()
        if not any(v.id == version for v in self._versions):
            raise UnknownVersionError(version)


def _add(a: int, b: int) -> int:
    return a + b
