"""Local days: derived per merchant in its zone (+5:45, a 25-hour DST day), equal to the
15-minute rows they replace, re-derived after late events and after a zone change."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from mercato.aggregator.aggregator import Aggregator
from mercato.batch.duckdb import DuckDbEngine
from mercato.batch.seal import seal
from mercato.config import StoreConfig
from mercato.events.model import NormalizedEvent, encode_event
from mercato.log.base import Record
from mercato.log.memory import MemoryLog
from mercato.metrics.definitions import load_definitions
from mercato.metrics.periods import periods
from mercato.names import SEALED_THROUGH
from mercato.query.series import MerchantView, timeseries
from mercato.store.sqlite import SqliteStore
from tests.batch.test_seal import run_archiver

DEFINITIONS = load_definitions()
ZONES = {"m_np": "Asia/Kathmandu", "m_ny": "America/New_York", "m_utc": "UTC"}
START = datetime(2026, 10, 30, tzinfo=UTC)  # New York falls back on 1 November
DAYS = 5


def orders(n: int, seed: int, prefix: str = "o") -> list[Record]:
    rnd = random.Random(seed)
    records = []
    for i in range(n):
        merchant = rnd.choice(sorted(ZONES))
        when = START + timedelta(seconds=rnd.randrange(DAYS * 86_400))
        event = NormalizedEvent(
            event_id=f"{prefix}{i}", merchant_id=merchant, type="order_completed",
            event_time=when, received_at=datetime.now(UTC),
            properties={"amount": rnd.randrange(1, 999), "channel": rnd.choice(["web", "pos"])},
        )  # fmt: skip
        records.append(Record(merchant, encode_event(event)))
    return records


def daily(
    store: SqliteStore, version: int, merchant: str, zone: str, by_day: bool
) -> list[list[Any]]:
    tz = ZoneInfo(zone)
    bounds = periods(datetime(2026, 10, 31, tzinfo=tz), datetime(2026, 11, 3, tzinfo=tz), "day", tz)
    view = MerchantView(
        store, version, merchant, store.watermark(SEALED_THROUGH, version), DEFINITIONS
    )
    out: list[list[Any]] = []
    for name in ("orders", "gross_revenue", "average_order_value"):
        metric = DEFINITIONS.metrics[name]
        out.append(timeseries(view, DEFINITIONS, metric, bounds, by_day=by_day)[0].values)
        out.append(
            [(s.member, s.values)
             for s in timeseries(view, DEFINITIONS, metric, bounds, "channel", by_day=by_day)]
        )  # fmt: skip
    return out


def setup(tmp_path: Path) -> tuple[MemoryLog, SqliteStore, Path, int, DuckDbEngine]:
    log = MemoryLog(partitions=2)
    log.append(orders(3_000, seed=1))
    store = SqliteStore(tmp_path / "store.sqlite3", StoreConfig())
    for merchant, zone in ZONES.items():
        store.set_merchant_timezone(merchant, zone)
    aggregator = Aggregator(log, store, DEFINITIONS)
    while aggregator.poll():
        pass
    run_archiver(log, tmp_path / "archive")
    return log, store, tmp_path / "archive", aggregator.version, DuckDbEngine()


def test_local_days_equal_the_buckets_they_replace_in_every_zone(tmp_path: Path) -> None:
    _log, store, archive, version, engine = setup(tmp_path)
    report = seal(store, archive, DEFINITIONS, engine, grace=timedelta(0))
    assert report.days >= len(ZONES) * DAYS
    for merchant, zone in ZONES.items():
        assert store.read_days(version, merchant, ["orders"], 0, 2**40)  # days exist
        assert daily(store, version, merchant, zone, True) == daily(
            store, version, merchant, zone, False
        ), merchant
    tz = ZoneInfo("America/New_York")
    fall_back = int(datetime(2026, 11, 1, tzinfo=tz).timestamp())
    rows = store.read_days(version, "m_ny", ["orders"], fall_back, fall_back + 1)
    assert [r[4] for r in rows] == [fall_back]  # the 25-hour day is one row
    kathmandu = int(datetime(2026, 11, 1, tzinfo=ZoneInfo("Asia/Kathmandu")).timestamp())
    assert kathmandu % 3600 == 15 * 60  # +5:45: its days start at :15 UTC
    assert store.read_days(version, "m_np", ["orders"], kathmandu, kathmandu + 1)
    engine.close()


def test_days_follow_late_events_and_a_zone_change(tmp_path: Path) -> None:
    log, store, archive, version, engine = setup(tmp_path)
    seal(store, archive, DEFINITIONS, engine, grace=timedelta(0))
    before = daily(store, version, "m_utc", "UTC", True)

    late = NormalizedEvent(
        event_id="late", merchant_id="m_utc", type="order_completed",
        event_time=datetime(2026, 11, 1, 12, tzinfo=UTC), received_at=datetime.now(UTC),
        properties={"amount": 500, "channel": "web"},
    )  # fmt: skip
    log.append([Record("m_utc", encode_event(late))])
    run_archiver(log, archive)
    seal(store, archive, DEFINITIONS, engine, grace=timedelta(0))
    after = daily(store, version, "m_utc", "UTC", True)
    assert after[0][1] == before[0][1] + 1  # 1 November, in the day rows
    assert after == daily(store, version, "m_utc", "UTC", False)

    store.set_merchant_timezone("m_utc", "Asia/Kolkata")
    assert store.days_to_rederive(version) == ["m_utc"]
    report = seal(store, archive, DEFINITIONS, engine, grace=timedelta(0))
    assert report.sealed == []  # nothing new to seal, but the days are derived again
    assert report.days >= DAYS
    assert store.days_to_rederive(version) == []
    assert daily(store, version, "m_utc", "Asia/Kolkata", True) == daily(
        store, version, "m_utc", "Asia/Kolkata", False
    )
    engine.close()


def test_a_day_completes_when_the_watermark_passes_its_midnight(tmp_path: Path) -> None:
    log = MemoryLog(partitions=1)
    morning = NormalizedEvent(
        event_id="early", merchant_id="m_np", type="order_completed",
        event_time=datetime(2026, 11, 1, 3, tzinfo=UTC), received_at=datetime.now(UTC),
        properties={"amount": 7, "channel": "web"},
    )  # fmt: skip
    log.append([Record("m_np", encode_event(morning))])
    store = SqliteStore(tmp_path / "store.sqlite3", StoreConfig())
    store.set_merchant_timezone("m_np", "Asia/Kathmandu")
    run_archiver(log, tmp_path / "archive")
    engine = DuckDbEngine()
    now = datetime.now(UTC)
    # first seal: complete only up to 12:00 UTC that day, before Kathmandu's midnight (18:15)
    first = seal(store, tmp_path / "archive", DEFINITIONS, engine,
                 grace=now - datetime(2026, 11, 1, 12, tzinfo=UTC))  # fmt: skip
    assert len(first.sealed) == 1
    assert first.days == 0
    version = first.version
    assert store.read_days(version, "m_np", ["orders"], 0, 2**40) == []
    # then the watermark passes midnight with no new event in the hours sealed now
    second = seal(store, tmp_path / "archive", DEFINITIONS, engine, grace=timedelta(0))
    assert second.sealed == []
    assert [r[5] for r in store.read_days(version, "m_np", ["orders"], 0, 2**40)] == [1]
    engine.close()
