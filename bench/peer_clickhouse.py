"""Mercato next to ClickHouse doing the same jobs on the same events with the same default
metric definitions (ingest + rollup, the hourly seal, a 30-day daily series), and the ratio
Mercato / ClickHouse of each figure, measured in the same run.

ClickHouse runs embedded in this process (chdb), one session on a temporary directory, each
job in a fresh database. Its tables are generated from the loaded definitions
(bench/clickhouse_schema.py): per stored metric an AggregatingMergeTree table keyed like the
kernel's partials, filled by a SELECT that follows the kernel (event types, ``where``, one
ARRAY JOIN for the total row and a row per dimension, "(none)" for a missing member).

* ingest: events/s from a file log filled with the demo's traffic (bench/workloads.py) over
  ``--merchants`` merchants. Mercato: the Aggregator polling the log into a fresh SQLite store
  (as bench/aggregator_throughput.py). ClickHouse: the same record bytes read from the same
  log and inserted as JSONCompactEachRow into a raw MergeTree table whose materialized views
  fill the rollups; once with inserts of one aggregator poll (``--batch`` records from every
  partition) and once with inserts of 100,000 events.
* seal: events/s recomputing every hour of a Parquet archive built as
  bench/seal_throughput.py builds it. Mercato: ``seal`` of the archive's hours with the
  DuckDB engine into a fresh SQLite store (final rows written; not the merchants' local days
  a full seal derives afterwards: ``--full-seal`` times that as well), and the engine alone.
  ClickHouse: INSERT ... SELECT from the same Parquet files into fresh rollups, a statement
  per metric, without de-duplication.
* query: p50/p99 in this process of a merchant's 30-day daily gross revenue in its time zone,
  over the rollups bench/query_latency.py builds for ``--query-merchants`` merchants (written
  to both); and each side's bytes on disk per stored rollup row, here and after ingest.

The first run checks that ClickHouse computed what Mercato did (per metric, dimension and
member: rows, count, sum and invalid; the busiest merchant's distinct counts and quantiles
against exact values; a sample of series) and exits with the differences if not. Prints one
JSON document with min/median/max over ``--runs``.

    python bench/peer_clickhouse.py [--events 400000] [--seal-events 250000]
        [--merchants 100000] [--query-merchants 10000] [--runs 5] [--full-seal]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import chdb
import pyarrow as pa
import pyarrow.compute as pc
from benchstats import summary
from chdb import session
from clickhouse_schema import KEY, literal, rollup_select, rollup_table, schema, states, table
from query_latency import DAYS, END, ZONES, ceiling
from query_latency import fill as fill_rollups
from query_latency import p as percentile
from seal_throughput import build_archive, timed_seal
from workloads import fill

from mercato.aggregator.aggregator import Aggregator
from mercato.archive.layout import open_storage, read_state
from mercato.archive.reader import committed_paths
from mercato.batch.engine import open_engine
from mercato.batch.seal import seal
from mercato.config import LogConfig, StoreConfig
from mercato.log.base import LogReader
from mercato.log.file import FileLog
from mercato.metrics.batch import BatchBuilder, column
from mercato.metrics.definitions import Definitions, load_definitions
from mercato.metrics.kernel import (
    matches,
    merge_sketches,
    sketch_estimate,
    sketch_quantile,
    value_kind,
)
from mercato.metrics.periods import local_midnight, periods
from mercato.query.series import MerchantView, timeseries
from mercato.store.base import RollupStore
from mercato.store.sqlite import SqliteStore
from mercato.store.versions import register

INSERT_EVENTS = 100_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SERIES_SQL = (
    "SELECT toUnixTimestamp(toStartOfDay(toDateTime(bucket, {zone}))) AS day,"
    " sumIfMerge(sum) AS value FROM rollup_gross_revenue WHERE merchant_id = {merchant}"
    " AND dimension = '' AND bucket >= {start} AND bucket < {end} GROUP BY day ORDER BY day"
)
# states of a partial's count, sum and invalid (query_latency.fill writes no sketches)
FROM_PARTIALS = {
    "count": "arrayReduce('countIfState', arrayWithConstant(count, toUInt8(1)))",
    "sum": "initializeAggregation('sumIfState', assumeNotNull(sum), toUInt8(isNotNull(sum)))",
    "invalid": "arrayReduce('countIfState', arrayWithConstant(invalid, toUInt8(1)))",
}
SKETCHES = (
    "SELECT sketch FROM speed_rollups WHERE metric = ? AND merchant_id = ? AND dimension = ''"
)
INGEST_NOTE = (
    "both read the same log records; ClickHouse also keeps them (its raw MergeTree table),"
    " Mercato's aggregator only the rollups"
)
SEAL_NOTE = (
    "ClickHouse reads every archived row: it does not de-duplicate by (merchant_id, event_id)"
    " as Mercato's seal does (this archive holds no duplicates, so the rollups agree)"
)


class ClickHouse:
    """One chdb session; :meth:`fresh` starts a job in an empty database."""

    def __init__(self, path: Path) -> None:
        self.session = session.Session(str(path))

    def fresh(self, statements: Sequence[str]) -> None:
        self.session.query("DROP DATABASE IF EXISTS bench SYNC")
        for statement in ("CREATE DATABASE bench", "USE bench", *statements):
            self.session.query(statement)

    def run(self, sql: str) -> None:
        self.session.query(sql)

    def rows(self, sql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.session.query(sql, "ArrowTable").to_pylist()
        return result

    def insert(self, statement: str, fmt: str, data: bytes) -> None:
        inserter = self.session.send_insert(statement, fmt)
        inserter.append(data)
        inserter.finish()

    def stored(self, tables: Sequence[str]) -> tuple[int, int]:
        """Bytes on disk and rows of ``tables`` once merged (OPTIMIZE ... FINAL)."""
        for name in tables:
            self.run(f"OPTIMIZE TABLE {name} FINAL")
        names = ", ".join(literal(t) for t in tables)
        [row] = self.rows(
            "SELECT sum(bytes_on_disk) AS bytes, sum(rows) AS rows FROM system.parts"
            f" WHERE active AND database = currentDatabase() AND table IN ({names})"
        )
        return int(row["bytes"]), int(row["rows"])

    def close(self) -> None:
        self.run("DROP DATABASE IF EXISTS bench SYNC")
        self.session.close()


# -- ingest ---------------------------------------------------------------------------------


def clickhouse_ingest(ch: ClickHouse, log: FileLog, per_partition: int) -> float:
    """Events/s reading the log like the aggregator and inserting each read into ``raw``."""
    positions = {p: log.start_offset(p) for p in range(log.partitions)}
    events = 0
    started = time.perf_counter()
    while True:
        values: list[bytes] = []
        for p, offset in positions.items():
            entries = log.read(p, offset, per_partition)
            if entries:
                positions[p] = entries[-1].offset + 1
                values += [e.value for e in entries]
        if not values:
            break
        ch.insert("INSERT INTO raw", "JSONCompactEachRow", b"\n".join(values))
        events += len(values)
    return events / (time.perf_counter() - started)


def ingest(args: argparse.Namespace, root: Path, definitions: Definitions, ch: ClickHouse) -> Any:
    log = FileLog(root / "log", LogConfig(fsync=False))
    fill(log, args.events, args.merchants)
    per_partition = {"poll": args.batch, "100k": INSERT_EVENTS // log.partitions}
    results: dict[str, list[float]] = {"mercato": [], "clickhouse_poll": [], "clickhouse_100k": []}
    events, checks, storage = 0, {}, {}
    for run in range(args.runs):
        path = root / f"store-{run}.sqlite3"
        store = SqliteStore(path, StoreConfig())
        started = time.perf_counter()
        aggregator = Aggregator(log, store, definitions, max_batch_records=args.batch)
        while aggregator.poll():
            pass
        results["mercato"].append(aggregator.stats.events / (time.perf_counter() - started))
        events = aggregator.stats.events
        store.close()
        for name, size in per_partition.items():
            ch.fresh(schema(definitions))
            results[f"clickhouse_{name}"].append(clickhouse_ingest(ch, log, size))
            if run == 0:
                mercato = mercato_totals(path, "speed_rollups", definitions)
                groups = compare(f"ingest ({name})", mercato, clickhouse_totals(ch, definitions))
                checks[f"clickhouse_{name}"] = f"{groups} (metric, dimension, member) groups equal"
            if run == 0 and name == "poll":
                checks["sketches"] = check_sketches(path, ch, log, definitions)
                tables = [table(m) for m in definitions.stored]
                storage = sizes(path, "speed_rollups", ch.stored(tables))
                [raw] = ch.rows("SELECT count() AS n FROM raw")
                if raw["n"] != events:
                    fail(f"ClickHouse's raw table holds {raw['n']} events, not {events}")
        path.unlink()
    log.close()
    batch = args.batch * log.partitions
    report = {
        "unit": "events/s",
        "events": events,
        "insert_events": {"clickhouse_poll": batch, "clickhouse_100k": INSERT_EVENTS},
        **{k: summary(v) for k, v in results.items()},
        **ratios(results, "mercato", ("clickhouse_poll", "clickhouse_100k")),
        "note": INGEST_NOTE,
    }
    return report, checks, storage, results


# -- seal -----------------------------------------------------------------------------------


def parquet_files(paths: Sequence[str]) -> str:
    """ClickHouse's ``file()`` of exactly ``paths`` (a ``{a,b,...}`` alternation)."""
    prefix = os.path.commonpath(paths)
    names = ",".join(os.path.relpath(path, prefix) for path in paths)
    return f"file({literal(f'{prefix}/{{{names}}}')}, Parquet)"


