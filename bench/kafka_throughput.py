"""Collector -> KafkaLog -> aggregator events/s on librdkafka's mock cluster, with the file
log's figures from the same run as the reference.

Each round, for each backend (file log without fsync, Kafka on the mock cluster with acks=all
and idempotence): a real `mercato run collector` process on a fresh log (a fresh topic for
Kafka) takes a fixed number of events, 500 native events per request from ``--connections``
keep-alive connections in this process; ingest events/s = events acknowledged with 200 /
wall time. Then one in-process Aggregator drains that log into a fresh SQLite store;
aggregate events/s = events counted / wall time. ``pipeline`` is the events/s of the two
stages back to back (events / (ingest time + aggregate time)).

The mock cluster runs inside this process (its broker threads share the machine with the
load) and keeps only a bounded tail of each partition, so ``--events`` must fit in it (the
run stops with an error if the mock dropped records): a correctness tool, not a Kafka
benchmark; expect a real cluster's figures to differ. Prints one JSON document.

    python bench/kafka_throughput.py [--rounds 5] [--events 30000] [--connections 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchstats import summary
from collector_throughput import BATCH, make_bodies, read_response, request_bytes, start, stop
from collector_throughput import wait_ready as wait_collector

from mercato.aggregator.aggregator import Aggregator
from mercato.config import LogConfig, StoreConfig
from mercato.demo.runner import free_port
from mercato.log.base import Log
from mercato.log.file import FileLog
from mercato.log.kafka import KafkaLog
from mercato.log.kafka_mock import MockKafkaCluster
from mercato.metrics.definitions import load_definitions
from mercato.store.sqlite import SqliteStore


def ingest(port: int, requests: list[bytes], connections: int) -> tuple[float, int]:
    """Post every request once from ``connections`` threads; (seconds, events acknowledged)."""
    acknowledged = [0] * connections
    failed = [0] * connections
    barrier = threading.Barrier(connections + 1)

    def worker(i: int) -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        barrier.wait()
        for request in requests[i::connections]:
            sock.sendall(request)
            if read_response(sock, buffer) == 200:
                acknowledged[i] += BATCH
            else:
                failed[i] += 1
        sock.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if sum(failed):
        print(f"warning: {sum(failed)} requests were not answered 200", file=sys.stderr)
    return elapsed, sum(acknowledged)


def aggregate(log: Log, store_path: Path) -> tuple[float, int]:
    """Drain ``log`` with one aggregator into a fresh store; (seconds, events counted)."""
    for p in range(log.partitions):
        if log.start_offset(p) != 0:
            raise SystemExit(f"the mock dropped records of partition {p}: lower --events")
    store = SqliteStore(store_path, StoreConfig())
    started = time.perf_counter()
    aggregator = Aggregator(log, store, load_definitions())
    while aggregator.poll():
        pass
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed, aggregator.stats.events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()
    bodies = make_bodies(max(1, args.events // BATCH))
    stages = ("ingest", "aggregate", "pipeline")
    results: dict[str, dict[str, list[float]]] = {
        b: {s: [] for s in stages} for b in ("file", "kafka")
    }
    with tempfile.TemporaryDirectory(prefix="mercato-bench-") as tmp, MockKafkaCluster() as mock:
        data = Path(tmp)
        env = {**os.environ, "MERCATO_DATA_DIR": str(data / "data")}
        env["MERCATO_LOG_PARTITIONS"] = str(args.partitions)
        env["MERCATO_LOG_FSYNC"] = "false"
        created = subprocess.run(
            [sys.executable, "-m", "mercato", "keys", "create", "--source", "bench"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        key = next(
            line.split()[1] for line in created.stdout.splitlines() if line.startswith("key")
        )
        for round_ in range(args.rounds):
            for backend in ("file", "kafka"):
                topic = f"events-{round_}"
                config = LogConfig(
                    backend=backend,
                    partitions=args.partitions,
                    fsync=False,
                    kafka_bootstrap_servers=mock.bootstraps,
                    kafka_topic=topic,
                )
                run_env = {**env, "MERCATO_LOG_BACKEND": backend}
                if backend == "kafka":
                    mock.create_topic(topic, args.partitions)
                    run_env["MERCATO_LOG_KAFKA_BOOTSTRAP_SERVERS"] = mock.bootstraps
                    run_env["MERCATO_LOG_KAFKA_TOPIC"] = topic
                else:
                    run_env["MERCATO_DATA_DIR"] = str(data / f"data-{round_}")
                    (data / f"data-{round_}").mkdir()
                    shutil.copy(data / "data" / "keys.json", data / f"data-{round_}")
                port = free_port()
                run_env["MERCATO_COLLECTOR_PORT"] = str(port)
                process = start(
                    [sys.executable, "-m", "mercato", "run", "collector"], run_env, False
                )
                try:
                    wait_collector(port, process)
                    requests = [request_bytes(b, port, key) for b in bodies]
                    ingest_s, events = ingest(port, requests, args.connections)
                finally:
                    stop(process)
                log: Log
                if backend == "kafka":
                    log = KafkaLog(config)
                else:
                    log = FileLog(data / f"data-{round_}" / "log", config)
                try:
                    aggregate_s, counted = aggregate(log, data / f"store-{backend}-{round_}")
                finally:
                    log.close()
                if counted != events:
                    raise SystemExit(f"{backend}: {events} acknowledged, {counted} counted")
                results[backend]["ingest"].append(events / ingest_s)
                results[backend]["aggregate"].append(counted / aggregate_s)
                results[backend]["pipeline"].append(events / (ingest_s + aggregate_s))
                print(
                    f"round {round_ + 1} {backend}: ingest {events / ingest_s:,.0f} ev/s, "
                    f"aggregate {counted / aggregate_s:,.0f} ev/s",
                    file=sys.stderr,
                )
    report = {
        "benchmark": "kafka_throughput",
        "unit": "events/s",
        "events_per_round": len(bodies) * BATCH,
        "rounds": args.rounds,
        "connections": args.connections,
        "partitions": args.partitions,
        "kafka": {s: summary(results["kafka"][s]) for s in stages},
        "file": {s: summary(results["file"][s]) for s in stages},
        "note": "Kafka is librdkafka's mock cluster in the benchmark's own process; file log "
        "without fsync",
        "samples": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
