"""Query API latency and throughput for 30-day daily series (issue: p99 <= 20 ms and >= 1,500
requests/s per API process, with the ratio to the same read done directly on the store).

Setup (not timed): a SQLite store with ``--merchants`` merchants x 30 days of rollups
(``--buckets`` busy 15-minute buckets a day, orders and gross revenue with a channel
dimension), each merchant in one of several time zones. Then, in the same run:

* ceiling: the same 30-day series computed in this process straight from the store
  (MerchantView + timeseries), one request at a time;
* API: ``mercato run api`` in its own process, loaded from this process over
  ``--connections`` keep-alive connections for ``--seconds``.

Prints one JSON document; latencies in milliseconds, min/median/max over ``--runs``.

    python bench/query_latency.py [--merchants 100000] [--runs 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
from benchstats import summary

from mercato.config import StoreConfig
from mercato.metrics.definitions import load_definitions
from mercato.metrics.kernel import PARTIAL_SCHEMA
from mercato.metrics.periods import local_midnight, periods
from mercato.query.series import MerchantView, timeseries
from mercato.query.tokens import TokenSigner
from mercato.store.base import RollupStore
from mercato.store.sqlite import SqliteStore
from mercato.store.versions import register

ZONES = ("UTC", "Asia/Kolkata", "Asia/Kathmandu", "Europe/Berlin", "America/New_York")
END = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 30
SECRET = "bench-secret"


def fill(store: RollupStore, version: int, merchants: int, buckets: int) -> int:
    rnd = random.Random(3)
    start = int((END - timedelta(days=DAYS + 1)).timestamp())
    rows = 0
    for first in range(0, merchants, 2_000):
        columns: dict[str, list[object]] = {name: [] for name in PARTIAL_SCHEMA.names}
        for m in range(first, min(first + 2_000, merchants)):
            for day in range(DAYS + 1):
                for b in rnd.sample(range(96), buckets):
                    bucket = start + day * 86_400 + b * 900
                    count = rnd.randrange(1, 20)
                    for metric, total in (("orders", None), ("gross_revenue", count * 2500)):
                        for dimension, member in (("", ""), ("channel", rnd.choice("ab"))):
                            for name, value in zip(
                                PARTIAL_SCHEMA.names,
                                (f"m_{m}", metric, dimension, member, bucket, count, total,
                                 None, None, None, 0),
                                strict=True,
                            ):  # fmt: skip
                                columns[name].append(value)
                            rows += 1
        store.write(version, "bench", pa.table(columns, schema=PARTIAL_SCHEMA), {})
    return rows


def series_path(merchant: int) -> str:
    zone = ZONES[merchant % len(ZONES)]
    since = (END - timedelta(days=DAYS)).date().isoformat()
    return (
        f"/v1/metrics/gross_revenue?from={since}&to={END.date().isoformat()}"
        f"&granularity=day&tz={zone}"
    )


def ceiling(store: RollupStore, version: int, merchants: int, seconds: float) -> list[float]:
    definitions = load_definitions()
    metric = definitions.metrics["gross_revenue"]
    latencies = []
    deadline = time.perf_counter() + seconds
    rnd = random.Random(5)
    while time.perf_counter() < deadline:
        m = rnd.randrange(merchants)
        zone = ZoneInfo(ZONES[m % len(ZONES)])
        started = time.perf_counter()
        first = local_midnight((END - timedelta(days=DAYS)).date(), zone)
        bounds = periods(first, local_midnight(END.date(), zone), "day", zone)
        timeseries(MerchantView(store, version, f"m_{m}"), definitions, metric, bounds)
        latencies.append(time.perf_counter() - started)
    return latencies


def load(port: int, merchants: int, seconds: float, connections: int) -> list[float]:
    signer = TokenSigner(SECRET)
    tokens = {m: signer.issue(f"m_{m}", 3600)[0] for m in range(min(merchants, 5_000))}
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        while time.perf_counter() < stop:
            m = rnd.randrange(len(tokens))
            started = time.perf_counter()
            connection.request(
                "GET", series_path(m), headers={"Authorization": f"Bearer {tokens[m]}"}
            )
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"API answered {response.status}")
            mine.append(time.perf_counter() - started)
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merchants", type=int, default=100_000)
    parser.add_argument("--buckets", type=int, default=2, help="busy buckets per merchant-day")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    names = ("ceiling_p50_ms", "ceiling_p99_ms", "ceiling_rps", "api_p50_ms", "api_p99_ms")
    result: dict[str, list[float]] = {k: [] for k in (*names, "api_rps")}
    with tempfile.TemporaryDirectory(prefix="mercato-bench-") as tmp:
        data = Path(tmp)
        store = SqliteStore(data / "store.sqlite3", StoreConfig())
        definitions = load_definitions()
        version = register(store, definitions)
        store.set_serving_version(version)
        built = time.perf_counter()
        rows = fill(store, version, args.merchants, args.buckets)
        build_seconds = time.perf_counter() - built
        port = int(os.environ.get("BENCH_PORT", "18422"))
        env = {**os.environ, "MERCATO_DATA_DIR": str(data), "MERCATO_API_PORT": str(port),
               "MERCATO_API_SECRET": SECRET, "MERCATO_API_RATE_LIMIT_PER_SECOND": "100000",
               "MERCATO_API_RATE_LIMIT_BURST": "100000"}  # fmt: skip
        api = subprocess.Popen([sys.executable, "-m", "mercato", "run", "api"], env=env,
                               stdout=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(3)
            for _ in range(args.runs):
                direct = ceiling(store, version, args.merchants, args.seconds)
                result["ceiling_p50_ms"].append(p(direct, 0.5))
                result["ceiling_p99_ms"].append(p(direct, 0.99))
                result["ceiling_rps"].append(len(direct) / args.seconds)
                served = load(port, args.merchants, args.seconds, args.connections)
                result["api_p50_ms"].append(p(served, 0.5))
                result["api_p99_ms"].append(p(served, 0.99))
                result["api_rps"].append(len(served) / args.seconds)
        finally:
            api.terminate()
            api.wait()
            store.close()
    report = {
        "benchmark": "query_latency",
        "series": "gross_revenue, 30 daily points in the merchant's time zone",
        "merchants": args.merchants,
        "rollup_rows": rows,
        "store_build_seconds": round(build_seconds, 1),
        "connections": args.connections,
        **{k: summary(v, 2) for k, v in result.items()},
        "api_rps_to_ceiling_rps": round(
            statistics.median(result["api_rps"]) / statistics.median(result["ceiling_rps"]), 3
        ),
        "targets": {"api_p99_ms": 20, "api_rps": 1500},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