def seal_hours(
    args: argparse.Namespace, root: Path, definitions: Definitions, ch: ClickHouse
) -> Any:
    # whole UTC hours that ended at least an hour ago, as bench/seal_throughput.py builds them
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    build_archive(root, args.seal_events, args.merchants, end - timedelta(hours=args.hours), end)
    archive = root / "archive"
    watermark = read_state(open_storage(archive)).watermark()
    assert watermark is not None
    paths = committed_paths(archive)
    files = parquet_files(paths)
    engine = open_engine("duckdb")
    results: dict[str, list[float]] = {"mercato": [], "mercato_engine_only": [], "clickhouse": []}
    if args.full_seal:
        results["mercato_full_seal"] = []
    events, rows, checks = 0, 0, {}
    for run in range(args.runs):
        path = root / f"store-{run}.sqlite3"
        with SqliteStore(path, StoreConfig()) as store:
            started = time.perf_counter()
            # a start bound: the hours are sealed, but no sealed_through is set, so no
            # merchant's local days are derived
            sealed = seal(
                store, archive, definitions, engine, grace=timedelta(0), force=True, start=EPOCH
            )
            elapsed = time.perf_counter() - started
        events = sum(h.events for h in sealed.sealed)
        results["mercato"].append(events / elapsed)
        started = time.perf_counter()
        rolled = engine.rollup(paths, definitions)
        results["mercato_engine_only"].append(rolled.events / (time.perf_counter() - started))
        rows = rolled.rows
        if args.full_seal:
            with SqliteStore(root / f"full-{run}.sqlite3", StoreConfig()) as store:
                full = timed_seal(store, archive, engine, watermark - end, force=True)
            results["mercato_full_seal"].append(full["events_per_s"])
        ch.fresh(schema(definitions, source=""))
        started = time.perf_counter()
        for metric in definitions.stored:
            ch.run(f"INSERT INTO {table(metric)} {rollup_select(metric, definitions, files)}")
        results["clickhouse"].append(rows / (time.perf_counter() - started))
        if run == 0:
            mercato = mercato_totals(path, "final_rollups", definitions)
            groups = compare("seal", mercato, clickhouse_totals(ch, definitions))
            checks["clickhouse_seal"] = f"{groups} (metric, dimension, member) groups equal"
        path.unlink()
    engine.close()
    others = ["mercato_engine_only", *(["mercato_full_seal"] if args.full_seal else [])]
    report = {
        "unit": "events/s",
        "events": events,
        "archive_rows": rows,
        "hours": args.hours,
        "files": len(paths),
        **{k: summary(v) for k, v in results.items()},
        **ratios(results, "mercato", ("clickhouse",)),
        **{f"ratio_{name}_to_clickhouse": ratio(results, name, "clickhouse") for name in others},
        "note": SEAL_NOTE,
    }
    return report, checks, results


