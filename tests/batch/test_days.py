"""Local days: derived per merchant in its zone (+5:45, a 25-hour DST day), equal to the
15-minute rows they replace, re-derived after late events and after a zone change."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow.compute as pc
import pytest

from mercato.aggregator.aggregator import Aggregator
from mercato.archive.layout import open_storage, read_state
from mercato.batch.duckdb import DuckDbEngine
from mercato.batch.engine import Rollup
from mercato.batch.seal import seal
from mercato.config import StoreConfig
from mercato.events.model import NormalizedEvent, encode_event
from mercato.log.base import Record
from mercato.log.memory import MemoryLog
from mercato.metrics.definitions import load_definitions
from mercato.metrics.periods import periods
from mercato.names import SEALED_THROUGH, days_watermark
from mercato.query.series import MerchantView, timeseries
from mercato.store.errors import StoreUnavailableError
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


# -- what a seal derives: the merchants whose hours changed, and the days that completed --------

D = datetime(2026, 11, 20, tzinfo=UTC)


class Recorder:
    """The store, recording each call and its arguments."""

    def __init__(self, store: SqliteStore, fail: str | None = None) -> None:
        self._store = store
        self._fail = fail
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def __getattr__(self, name: str) -> object:
        method = getattr(self._store, name)

        def call(*args: object) -> object:
            self.calls.append((name, args))
            if name == self._fail:
                raise StoreUnavailableError("injected")
            return method(*args)

        return call

    def naming(self, merchant: str) -> list[str]:
        """The calls that named ``merchant``: as an argument, in a list, or by a watermark."""
        names = (merchant, days_watermark(merchant))
        return [
            name
            for name, args in self.calls
            if any(a in names or (isinstance(a, list) and merchant in a) for a in args)
        ]


class Erasing:
    """The engine, leaving one merchant's events out (as an erasure from the archive would)."""

    name = "erasing"

    def __init__(self, engine: DuckDbEngine, merchant: str) -> None:
        self._engine = engine
        self._merchant = merchant

    def rollup(self, paths: list[str], definitions: object, filesystem: object = None) -> Rollup:
        rolled = self._engine.rollup(paths, DEFINITIONS, filesystem)
        keep = pc.not_equal(rolled.partials["merchant_id"], self._merchant)
        return Rollup(rolled.partials.filter(keep), rolled.events, rolled.rows)

    def close(self) -> None:
        self._engine.close()


def order(merchant: str, when: datetime, n: int) -> Record:
    event = NormalizedEvent(
        event_id=f"{merchant}-{when:%d%H%M}-{n}", merchant_id=merchant, type="order_completed",
        event_time=when, received_at=datetime.now(UTC),
        properties={"amount": 100 + n, "channel": "web"},
    )  # fmt: skip
    return Record(merchant, encode_event(event))


def archived(tmp_path: Path, records: list[Record]) -> Path:
    log = MemoryLog(partitions=2)
    log.append(records)
    run_archiver(log, tmp_path / "archive")
    return tmp_path / "archive"


def until(archive: Path, complete: datetime) -> timedelta:
    """The grace that makes the hours of ``archive`` complete up to ``complete``."""
    watermark = read_state(open_storage(archive)).watermark()
    assert watermark is not None
    return watermark - complete


def day_orders(store: SqliteStore, version: int, merchant: str, day: datetime) -> int | None:
    start = int(day.timestamp())
    rows = store.read_days(version, merchant, ["orders"], start, start + 1)
    return rows[0][5] if rows else None


def test_sealing_an_hour_derives_nothing_of_merchants_without_rows_in_it(tmp_path: Path) -> None:
    evening = D - timedelta(hours=4)  # m_c's day before: complete once D's midnight is sealed
    archive = archived(
        tmp_path,
        [order("m_c", evening, n) for n in range(3)]
        + [order(m, D + timedelta(hours=10, minutes=n), n) for m in ("m_a", "m_b") for n in (1, 2)],
    )
    store = SqliteStore(tmp_path / "store.sqlite3", StoreConfig())
    engine = DuckDbEngine()
    first = seal(store, archive, DEFINITIONS, engine, grace=until(archive, D + timedelta(hours=10)))
    assert day_orders(store, first.version, "m_c", D - timedelta(days=1)) == 3
    recorder = Recorder(store)
    report = seal(recorder, archive, DEFINITIONS, engine,  # type: ignore[arg-type]
                  grace=until(archive, D + timedelta(hours=11)))  # fmt: skip
    assert [h.hour for h in report.sealed] == [D + timedelta(hours=10)]
    assert report.days == 0  # m_a's and m_b's day is not complete yet
    assert recorder.naming("m_c") == []  # not a read, not a write
    assert "merchant_timezones" in recorder.naming("m_a")
    engine.close()


