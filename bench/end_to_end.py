"""Sustained ingest through collector + log + aggregator, with freshness (issue: >= 100,000
events/s for 5 minutes, freshness p99 <= 5 s from the collector's 200 to the query API;
report each process's RSS).

The collector, aggregator and query API run as processes on a fresh data directory. This
process posts generated commerce events (500 per request, unique ids) at ``--rate`` for
``--seconds`` from several threads, and once a second posts a marker event for a merchant of
its own, then polls the query API until the marker is counted: that delay is one freshness
sample. Prints one JSON document.

    python bench/end_to_end.py [--rate 100000] [--seconds 300]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from benchstats import summary

from mercato.collector.keys import KeyStore
from mercato.demo.runner import free_port, wait_until_ready
from mercato.demo.traffic import TrafficGenerator
from mercato.query.tokens import TokenSigner

BATCH = 500
SECRET = "e2e-bench"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def templates(count: int) -> list[bytes]:
    """Request bodies whose event ids carry a placeholder made unique per request."""
    generator = TrafficGenerator(merchants=2000, seed=9)
    bodies = []
    for n in range(count):
        events = generator.batch(BATCH, datetime.now(UTC))
        for i, event in enumerate(events):
            event["event_id"] = f"@@@@@@@@@@-{n}-{i}"
            event.pop("sent_at")
        bodies.append(msgspec.json.encode(events))
    return bodies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100_000)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mercato-bench-") as tmp:
        data = Path(tmp)
        _, key = KeyStore(data / "keys.json").create("bench")
        auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        port, api_port = free_port(), free_port()
        env = {**os.environ, "MERCATO_DATA_DIR": str(data), "MERCATO_COLLECTOR_PORT": str(port),
               "MERCATO_API_PORT": str(api_port), "MERCATO_API_SECRET": SECRET}  # fmt: skip
        processes = {
            role: subprocess.Popen(
                [sys.executable, "-m", "mercato", "run", role], env=env,
                stdout=subprocess.DEVNULL, stderr=open(data / f"{role}.log", "wb"),  # noqa: SIM115
            )
            for role in ("collector", "aggregator", "api")
        }  # fmt: skip
        wait_until_ready("collector", "127.0.0.1", port, processes["collector"], "/readyz", 30)
        wait_until_ready("api", "127.0.0.1", api_port, processes["api"], "/livez", 30)
        bodies = templates(40)
        stop = threading.Event()
        sent = [0] * args.threads
        per_thread = args.rate / args.threads

        def post(i: int) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            headers = {"Authorization": auth, "Content-Type": "application/json"}
            started, n = time.monotonic(), 0
            while not stop.is_set():
                body = bodies[n % len(bodies)].replace(b"@@@@@@@@@@", f"{i:02d}{n:08d}".encode())
                connection.request("POST", "/v1/events", body, headers)
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    sent[i] += BATCH
                n += 1
                ahead = sent[i] / per_thread - (time.monotonic() - started)
                if ahead > 0:
                    stop.wait(ahead)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(args.threads)]
        began = time.monotonic()
        for t in threads:
            t.start()
        freshness, rss = [], {role: 0.0 for role in processes}
        signer = TokenSigner(SECRET)
        marker = 0
        while time.monotonic() - began < args.seconds:
            marker += 1
            merchant = f"fresh_{marker}"
            event = {"event_id": f"marker-{marker}", "type": "order_completed",
                     "merchant_id": merchant, "timestamp": datetime.now(UTC).isoformat(),
                     "properties": {"amount": 1}}  # fmt: skip
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            headers = {"Authorization": auth, "Content-Type": "application/json"}
            connection.request("POST", "/v1/events", msgspec.json.encode([event]), headers)
            response = connection.getresponse()
            response.read()
            acknowledged = time.monotonic()
            token = signer.issue(merchant, 600)[0]
            api = http.client.HTTPConnection("127.0.0.1", api_port, timeout=60)
            while True:
                api.request("GET", "/v1/metrics/orders?granularity=hour",
                            headers={"Authorization": f"Bearer {token}"})  # fmt: skip
                body = msgspec.json.decode(api.getresponse().read())
                if sum(body["series"][0]["values"]) >= 1:
                    freshness.append(time.monotonic() - acknowledged)
                    break
                if time.monotonic() - acknowledged > 60:
                    freshness.append(60.0)
                    break
                time.sleep(0.05)
            for role, process in processes.items():
                rss[role] = max(rss[role], rss_mb(process.pid))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - acknowledged)))
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - began
        for process in processes.values():
            process.terminate()
            process.wait(timeout=60)
    ordered = sorted(freshness)
    report = {
        "benchmark": "end_to_end",
        "seconds": round(elapsed, 1),
        "target_rate": args.rate,
        "acknowledged_events_per_s": round(sum(sent) / elapsed),
        "freshness_s": {
            **summary(freshness, 3),
            "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
            "samples": len(ordered),
        },
        "max_rss_mb": {role: round(value) for role, value in rss.items()},
        "targets": {"events_per_s": 100_000, "freshness_p99_s": 5},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