# -- query ----------------------------------------------------------------------------------


class Tee:
    """A store whose rollup writes are kept too, to write them to ClickHouse."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.tables: list[pa.Table] = []

    def write(self, version: int, consumer: str, partials: pa.Table, offsets: Any) -> None:
        self.store.write(version, consumer, partials, offsets)
        self.tables.append(partials.drop_columns(["min", "max", "sketch"]))


def bounds_of(merchant: int) -> tuple[str, list[int]]:
    zone = ZONES[merchant % len(ZONES)]
    first = local_midnight((END - timedelta(days=DAYS)).date(), ZoneInfo(zone))
    return zone, periods(first, local_midnight(END.date(), ZoneInfo(zone)), "day", ZoneInfo(zone))


def clickhouse_series(ch: ClickHouse, merchant: int) -> tuple[list[int], list[dict[str, Any]]]:
    zone, bounds = bounds_of(merchant)
    merchant_id = literal(f"m_{merchant}")
    sql = SERIES_SQL.format(
        zone=literal(zone), merchant=merchant_id, start=bounds[0], end=bounds[-1]
    )
    return bounds, ch.rows(sql)


def clickhouse_ceiling(ch: ClickHouse, merchants: int, seconds: float) -> list[float]:
    """Latencies of the same series as query_latency.ceiling, from ClickHouse."""
    latencies = []
    deadline = time.perf_counter() + seconds
    rnd = random.Random(5)
    while time.perf_counter() < deadline:
        m = rnd.randrange(merchants)
        started = time.perf_counter()
        clickhouse_series(ch, m)
        latencies.append(time.perf_counter() - started)
    return latencies


def write_partials(
    ch: ClickHouse, tables: Sequence[pa.Table], definitions: Definitions
) -> list[str]:
    """Write partials (no sketches) to fresh ClickHouse rollups; return their names."""
    names = sorted({m for t in tables for m in pc.unique(t["metric"]).to_pylist()})
    metrics = [definitions.metrics[name] for name in names]
    ch.fresh([rollup_table(m) for m in metrics])
    ch.run(
        "CREATE TABLE partials (merchant_id String, metric String, dimension String,"
        " member String, bucket Int64, count Int64, sum Nullable(Int64), invalid Int64)"
        " ENGINE = Memory"
    )
    for partials in tables:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, partials.schema) as writer:
            writer.write_table(partials)
        ch.insert("INSERT INTO partials", "ArrowStream", sink.getvalue().to_pybytes())
    for metric in metrics:
        values = ", ".join(FROM_PARTIALS[name] for name, _, _ in states(metric))
        ch.run(
            f"INSERT INTO {table(metric)} SELECT {KEY}, {values} FROM partials"
            f" WHERE metric = {literal(metric.name)}"
        )
    ch.run("DROP TABLE partials")
    return [table(m) for m in metrics]


def query(args: argparse.Namespace, root: Path, definitions: Definitions, ch: ClickHouse) -> Any:
    path = root / "store.sqlite3"
    store = SqliteStore(path, StoreConfig())
    version = register(store, definitions)
    store.set_serving_version(version)
    tee = Tee(store)
    # only write() is called on it: a rollup store to fill_rollups
    rows = fill_rollups(cast(RollupStore, tee), version, args.query_merchants, args.buckets)
    store.close()
    tables = write_partials(ch, tee.tables, definitions)
    del tee
    storage = sizes(path, "speed_rollups", ch.stored(tables))
    store = SqliteStore(path, StoreConfig())
    checks = {"series": check_series(store, version, ch, definitions, args.query_merchants)}
    result: dict[str, list[float]] = {
        f"{side}_p{q}_ms": [] for side in ("mercato", "clickhouse") for q in (50, 99)
    }
    for _ in range(args.runs):
        for name, latencies in (
            ("mercato", ceiling(store, version, args.query_merchants, args.seconds)),
            ("clickhouse", clickhouse_ceiling(ch, args.query_merchants, args.seconds)),
        ):
            result[f"{name}_p50_ms"].append(percentile(latencies, 0.5))
            result[f"{name}_p99_ms"].append(percentile(latencies, 0.99))
    store.close()
    report = {
        "series": "gross_revenue, 30 daily points in the merchant's time zone, in this process",
        "unit": "ms",
        "merchants": args.query_merchants,
        "rollup_rows": rows,
        **{k: summary(v, 2) for k, v in result.items()},
        "ratio_mercato_to_clickhouse_p50": ratio(result, "mercato_p50_ms", "clickhouse_p50_ms"),
        "ratio_mercato_to_clickhouse_p99": ratio(result, "mercato_p99_ms", "clickhouse_p99_ms"),
    }
    return report, checks, storage, result


# -- checks and sizes -----------------------------------------------------------------------

Totals = dict[tuple[str, str, str], tuple[int, ...]]


def mercato_totals(path: Path, layer: str, definitions: Definitions) -> Totals:
    """Per (metric, dimension, member): rows, count, sum (min, max), invalid in the store."""
    totals: Totals = {}
    with closing(sqlite3.connect(path)) as db:
        for metric in definitions.stored:
            value = {"sum": "sum(sum)", "min": "min(min)", "max": "max(max)"}.get(metric.kind, "0")
            for dimension, member, *numbers in db.execute(
                f"SELECT dimension, member, count(*), sum(count), {value}, sum(invalid)"
                f" FROM {layer} WHERE metric = ? GROUP BY dimension, member",
                (metric.name,),
            ):
                totals[(metric.name, dimension, member)] = tuple(numbers)
    return totals


def clickhouse_totals(ch: ClickHouse, definitions: Definitions) -> Totals:
    """The same totals, from ClickHouse's rollups (one row per key however merged)."""
    totals: Totals = {}
    for metric in definitions.stored:
        kind = metric.kind if metric.kind in ("sum", "min", "max") else None
        value = f"{kind}IfMerge({kind})" if kind else "0"
        for row in ch.rows(
            f"SELECT dimension, member, count() AS rows, sum(c) AS count, {kind or 'any'}(v)"
            " AS value, sum(i) AS invalid FROM (SELECT dimension, member, countIfMerge(count)"
            f" AS c, {value} AS v, countIfMerge(invalid) AS i FROM {table(metric)}"
            f" GROUP BY {KEY}) GROUP BY dimension, member"
        ):
            key = (metric.name, row["dimension"], row["member"])
            totals[key] = (row["rows"], row["count"], row["value"], row["invalid"])
    return totals


