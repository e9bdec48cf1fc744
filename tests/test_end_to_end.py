"""Events in through the collector, metrics out of the query API, all real processes, checked
against a recomputation in plain Python that shares no code with the kernel."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import msgspec
import pytest

from mercato.demo.runner import free_port
from mercato.demo.traffic import TrafficGenerator
from mercato.query.tokens import TokenSigner

pytestmark = pytest.mark.slow

END = datetime(2026, 11, 20, tzinfo=UTC)
START = END - timedelta(days=3)
SECRET = "e2e-secret"


def start(role: str, data: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(data / f"{role}.out", "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mercato", "run", role],
            env={**os.environ, "MERCATO_DATA_DIR": str(data), **env},
            stdout=out,
            stderr=out,
        )


def answers(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/livez")
        response = connection.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        connection.close()


def get(port: int, path: str, token: str) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        body: dict[str, Any] = msgspec.json.decode(response.read())
        assert response.status == 200, body
        return body
    finally:
        connection.close()


def expected(events, merchant, zone, granularity, check):
    """Per local period start (ISO), [count, sum of amount] of the merchant's events passing
    ``check`` — directly from the events, no kernel, no store."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    tz = ZoneInfo(zone)
    for e in events:
        if e["merchant_id"] != merchant or not check(e):
            continue
        local = datetime.fromisoformat(e["timestamp"]).astimezone(tz)
        if granularity == "day":
            local = local.replace(hour=0, minute=0, second=0, microsecond=0)
        else:
            local = local.replace(minute=0, second=0, microsecond=0)
        cell = out[local.isoformat()]
        cell[0] += 1
        cell[1] += e["properties"].get("amount", 0)
    return out


def test_events_in_metrics_out(collector_factory, tmp_path):
    generator = TrafficGenerator(merchants=30, seed=11)
    events = generator.history(6_000, START, END)
    collector = collector_factory()
    data = collector.data_dir
    api_port = free_port()
    aggregator = start("aggregator", data, {})
    api = start("api", data, {"MERCATO_API_PORT": str(api_port), "MERCATO_API_SECRET": SECRET})
    try:
        deadline = time.monotonic() + 30
        while not answers(api_port):
            assert time.monotonic() < deadline, (data / "api.out").read_text()
            time.sleep(0.1)
        for i in range(0, len(events), 500):
            assert collector.post_events(events[i : i + 500])[0] == 200
        assert collector.post_events(events[:500])[0] == 200  # a retried request
        token_of = {m: TokenSigner(SECRET).issue(m, 3600)[0] for m in generator.merchants[:4]}
        merchant = generator.merchants[0]
        total = sum(
            1 for e in events if e["merchant_id"] == merchant and e["type"] == "order_completed"
        )
        # events sit a few seconds either side of [START, END): ask for a wider range
        since = (START - timedelta(days=1)).isoformat()
        until = (END + timedelta(days=1)).isoformat()
        query = urlencode({"from": since, "to": until, "tz": "UTC"})
        deadline = time.monotonic() + 60
        while True:  # fresh within seconds: wait for the aggregator to catch up
            body = get(api_port, f"/v1/metrics/orders?{query}", token_of[merchant])
            if sum(body["series"][0]["values"]) == total:
                break
            assert time.monotonic() < deadline, "events did not show up in the API"
            time.sleep(0.3)
        checks = {
            "orders": lambda e: e["type"] == "order_completed",
            "gross_revenue": lambda e: e["type"] == "order_completed",
            "page_views": lambda e: e["type"] == "page_viewed",
            "refunds": lambda e: e["type"] == "refund",
            "api_errors": lambda e: e["type"] == "api_request" and e["properties"]["status"] >= 500,
        }
        for merchant, token in token_of.items():
            for zone in ("UTC", "Asia/Kolkata", "Asia/Kathmandu", "America/New_York"):
                for granularity in ("day", "hour"):
                    for metric, check in checks.items():
                        params = {
                            "from": since, "to": until, "tz": zone, "granularity": granularity,
                        }  # fmt: skip
                        body = get(api_port, f"/v1/metrics/{metric}?{urlencode(params)}", token)
                        want = expected(events, merchant, zone, granularity, check)
                        index = 1 if metric == "gross_revenue" else 0
                        got = {
                            period: value
                            for period, value in zip(
                                body["periods"], body["series"][0]["values"], strict=True
                            )
                            if value
                        }
                        assert got == {p: v[index] for p, v in want.items() if v[index]}, (
                            merchant, zone, granularity, metric,
                        )  # fmt: skip
        for process in (aggregator, api):  # both stop cleanly
            process.terminate()
            assert process.wait(timeout=30) == 0
    finally:
        for process in (aggregator, api):
            if process.poll() is None:
                process.kill()
                process.wait()
