"""Archiver events/s from a file log into Parquet, against decoding the same records alone.

Setup (not timed): a file log filled with generated commerce traffic (the demo's generator)
spread over ``--merchants`` merchants. Each run: a fresh archive directory, one Archiver owning
every partition, polled until the log is drained and flushed (every file fsync'd, the state
committed); events/s = log records archived / wall time. In the same run, the ceiling: the
same records decoded with ``decode_event`` and nothing else. Prints one JSON document with
min/median/max over ``--runs``.

    python bench/archiver_throughput.py [--events 500000] [--merchants 100000] [--runs 5]
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

from mercato.archive.archiver import Archiver
from mercato.config import ArchiveConfig, LogConfig
from mercato.events.model import decode_event
from mercato.log.base import LogReader
from mercato.log.file import FileLog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--merchants", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=200_000, help="max records per partition")
    parser.add_argument("--level", type=int, default=3, help="zstd compression level")
    args = parser.parse_args()
    config = ArchiveConfig(max_batch_records=args.batch, compression_level=args.level)
    results: dict[str, list[float]] = {"archiver": [], "decode_only": []}
    files, size = 0, 0
    with tempfile.TemporaryDirectory(prefix="mercato-bench-") as tmp:
        log = FileLog(Path(tmp) / "log", LogConfig(fsync=False))
        fill(log, args.events, args.merchants)
        values = [e.value for p in range(log.partitions) for e in LogReader(log, p, 0)]
        for run in range(args.runs):
            started = time.perf_counter()
            with Archiver(log, Path(tmp) / f"archive-{run}", config) as archiver:
                while archiver.poll():
                    pass
                archiver.flush()
            elapsed = time.perf_counter() - started
            results["archiver"].append(archiver.stats.records / elapsed)
            files, size = archiver.stats.files, archiver.stats.bytes

            started = time.perf_counter()
            for value in values:
                decode_event(value)
            results["decode_only"].append(len(values) / (time.perf_counter() - started))
        log.close()
    report = {
        "benchmark": "archiver_throughput",
        "unit": "events/s",
        "events": len(values),
        "merchants": args.merchants,
        "runs": args.runs,
        "max_batch_records": args.batch,
        "compression_level": args.level,
        "archiver": summary(results["archiver"]),
        "decode_only": summary(results["decode_only"]),
        "ratio_to_decode_only": round(
            statistics.median(results["archiver"]) / statistics.median(results["decode_only"]),
            3,
        ),
        "files_written": files,
        "parquet_bytes_per_event": round(size / len(values), 1),
        "log_bytes_per_event": round(sum(len(v) for v in values) / len(values), 1),
        "samples": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