def fail(message: str) -> None:
    sys.exit(f"check failed: {message}")


def compare(what: str, mercato: Totals, clickhouse: Totals) -> int:
    """How many groups were compared; exits with the differences if any."""
    keys = sorted(mercato.keys() | clickhouse.keys())
    differ = [k for k in keys if mercato.get(k) != clickhouse.get(k)]
    if differ or not keys:
        lines = [f"  {k}: mercato {mercato.get(k)}, clickhouse {clickhouse.get(k)}" for k in differ]
        fail(
            f"{what}: Mercato and ClickHouse differ in {len(differ)} of {len(keys)}"
            " (metric, dimension, member) groups (rows, count, sum, invalid):\n"
            + "\n".join(lines[:30])
        )
    return len(keys)


def check_sketches(path: Path, ch: ClickHouse, log: FileLog, definitions: Definitions) -> str:
    """The busiest merchant's distinct counts (within 5%) and quantiles (within 0.02 in
    rank) on both sides, against the exact values of its events decoded from the log."""
    [busiest] = ch.rows("SELECT merchant_id AS m FROM raw GROUP BY m ORDER BY count() DESC LIMIT 1")
    merchant = busiest["m"]
    tag = f'"{merchant}"'.encode()
    batch = BatchBuilder(definitions).batch(
        [e.value for i in range(log.partitions) for e in LogReader(log, i, 0) if tag in e.value]
    )
    batch = batch.filter(pc.equal(batch["merchant_id"], merchant))
    checked = []
    with closing(sqlite3.connect(path)) as db:
        for metric in definitions.stored:
            if metric.kind not in ("count_distinct", "percentile") or metric.value is None:
                continue
            values = batch.filter(matches(batch, metric))[column(metric.value, value_kind(metric))]
            exact = sorted(values.drop_null().to_pylist())
            blob = merge_sketches([b for (b,) in db.execute(SKETCHES, (metric.name, merchant))])
            assert blob is not None
            rows = (
                f"FROM {table(metric)} WHERE merchant_id = {literal(merchant)} AND dimension = ''"
            )
            if metric.kind == "count_distinct":
                [row] = ch.rows(f"SELECT uniqHLL12IfMerge(sketch) AS n {rows}")
                distinct = len(set(exact))
                for side, estimate in (
                    ("mercato", sketch_estimate(blob)),
                    ("clickhouse", row["n"]),
                ):
                    if abs(estimate / distinct - 1) > 0.05:
                        fail(f"{side}'s {metric.name} of {merchant}: {estimate}, not {distinct}")
                checked.append(f"{metric.name} ({distinct})")
                continue
            levels = ", ".join(repr(q) for q in metric.quantiles)
            [row] = ch.rows(f"SELECT quantilesIfMerge({levels})(sketch) AS q {rows}")
            for q, theirs in zip(metric.quantiles, row["q"], strict=True):
                for side, estimate in (
                    ("mercato", sketch_quantile(blob, q)),
                    ("clickhouse", theirs),
                ):
                    rank = bisect.bisect_left(exact, estimate) / len(exact)
                    if abs(rank - q) > 0.02:
                        fail(f"{side}'s {metric.name} {q} of {merchant}: {estimate}, at {rank:.3f}")
            checked.append(f"{metric.name} {levels} (of {len(exact)} values)")
    return f"{merchant}: {', '.join(checked)} within tolerance of the exact values on both sides"


