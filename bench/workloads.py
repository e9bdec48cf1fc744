"""Workloads the benchmarks share: a file log filled with the demo's generated traffic."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from mercato.demo.traffic import TrafficGenerator
from mercato.events.native import decode_native, normalize_native
from mercato.events.rules import EventRules
from mercato.log.file import FileLog


def fill(log: FileLog, events: int, merchants: int) -> None:
    """Append ``events`` generated events (batches of 10,000) over ``merchants`` merchants."""
    generator = TrafficGenerator(merchants=merchants, seed=1)
    rules = EventRules()
    now = datetime.now(UTC)
    for _ in range(events // 10_000):
        body = msgspec.json.encode(generator.batch(10_000, now))
        records = normalize_native(decode_native(body, ndjson=False), now, "bench", rules)
        log.append(records)
