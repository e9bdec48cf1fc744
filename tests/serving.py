"""A data directory of known events in the serving store (final and provisional hours), and
``mercato run api`` on it in a subprocess: for the admin endpoints' and the browser tests."""

from __future__ import annotations

import http.client
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

import msgspec
import pyarrow.compute as pc

from mercato.config import StoreConfig
from mercato.demo.runner import free_port
from mercato.events.model import NormalizedEvent, encode_event
from mercato.metrics.batch import BatchBuilder
from mercato.metrics.definitions import Definitions, load_definitions, parse_definitions
from mercato.metrics.kernel import rollup
from mercato.names import SEALED_THROUGH
from mercato.query.tokens import TokenSigner
from mercato.store.sqlite import SqliteStore
from mercato.store.versions import register

DEFAULT_DEFINITIONS = Path(__file__).resolve().parents[1] / "mercato" / "metrics" / "default.yaml"
SECRET = "dashboard-test-secret"
ADMIN = "dashboard-test-admin-token"
ZONES = {"m_1": "Asia/Kolkata", "m_2": "America/New_York"}
# members only m_2 has: seeing one on m_1's page would be a leak
M2_ONLY = ("wholesale", "b2b_portal")


class _Common(TypedDict):
    merchant_id: str
    event_time: datetime
    received_at: datetime


def token(merchant: str, secret: str = SECRET, ttl: int = 3600) -> str:
    return TokenSigner(secret).issue(merchant, ttl)[0]


