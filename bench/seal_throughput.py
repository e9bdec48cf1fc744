"""Seal events/s from the Parquet archive (issue target: >= 2,000,000 events/s with DuckDB),
with PySpark local mode doing the same job on the same archive in the same run.

Setup (not timed): a file log filled with ``--events`` generated events spread over the
past ``--hours`` complete hours and ``--merchants`` merchants (the demo's generator), archived
by the archiver. Each run: a fresh SQLite store and ``seal(..., force=True)``: every hour read,
de-duplicated, rolled up by the kernel and written as final rows; events/s = distinct events /
wall time. ``engine_only`` is the engine's part alone (no store writes). With ``--spark`` (needs
the ``[spark]`` extra) the same seal runs with the Spark engine, and the JSON gives the ratio.

    python bench/seal_throughput.py [--events 1000000] [--merchants 10000] [--runs 5] [--spark]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from benchstats import summary

from mercato.archive.archiver import Archiver
from mercato.archive.reader import committed_paths
from mercato.batch.engine import Engine, open_engine
from mercato.batch.seal import seal
from mercato.config import ArchiveConfig, LogConfig, StoreConfig
from mercato.demo.traffic import TrafficGenerator
from mercato.events.native import decode_native, normalize_native
from mercato.events.rules import EventRules
from mercato.log.file import FileLog
from mercato.metrics.definitions import load_definitions
from mercato.store.sqlite import SqliteStore


def build_archive(root: Path, events: int, merchants: int, hours: int) -> None:
    generator = TrafficGenerator(merchants=merchants, seed=1)
    rules = EventRules()
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = now - timedelta(hours=hours + 1)
    log = FileLog(root / "log", LogConfig(fsync=False))
    for _ in range(events // 10_000):
        body = msgspec.json.encode(generator.history(10_000, start, now - timedelta(hours=1)))
        log.append(normalize_native(decode_native(body, ndjson=False), now, "bench", rules))
    with Archiver(log, root / "archive", ArchiveConfig(flush_interval_seconds=0)) as archiver:
        while archiver.poll():
            pass
        archiver.poll()
    log.close()


def timed_seal(root: Path, name: str, engine: Engine, run: int) -> tuple[float, int]:
    definitions = load_definitions()
    with SqliteStore(root / f"store-{name}-{run}.sqlite3", StoreConfig()) as store:
        started = time.perf_counter()
        report = seal(store, root / "archive", definitions, engine, grace=timedelta(0), force=True)
        elapsed = time.perf_counter() - started
    events = sum(h.events for h in report.sealed)
    return events / elapsed, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--merchants", type=int, default=10_000)
    parser.add_argument("--hours", type=int, default=6)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--spark", action="store_true", help="also seal with PySpark local mode")
    args = parser.parse_args()
    definitions = load_definitions()
    results: dict[str, list[float]] = {"duckdb": [], "duckdb_engine_only": []}
    engines = {"duckdb": open_engine("duckdb")}
    if args.spark:
        results["spark"] = []
        engines["spark"] = open_engine("spark")
    with tempfile.TemporaryDirectory(prefix="mercato-bench-") as tmp:
        root = Path(tmp)
        build_archive(root, args.events, args.merchants, args.hours)
        paths = committed_paths(root / "archive")
        events = 0
        for run in range(args.runs):
            for name, engine in engines.items():
                rate, events = timed_seal(root, name, engine, run)
                results[name].append(rate)
            started = time.perf_counter()
            rolled = engines["duckdb"].rollup(paths, definitions)
            results["duckdb_engine_only"].append(rolled.events / (time.perf_counter() - started))
    for engine in engines.values():
        engine.close()
    duckdb = summary(results["duckdb"])
    report = {
        "benchmark": "seal_throughput",
        "unit": "events/s",
        "events": events,
        "merchants": args.merchants,
        "hours": args.hours,
        "files": len(paths),
        "runs": args.runs,
        "duckdb": duckdb,
        "duckdb_engine_only": summary(results["duckdb_engine_only"]),
        "target_events_per_s": 2_000_000,
        "meets_target": duckdb["median"] >= 2_000_000,
    }
    if args.spark:
        report["spark"] = summary(results["spark"])
        report["ratio_duckdb_to_spark"] = round(
            statistics.median(results["duckdb"]) / statistics.median(results["spark"]), 3
        )
    report["samples"] = results
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