def check_series(
    store: SqliteStore, version: int, ch: ClickHouse, definitions: Definitions, merchants: int
) -> str:
    metric = definitions.metrics["gross_revenue"]
    sample = random.Random(7).sample(range(merchants), min(20, merchants))
    for m in sample:
        bounds, rows = clickhouse_series(ch, m)
        theirs = {row["day"]: row["value"] for row in rows}
        [series] = timeseries(MerchantView(store, version, f"m_{m}"), definitions, metric, bounds)
        if series.values != [theirs.get(b, 0) for b in bounds[:-1]]:
            fail(f"the series of m_{m} differ: mercato {series.values}, clickhouse {theirs}")
    return f"{len(sample)} merchants' 30-day series equal"


def sizes(path: Path, layer: str, clickhouse: tuple[int, int]) -> dict[str, float]:
    """Bytes per stored rollup row: the SQLite file, ClickHouse's parts (merged)."""
    with closing(sqlite3.connect(path)) as db:
        [(rows,)] = db.execute(f"SELECT count(*) FROM {layer}")
    mercato = path.stat().st_size
    return {
        "mercato_bytes": mercato,
        "mercato_rows": rows,
        "mercato_bytes_per_row": round(mercato / rows, 1),
        "clickhouse_bytes": clickhouse[0],
        "clickhouse_rows": clickhouse[1],
        "clickhouse_bytes_per_row": round(clickhouse[0] / clickhouse[1], 1),
        "ratio_mercato_to_clickhouse_bytes": round(mercato / clickhouse[0], 2),
    }


