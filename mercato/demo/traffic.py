"""A traffic generator that looks like a commerce platform's event stream.

Merchants have power-law sizes (a few large shops, a long tail of small ones) and live in many
time zones (Asia/Kolkata and Asia/Kathmandu among them, and zones with DST), and their
traffic follows a daily cycle in local time: quiet at night, busiest in the evening. Each
sends page views, orders, refunds and API request logs; money is in integer minor units. A
small share of events arrive late (their timestamp minutes to hours old), and some batches
are sent twice with the same event ids, as a retrying client would, so consumers'
de-duplication has work to do. :meth:`TrafficGenerator.history` makes past days of traffic
for a backfill.
"""

from __future__ import annotations

import base64
import http.client
import random
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import msgspec

CURRENCIES = ("USD", "EUR", "GBP", "INR", "JPY", "BRL")
COUNTRIES = ("US", "DE", "GB", "IN", "NP", "JP", "BR", "AU", "FR", "CA")
CHANNELS = ("web", "mobile", "pos", "marketplace")
PAYMENT_METHODS = ("card", "wallet", "bank_transfer", "bnpl", "cash")
API_PATHS = ("/v1/charges", "/v1/orders", "/v1/customers", "/v1/refunds", "/v1/products")
TYPE_WEIGHTS = (("page_viewed", 60), ("api_request", 25), ("order_completed", 12), ("refund", 3))
ZONES = (
    "America/New_York", "America/Los_Angeles", "America/Sao_Paulo", "Europe/London",
    "Europe/Berlin", "Asia/Kolkata", "Asia/Kathmandu", "Asia/Tokyo", "Australia/Sydney",
    "UTC",
)  # fmt: skip
# relative traffic per local hour: quiet at night, a lunch bump, busiest in the evening
HOURLY = (2, 1, 1, 1, 1, 2, 4, 6, 8, 9, 10, 11, 12, 11, 10, 10, 11, 12, 14, 16, 17, 15, 10, 5)


class TrafficStats(msgspec.Struct):
    """What the generator sent and what the collector acknowledged."""

    requests: int = 0
    events_acknowledged: int = 0
    events_rejected: int = 0
    retries: int = 0
    duplicates_sent: int = 0


