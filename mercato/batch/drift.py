"""Drift: how far the speed layer's answer was from the exact one, for recently sealed hours.

The stream de-duplicates within a bounded window and counts whatever reached it; the seal
recomputes an hour exactly. For every hour sealed in the last ``hours`` hours, the check
compares the two layers' totals of the exact metrics (count, sum, min, max) across merchants.
The **drift ratio** is ``sum |speed - final| / sum |final|`` over merchants, metrics and
hours; it is stored with the version (``drift_ppm``, parts per million) and exported by the
query API's ``/metrics`` as ``mercato_drift_ratio``. Anything above zero means the speed layer
missed or double-counted something the batch layer caught: redeliveries older than the dedup
window, or events the aggregator has not reached yet when the hour was sealed.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Protocol

import msgspec

from mercato.metrics.definitions import Definitions
from mercato.names import DRIFT_CHECKED_AT, DRIFT_PPM, SEALED_THROUGH
from mercato.store.base import BatchStore, VersionStore, VersionTotal

EXACT = ("count", "sum", "min", "max")


class TotalsStore(VersionStore, BatchStore, Protocol):
    """What comparing a version's totals needs of the store: its definitions, its sealed
    hours and layer totals, and watermarks to record the result in."""


class MetricDrift(msgspec.Struct, frozen=True):
    metric: str
    speed: int
    final: int
    cells: int  # (merchant, hour) pairs that differ


class Difference(msgspec.Struct, frozen=True):
    merchant_id: str
    metric: str
    hour: datetime
    speed: int | None
    final: int | None


class DriftReport(msgspec.Struct):
    version: int
    hours: list[datetime]
    ratio: float
    metrics: list[MetricDrift]
    largest: list[Difference]  # the biggest differences, at most 10
    seconds: float


def check_drift(
    store: TotalsStore,
    version: int,
    definitions: Definitions,
    *,
    hours: int = 24,
    now: datetime | None = None,
) -> DriftReport:
    """Compare speed and final totals of the hours of ``version`` sealed in the last
    ``hours`` hours, and record the ratio with the version."""
    began = time.perf_counter()
    now = now or datetime.now(UTC)
    since_ms = int((now - timedelta(hours=hours)).timestamp() * 1000)
    fresh = sorted(
        h.hour for h in store.sealed_hours(version).values() if h.sealed_at_ms >= since_ms
    )
    exact = {m.name: m.kind for m in definitions.stored if m.kind in EXACT}
    wanted = set(fresh)
    layers: list[dict[tuple[str, str, int], int | None]] = []
    for layer in ("speed", "final"):
        values: dict[tuple[str, str, int], int | None] = {}
        if fresh:
            totals = store.layer_totals(version, fresh[0], fresh[-1] + 3600, 3600, layer)
            for t in totals:
                if t.metric in exact and t.period in wanted:
                    values[(t.merchant_id, t.metric, t.period)] = _value(exact[t.metric], t)
        layers.append(values)
    speed, final = layers
    per_metric: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    differences = []
    off = total = 0
    for key in speed.keys() | final.keys():
        s, f = speed.get(key), final.get(key)
        merchant, metric, hour = key
        cell = per_metric[metric]
        cell[0] += s or 0
        cell[1] += f or 0
        total += abs(f or 0)
        if s != f:
            cell[2] += 1
            off += abs((s or 0) - (f or 0))
            differences.append(
                Difference(merchant, metric, datetime.fromtimestamp(hour, UTC), s, f)
            )
    ratio = off / total if total else 0.0
    store.set_watermark(DRIFT_PPM, version, round(ratio * 1_000_000))
    store.set_watermark(DRIFT_CHECKED_AT, version, int(now.timestamp()))
    differences.sort(key=lambda d: -abs((d.speed or 0) - (d.final or 0)))
    return DriftReport(
        version,
        [datetime.fromtimestamp(h, UTC) for h in fresh],
        round(ratio, 6),
        [MetricDrift(name, *cell) for name, cell in sorted(per_metric.items())],
        differences[:10],
        round(time.perf_counter() - began, 3),
    )


def _value(kind: str, total: VersionTotal) -> int | None:
    value: int | None = getattr(total, kind)
    return value


def invalid_values(store: TotalsStore, version: int, now: float) -> dict[str, int]:
    """Per metric of ``version``, the events of every merchant in the 24 hours before ``now``
    that the metric matched but could not use (a value of the wrong kind)."""
    end = int(now) - int(now) % 900 + 900
    return store.invalid_totals(
        version, end - 86_400, end, store.watermark(SEALED_THROUGH, version)
    )
