"""Aggregator events/s into SQLite with many active merchants (issue: >= 300,000 events/s per
process with 100,000 active merchants).

Setup (not timed): a file log filled with generated commerce traffic (the demo's generator)
spread over ``--merchants`` merchants. Each run: a fresh SQLite store, one Aggregator owning
every partition, polled until the log is drained; events/s = events counted / wall time.
In the same run, for reference: the kernel alone (decode + columnar batch + rollup, no store)
over the same records, and the store alone (the same batches' partials written to a fresh
store, no kernel): the aggregator's time is roughly the sum of the two, so events/s is bounded
by whichever is slower. Prints one JSON document with min/median/max over ``--runs``.

    python bench/aggregator_throughput.py [--events 500000] [--merchants 100000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchstats import summary
from workloads import fill

from mercato.aggregator.aggregator import Aggregator
from mercato.config import LogConfig, StoreConfig
from mercato.log.base import LogReader
from mercato.log.file import FileLog
from mercato.metrics.batch import BatchBuilder
from mercato.metrics.definitions import load_definitions
from mercato.metrics.kernel import rollup
from mercato.store.sqlite import SqliteStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--merchants", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50_000, help="max records per partition")
    args = parser.parse_args()
    definitions = load_definitions()
    results: dict[str, list[float]] = {"aggregator": [], "kernel_only": [], "store_only": []}
    rows: list[int] = []
    with tempfile.TemporaryDirectory(prefix="mercato-bench-") as tmp:
        log = FileLog(Path(tmp) / "log", LogConfig(fsync=False))
        fill(log, args.events, args.merchants)
        values = [e.value for p in range(log.partitions) for e in LogReader(log, p, 0)]
        batch_size = args.batch * log.partitions  # what one poll reads when the log is full
        for run in range(args.runs):
            store = SqliteStore(Path(tmp) / f"store-{run}.sqlite3", StoreConfig())
            started = time.perf_counter()
            aggregator = Aggregator(log, store, definitions, max_batch_records=args.batch)
            while aggregator.poll():
                pass
            elapsed = time.perf_counter() - started
            results["aggregator"].append(aggregator.stats.events / elapsed)
            rows.append(aggregator.stats.partial_rows)
            store.close()

            builder = BatchBuilder(definitions)
            started = time.perf_counter()
            partials = [
                rollup(builder.batch(values[i : i + batch_size]), definitions)
                for i in range(0, len(values), batch_size)
            ]
            results["kernel_only"].append(len(values) / (time.perf_counter() - started))

            store = SqliteStore(Path(tmp) / f"store-only-{run}.sqlite3", StoreConfig())
            version = store.register_version(definitions.version, "{}")
            started = time.perf_counter()
            for i, batch in enumerate(partials):
                store.write(version, "bench", batch, {0: i + 1})
            results["store_only"].append(len(values) / (time.perf_counter() - started))
            store.close()
        log.close()
    aggregator_summary = summary(results["aggregator"])
    report = {
        "benchmark": "aggregator_throughput",
        "unit": "events/s",
        "events": len(values),
        "merchants": args.merchants,
        "runs": args.runs,
        "aggregator": aggregator_summary,
        "kernel_only": summary(results["kernel_only"]),
        "store_only": summary(results["store_only"]),
        "ratio_to_kernel_only": round(
            statistics.median(results["aggregator"]) / statistics.median(results["kernel_only"]),
            3,
        ),
        "partial_rows_written": rows[0],
        "target_events_per_s": 300_000,
        "meets_target": aggregator_summary["median"] >= 300_000,
        "samples": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
