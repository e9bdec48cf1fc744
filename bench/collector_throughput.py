"""Events per second durably acknowledged by one collector process (issue: >= 250,000/s and
>= 0.5 x the ceiling measured in the same run).

The load comes from this process (a second process): several keep-alive connections, each
posting pre-built bodies of 500 native events of ~200 bytes and counting 200 responses. Each
round measures the real collector (`mercato run collector`, file log, fsync on every group
commit) and the ceiling (bench/ceiling_server.py: decode with msgspec, append to a file, no
fsync), alternating, so machine noise hits both. By default the OS places the server and the
load on the two cores as it would in production (the collector's commit thread spends its
time in write and fsync, outside the GIL, and can use the core the load leaves idle); --pin
confines each server to CPU 0 and the load to CPU 1. Prints one JSON document.

    python bench/collector_throughput.py [--rounds 5] [--seconds 5] [--connections 8] [--pin]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from benchstats import summary

from mercato.demo.runner import free_port

HERE = Path(__file__).resolve().parent
BATCH = 500


def make_bodies(count: int, merchants: int = 5000) -> list[bytes]:
    rnd = random.Random(42)
    now = datetime.now(UTC)
    bodies = []
    for _ in range(count):
        events = []
        for _ in range(BATCH):
            ts = now - timedelta(seconds=rnd.random() * 60)
            events.append(
                {
                    "event_id": f"{rnd.getrandbits(96):024x}",
                    "type": "order_completed",
                    "merchant_id": f"m_{int(rnd.paretovariate(1.2)) % merchants}",
                    "timestamp": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "sent_at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "properties": {"amount": rnd.randrange(100, 100_000), "currency": "EUR"},
                }
            )
        bodies.append(msgspec.json.encode(events))
    return bodies


def request_bytes(body: bytes, port: int, key: str) -> bytes:
    auth = base64.b64encode(f"{key}:".encode()).decode()
    head = (
        f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Basic {auth}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def read_response(sock: socket.socket, buffer: bytearray) -> int:
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        rest += chunk
    buffer[:] = rest[length:]
    return status


def load(port: int, requests: list[bytes], seconds: float, connections: int) -> dict[str, float]:
    """Post from ``connections`` threads for ``seconds``; count events acknowledged with 200."""
    stop = threading.Event()
    counts = [0] * connections
    errors = [0] * connections
    started = threading.Barrier(connections + 1)

    def worker(i: int) -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        n = i
        started.wait()
        while not stop.is_set():
            sock.sendall(requests[n % len(requests)])
            n += connections
            if read_response(sock, buffer) == 200:
                counts[i] += BATCH
            else:
                errors[i] += 1
        sock.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    started.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    acknowledged = sum(counts)
    elapsed = time.perf_counter() - t0
    for t in threads:
        t.join()
    return {"events_per_s": acknowledged / elapsed, "non_200": sum(errors)}


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                if read_response(sock, bytearray()) == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not become ready")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(command: list[str], env: dict[str, str], pin: bool) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    if pin:
        os.sched_setaffinity(process.pid, {0})
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin each server to CPU 0 and the load to CPU 1 (default: the OS places them)",
    )
    args = parser.parse_args()

    pin = (os.cpu_count() or 1) >= 2 and args.pin
    if pin:
        os.sched_setaffinity(0, {1})
    bodies = make_bodies(64)
    event_bytes = sum(len(b) for b in bodies) / len(bodies) / BATCH
    results: dict[str, list[float]] = {"collector": [], "ceiling": []}
    cpu: dict[str, list[float]] = {"collector": [], "ceiling": []}
    with tempfile.TemporaryDirectory(prefix="mercato-bench-") as tmp:
        data = Path(tmp)
        env = {**os.environ, "MERCATO_DATA_DIR": str(data / "data")}
        env["MERCATO_LOG_PARTITIONS"] = str(args.partitions)
        created = subprocess.run(
            [sys.executable, "-m", "mercato", "keys", "create", "--source", "bench"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        key = next(
            line.split()[1] for line in created.stdout.splitlines() if line.startswith("key")
        )
        for round_ in range(args.rounds):
            for name in ("collector", "ceiling"):
                port = free_port()
                if name == "collector":
                    env["MERCATO_COLLECTOR_PORT"] = str(port)
                    command = [sys.executable, "-m", "mercato", "run", "collector"]
                else:
                    command = [
                        sys.executable, str(HERE / "ceiling_server.py"),
                        "--port", str(port), "--file", str(data / f"ceiling-{round_}.ndjson"),
                    ]  # fmt: skip
                process = start(command, env, pin)
                try:
                    wait_ready(port, process)
                    requests = [request_bytes(b, port, key) for b in bodies]
                    load(port, requests, args.warmup, args.connections)
                    before = cpu_seconds(process.pid)
                    measured = load(port, requests, args.seconds, args.connections)
                    cpu[name].append((cpu_seconds(process.pid) - before) / args.seconds)
                finally:
                    stop(process)
                if measured["non_200"]:
                    print(
                        f"warning: {name} answered {measured['non_200']} non-200", file=sys.stderr
                    )
                results[name].append(measured["events_per_s"])
                print(
                    f"round {round_ + 1} {name}: {measured['events_per_s']:,.0f} ev/s",
                    file=sys.stderr,
                )
    collector = summary(results["collector"])
    ceiling = summary(results["ceiling"])
    ratios = [c / k for c, k in zip(results["collector"], results["ceiling"], strict=True)]
    report = {
        "benchmark": "collector_throughput",
        "unit": "events/s durably acknowledged",
        "batch_events": BATCH,
        "event_bytes": round(event_bytes),
        "rounds": args.rounds,
        "seconds_per_round": args.seconds,
        "connections": args.connections,
        "partitions": args.partitions,
        "pinned": pin,
        "collector": collector,
        "ceiling": ceiling,
        "ratio_per_round": summary(ratios, 3),
        "target_events_per_s": 250_000,
        "target_ratio": 0.5,
        "meets_target": collector["median"] >= 250_000 and statistics.median(ratios) >= 0.5,
        "runs": results,
        "server_cpu_cores": {k: [round(v, 2) for v in values] for k, values in cpu.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