def events(now: datetime, days: int = 40) -> list[NormalizedEvent]:
    """Orders, refunds, page views and API calls of two merchants, every hour for ``days``
    days up to ``now``, seeded so every run has the same shape."""
    rng = random.Random(5)
    start = (now - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
    out: list[NormalizedEvent] = []
    hours = int((now - start).total_seconds() // 3600) + 1
    for h in range(hours):
        hour = start + timedelta(hours=h)
        for merchant in ("m_1", "m_2"):
            channels = ("web", "pos", "mobile") if merchant == "m_1" else M2_ONLY
            for n in range(rng.randint(1, 3)):
                at = hour + timedelta(minutes=rng.randrange(60))
                if at >= now:
                    continue
                common: _Common = {"merchant_id": merchant, "event_time": at, "received_at": at}
                amount = rng.randrange(500, 5000) if merchant == "m_1" else 7
                channel = channels[rng.randrange(len(channels))]
                out.append(
                    NormalizedEvent(
                        event_id=f"{merchant}-o-{h}-{n}", type="order_completed", **common,
                        properties={"amount": amount, "channel": channel,
                                    "customer_id": f"c{rng.randrange(40)}",
                                    "payment_method": ("card", "wallet")[n % 2]},
                        context={"country": ("IN", "US", "DE")[rng.randrange(3)]},
                    )
                )  # fmt: skip
                out.append(
                    NormalizedEvent(
                        event_id=f"{merchant}-v-{h}-{n}", type="page_viewed", **common,
                        properties={"session_id": f"s{h}-{n}", "channel": channel},
                    )
                )  # fmt: skip
                if rng.random() < 0.1:
                    out.append(
                        NormalizedEvent(
                            event_id=f"{merchant}-r-{h}-{n}", type="refund", **common,
                            properties={"amount": amount // 2, "channel": channel},
                        )
                    )  # fmt: skip
                out.append(
                    NormalizedEvent(
                        event_id=f"{merchant}-a-{h}-{n}", type="api_request", **common,
                        properties={"path": "/orders", "status": 503 if n == 2 else 200,
                                    "latency_ms": rng.randrange(5, 400)},
                    )
                )  # fmt: skip
    return out


def _partials(definitions: Definitions, batch: list[NormalizedEvent]) -> Any:
    table = BatchBuilder(definitions).batch([encode_event(e) for e in batch])
    return rollup(table, definitions)


def fill(
    data: Path, now: datetime, sealed_hours_ago: int = 5, days: int = 40
) -> list[NormalizedEvent]:
    """Store the events: all in the speed layer, and the hours before ``sealed_hours_ago``
    sealed as final (so answers hold both final and provisional points)."""
    definitions = load_definitions()
    known = events(now, days)
    through = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=sealed_hours_ago)
    final = _partials(definitions, [e for e in known if e.event_time < through])
    hours = pc.multiply(pc.divide(final["bucket"], 3600), 3600)  # integer division
    with SqliteStore(data / "store.sqlite3", StoreConfig()) as store:
        version = register(store, definitions)
        store.set_serving_version(version)
        store.write(version, "test", _partials(definitions, known), {})
        for hour in sorted(set(hours.to_pylist())):
            rows = final.filter(pc.equal(hours, hour))
            store.write_sealed_hour(version, hour, rows, "test", rows.num_rows)
        store.set_watermark(SEALED_THROUGH, version, int(through.timestamp()))
        for merchant, zone in ZONES.items():
            store.set_merchant_timezone(merchant, zone)
    return known


class ApiProcess:
    """``mercato run api`` on a data directory, with a small JSON client."""

    def __init__(self, data: Path, env: dict[str, str] | None = None) -> None:
        self.data = data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = data / "api.out"
        environment = {
            **os.environ,
            "MERCATO_DATA_DIR": str(data),
            "MERCATO_API_PORT": str(self.port),
            "MERCATO_API_SECRET": SECRET,
            "MERCATO_API_ADMIN_TOKEN": ADMIN,
            "MERCATO_API_RATE_LIMIT_PER_SECOND": "500",
            "MERCATO_API_RATE_LIMIT_BURST": "1000",
            "MERCATO_LOG_PARTITIONS": "2",
            **(env or {}),
        }
        with open(self.output, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mercato", "run", "api"],
                env=environment,
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.get("/livez")[0] == 200:
                    break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(self.output.read_text()) from None
                time.sleep(0.1)

    def call(
        self, method: str, path: str, bearer: str | None = None, body: object = None
    ) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        try:
            payload = None if body is None else msgspec.json.encode(body)
            connection.request(method, path, payload, headers)
            response = connection.getresponse()
            data = response.read()
            return response.status, msgspec.json.decode(data) if data else None
        finally:
            connection.close()

    def get(self, path: str, bearer: str | None = None) -> tuple[int, Any]:
        return self.call("GET", path, bearer)

    def stop(self) -> None:
        self.process.terminate()
        assert self.process.wait(timeout=30) == 0, self.output.read_text()


WEB_ONLY = """
  - name: gross_revenue
    kind: sum
    unit: money
    description: Amount of completed web orders
    events: [order_completed]
    value: properties.amount
    where:
      - {field: properties.channel, op: eq, value: web}
    dimensions: [channel, country, payment_method]
"""


def shadow_version(data: Path, known: list[NormalizedEvent], hours: int = 48) -> int:
    """Register definitions whose gross revenue counts web orders only, and seal the last
    ``hours`` hours before the serving version's seal watermark with them (a reprocess)."""
    text = DEFAULT_DEFINITIONS.read_text()
    start = text.index("  - name: gross_revenue")
    end = text.index("  - name: orders")
    definitions = parse_definitions(text[:start] + WEB_ONLY.lstrip("\n") + "\n" + text[end:])
    with SqliteStore(data / "store.sqlite3", StoreConfig()) as store:
        serving = store.serving_version()
        assert serving is not None
        through = store.watermark(SEALED_THROUGH, serving)
        assert through is not None
        version = register(store, definitions)
        for hour in range(through - hours * 3600, through, 3600):
            batch = [e for e in known if hour <= e.event_time.timestamp() < hour + 3600]
            store.write_sealed_hour(version, hour, _partials(definitions, batch), "t", len(batch))
        store.set_watermark(SEALED_THROUGH, version, through)
    return version