def test_a_reseal_that_removes_a_merchants_rows_derives_its_day_again(tmp_path: Path) -> None:
    archive = archived(
        tmp_path,
        [order("m_a", D + timedelta(hours=8), n) for n in range(2)]
        + [order(m, D + timedelta(hours=10), n) for m in ("m_a", "m_b") for n in range(5, 8)],
    )
    store = SqliteStore(tmp_path / "store.sqlite3", StoreConfig())
    engine = DuckDbEngine()
    version = seal(store, archive, DEFINITIONS, engine, grace=timedelta(0)).version
    assert day_orders(store, version, "m_a", D) == 5
    ten = D + timedelta(hours=10)
    report = seal(store, archive, DEFINITIONS, Erasing(engine, "m_a"), grace=timedelta(0),  # type: ignore[arg-type]
                  start=ten, end=ten + timedelta(hours=1), force=True)  # fmt: skip
    assert [h.hour for h in report.sealed] == [ten]
    assert store.final_merchants(version, int(ten.timestamp()), int(ten.timestamp()) + 3600) == [
        "m_b"
    ]
    assert day_orders(store, version, "m_a", D) == 2  # its day follows the hour's rows
    assert day_orders(store, version, "m_b", D) == 3
    assert daily(store, version, "m_a", "UTC", True) == daily(store, version, "m_a", "UTC", False)
    engine.close()


def test_days_a_seal_left_underived_are_derived_by_the_next_seal(tmp_path: Path) -> None:
    evening = D - timedelta(hours=4)
    archive = archived(tmp_path, [order("m_x", evening, n) for n in range(4)])
    store = SqliteStore(tmp_path / "store.sqlite3", StoreConfig())
    engine = DuckDbEngine()
    first = seal(store, archive, DEFINITIONS, engine, grace=until(archive, D - timedelta(hours=2)))
    assert first.days == 0  # its day is not complete
    # the watermark passes midnight, and the seal stops before it derives the day
    failing = Recorder(store, fail="replace_days")
    with pytest.raises(StoreUnavailableError):
        seal(failing, archive, DEFINITIONS, engine,  # type: ignore[arg-type]
             grace=until(archive, D + timedelta(hours=1)))  # fmt: skip
    assert store.watermark(SEALED_THROUGH, first.version) == int(
        (D + timedelta(hours=1)).timestamp()
    )
    assert day_orders(store, first.version, "m_x", D - timedelta(days=1)) is None
    again = seal(store, archive, DEFINITIONS, engine, grace=until(archive, D + timedelta(hours=1)))
    assert again.sealed == []
    assert again.days == 1
    assert day_orders(store, first.version, "m_x", D - timedelta(days=1)) == 4
    engine.close()


def test_days_a_reseal_made_stale_are_derived_by_the_next_seal(tmp_path: Path) -> None:
    log = MemoryLog(partitions=2)
    log.append([order("m_a", D + timedelta(hours=9), n) for n in range(3)])
    run_archiver(log, tmp_path / "archive")
    store = SqliteStore(tmp_path / "store.sqlite3", StoreConfig())
    engine = DuckDbEngine()
    version = seal(store, tmp_path / "archive", DEFINITIONS, engine, grace=timedelta(0)).version
    assert day_orders(store, version, "m_a", D) == 3
    log.append([order("m_a", D + timedelta(hours=9, minutes=30), 9)])  # late, in a derived day
    run_archiver(log, tmp_path / "archive")
    failing = Recorder(store, fail="replace_days")
    with pytest.raises(StoreUnavailableError):  # sealed, then stopped before deriving
        seal(failing, tmp_path / "archive", DEFINITIONS, engine, grace=timedelta(0))  # type: ignore[arg-type]
    assert day_orders(store, version, "m_a", D) == 3
    again = seal(store, tmp_path / "archive", DEFINITIONS, engine, grace=timedelta(0))
    assert again.sealed == []
    assert day_orders(store, version, "m_a", D) == 4
    assert store.stale_days(version) == {}
    engine.close()


def test_a_midnight_derives_the_days_of_its_zone_only(tmp_path: Path) -> None:
    morning = D - timedelta(hours=14)  # 10:00 UTC: Kolkata's day ends at 18:30, UTC's at 24:00
    archive = archived(tmp_path, [order(m, morning, n) for m in ("m_in", "m_utc") for n in (1, 2)])
    store = SqliteStore(tmp_path / "store.sqlite3", StoreConfig())
    store.set_merchant_timezone("m_in", "Asia/Kolkata")
    engine = DuckDbEngine()
    first = seal(store, archive, DEFINITIONS, engine, grace=until(archive, D - timedelta(hours=1)))
    assert first.days == 1  # Kolkata's
    recorder = Recorder(store)
    second = seal(recorder, archive, DEFINITIONS, engine, grace=until(archive, D))  # type: ignore[arg-type]
    assert second.sealed == []
    assert second.days == 1  # UTC's, now complete
    assert day_orders(store, first.version, "m_utc", D - timedelta(days=1)) == 2
    assert recorder.naming("m_in") == []
    engine.close()