def ratio(results: dict[str, list[float]], mercato: str, clickhouse: str) -> float:
    return round(statistics.median(results[mercato]) / statistics.median(results[clickhouse]), 3)


def ratios(results: dict[str, list[float]], mercato: str, peers: Sequence[str]) -> dict[str, float]:
    return {f"ratio_{mercato}_to_{peer}": ratio(results, mercato, peer) for peer in peers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000, help="ingested")
    parser.add_argument("--merchants", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50_000, help="max records per partition")
    parser.add_argument("--seal-events", type=int, default=250_000, help="archived and sealed")
    parser.add_argument("--hours", type=int, default=6, help="hours of archive to seal")
    parser.add_argument(
        "--full-seal", action="store_true", help="also time Mercato's seal with local days (slow)"
    )
    parser.add_argument("--query-merchants", type=int, default=10_000)
    parser.add_argument("--buckets", type=int, default=2, help="busy buckets per merchant-day")
    parser.add_argument("--seconds", type=float, default=3.0, help="per query measurement")
    args = parser.parse_args()
    definitions = load_definitions()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mercato-bench-") as tmp:
        root = Path(tmp)
        for name in ("ingest", "seal", "query"):
            (root / name).mkdir()
        ch = ClickHouse(root / "clickhouse")
        [version] = ch.rows("SELECT version() AS v")
        ingest_report, ingest_checks, ingest_storage, ingest_samples = ingest(
            args, root / "ingest", definitions, ch
        )
        seal_report, seal_checks, seal_samples = seal_hours(args, root / "seal", definitions, ch)
        query_report, query_checks, query_storage, query_samples = query(
            args, root / "query", definitions, ch
        )
        ch.close()
    report = {
        "benchmark": "peer_clickhouse",
        "peer": f"ClickHouse {version['v']} embedded (chdb {chdb.__version__}), in this process",
        "merchants": args.merchants,
        "runs": args.runs,
        "ingest": ingest_report,
        "seal": seal_report,
        "query": query_report,
        "storage": {"after_ingest": ingest_storage, "query_rollups": query_storage},
        "checks": {**ingest_checks, **seal_checks, **query_checks},
        "seconds": round(time.perf_counter() - started),
        "samples": {"ingest": ingest_samples, "seal": seal_samples, "query": query_samples},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