class TrafficGenerator:
    """Makes batches of native events for ``merchants`` merchants with Zipf-like sizes."""

    def __init__(self, merchants: int = 2000, seed: int | None = None) -> None:
        self._random = random.Random(seed)
        self.merchants = [f"m_{i:05d}" for i in range(1, merchants + 1)]
        weights = [1.0 / (rank**1.1) for rank in range(1, merchants + 1)]
        total = sum(weights)
        self._weights = [w / total for w in weights]
        self._types = [t for t, _ in TYPE_WEIGHTS]
        self._type_weights = [w for _, w in TYPE_WEIGHTS]
        self.zones = {m: ZONES[zlib.crc32(m.encode()) % len(ZONES)] for m in self.merchants}
        self._tz = {name: ZoneInfo(name) for name in ZONES}

    def _local_hour_weights(self, now: datetime) -> list[float]:
        factor = {name: HOURLY[now.astimezone(zone).hour] for name, zone in self._tz.items()}
        return [
            w * factor[self.zones[m]] for m, w in zip(self.merchants, self._weights, strict=True)
        ]

    def batch(self, size: int, now: datetime | None = None) -> list[dict[str, Any]]:
        """Events happening around ``now``, merchants weighted by their local time of day."""
        now = now or datetime.now(UTC)
        merchants = self._random.choices(self.merchants, self._local_hour_weights(now), k=size)
        types = self._random.choices(self._types, self._type_weights, k=size)
        return [self.event(m, t, now) for m, t in zip(merchants, types, strict=True)]

    def history(self, size: int, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Events spread over ``[start, end)`` with each merchant's daily cycle."""
        rnd = self._random
        merchants = rnd.choices(self.merchants, self._weights, k=size)
        types = rnd.choices(self._types, self._type_weights, k=size)
        days = max(1, (end - start).days)
        events = []
        for merchant, event_type in zip(merchants, types, strict=True):
            zone = self._tz[self.zones[merchant]]
            day = (start + timedelta(days=rnd.randrange(days))).astimezone(zone).date()
            hour = rnd.choices(range(24), HOURLY)[0]
            local = datetime(day.year, day.month, day.day, hour, rnd.randrange(60), tzinfo=zone)
            at = min(max(local.astimezone(UTC), start), end - timedelta(seconds=1))
            event = self.event(merchant, event_type, at, late=False)
            # sent now, not then: a sent_at of the past would read as a skewed client clock
            del event["sent_at"]
            events.append(event)
        return events

    def event(
        self, merchant: str, event_type: str, now: datetime, *, late: bool = True
    ) -> dict[str, Any]:
        rnd = self._random
        delay = timedelta(seconds=rnd.expovariate(1 / 2.0))
        if late and rnd.random() < 0.02:
            delay += timedelta(minutes=rnd.uniform(5, 180))
        timestamp = now - delay
        properties: dict[str, Any] = {"channel": rnd.choice(CHANNELS)}
        if event_type in ("order_completed", "refund"):
            amount = int(rnd.lognormvariate(8.0, 1.0))
            properties |= {
                "order_id": f"o_{rnd.getrandbits(48):012x}",
                "amount": amount if event_type == "order_completed" else amount // 2,
                "currency": rnd.choice(CURRENCIES),
                "payment_method": rnd.choice(PAYMENT_METHODS),
                "customer_id": f"c_{rnd.randrange(50_000)}",
            }
        elif event_type == "api_request":
            status = rnd.choices((200, 201, 400, 404, 500), (80, 10, 5, 4, 1))[0]
            properties |= {
                "path": rnd.choice(API_PATHS),
                "status": status,
                "latency_ms": round(rnd.lognormvariate(3.5, 0.6), 1),
            }
        else:
            properties |= {"path": f"/products/{rnd.randrange(500)}", "session_id": _hex(rnd)}
        return {
            "event_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
            "type": event_type,
            "merchant_id": merchant,
            "timestamp": timestamp.isoformat().replace("+00:00", "Z"),
            "sent_at": now.isoformat().replace("+00:00", "Z"),
            "properties": properties,
            "context": {"country": rnd.choice(COUNTRIES)},
        }


def _hex(rnd: random.Random) -> str:
    return f"{rnd.getrandbits(64):016x}"


class TrafficSender:
    """Posts generated batches to a collector at a target rate, retrying 429 and 503."""

    def __init__(
        self,
        url: str,
        write_key: str,
        generator: TrafficGenerator,
        *,
        rate: float = 2000.0,
        batch_size: int = 200,
        duplicate_share: float = 0.01,
    ) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        self._generator = generator
        self._rate = rate
        self._batch_size = batch_size
        self._duplicate_share = duplicate_share
        self.stats = TrafficStats()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self, duration: float | None = None) -> TrafficStats:
        """Send until :meth:`stop` or ``duration`` seconds; returns what was acknowledged."""
        deadline = None if duration is None else time.monotonic() + duration
        connection = http.client.HTTPConnection(self._host, self._port, timeout=30)
        started = time.monotonic()
        try:
            for body, count in self._bodies():
                if self._stop.is_set() or (deadline is not None and time.monotonic() > deadline):
                    break
                self._post(connection, body, count)
                ahead = self.stats.events_acknowledged / self._rate - (time.monotonic() - started)
                if ahead > 0:
                    self._stop.wait(ahead)
        finally:
            connection.close()
        return self.stats

    def _bodies(self) -> Iterator[tuple[bytes, int]]:
        rnd = random.Random()
        while True:
            events = self._generator.batch(self._batch_size)
            body = msgspec.json.encode(events)
            yield body, len(events)
            if rnd.random() < self._duplicate_share:
                self.stats.duplicates_sent += len(events)
                yield body, len(events)

    def _post(self, connection: http.client.HTTPConnection, body: bytes, count: int) -> None:
        headers = {"Authorization": self._auth, "Content-Type": "application/json"}
        while not self._stop.is_set():
            try:
                connection.request("POST", "/v1/events", body, headers)
                response = connection.getresponse()
                response.read()
            except (ConnectionError, http.client.HTTPException, TimeoutError):
                connection.close()
                self.stats.retries += 1
                self._stop.wait(0.5)
                continue
            self.stats.requests += 1
            if response.status == 200:
                self.stats.events_acknowledged += count
                return
            if response.status in (429, 503):
                self.stats.retries += 1
                self._stop.wait(float(response.getheader("Retry-After") or 1))
                continue
            self.stats.events_rejected += count
            return
