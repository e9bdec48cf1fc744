"""Sealing: the batch layer recomputes complete hours from the archive with the stream's
kernel; stream == batch for exact metrics; late events make a sealed hour dirty."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from mercato.aggregator.aggregator import Aggregator
from mercato.archive.archiver import Archiver
from mercato.archive.compaction import compact_hour
from mercato.archive.layout import Root
from mercato.batch.duckdb import DuckDbEngine
from mercato.batch.seal import seal
from mercato.config import ArchiveConfig, StoreConfig
from mercato.events.model import NormalizedEvent, encode_event
from mercato.log.base import Log, Record
from mercato.log.memory import MemoryLog
from mercato.metrics.definitions import load_definitions
from mercato.metrics.kernel import sketch_estimate
from mercato.names import SEALED_THROUGH
from mercato.query.series import MerchantView, timeseries
from mercato.store.sqlite import SqliteStore

DEFINITIONS = load_definitions()
T0 = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
EVERYTHING = (0, 2**40)
EXACT = ["gross_revenue", "orders", "refunds", "refund_amount", "page_views", "api_requests",
         "api_errors"]  # fmt: skip
MERCHANTS = [f"m_{i}" for i in range(12)]


def event(rnd: random.Random, i: int, when: datetime, merchant: str) -> NormalizedEvent:
    kind = rnd.choice(["order_completed", "refund", "page_viewed", "api_request"])
    properties: dict[str, object] = {"channel": rnd.choice(["web", "pos", "mobile"])}
    if kind in ("order_completed", "refund"):
        properties |= {"amount": rnd.randrange(1, 50_000), "customer_id": f"c{rnd.randrange(40)}",
                       "payment_method": rnd.choice(["card", "wallet"])}  # fmt: skip
    elif kind == "page_viewed":
        properties |= {"session_id": f"s{rnd.randrange(60)}", "path": "/p"}
    else:
        properties |= {"path": rnd.choice(["/a", "/b"]), "status": rnd.choice([200, 200, 503]),
                       "latency_ms": rnd.randrange(1, 900)}  # fmt: skip
    return NormalizedEvent(
        event_id=f"e{i}",
        merchant_id=merchant,
        type=kind,
        event_time=when,
        received_at=when + timedelta(seconds=rnd.randrange(1, 30)),
        properties=properties,
        context={"country": rnd.choice(["US", "IN", "NP"])},
    )


def traffic(n: int, seed: int = 1, start: int = 0) -> list[Record]:
    """Orders, refunds, page views and API calls over three hours, some arriving hours late,
    some delivered twice."""
    rnd = random.Random(seed)
    records = []
    for i in range(start, start + n):
        when = T0 + timedelta(seconds=rnd.randrange(3 * 3600))
        merchant = rnd.choice(MERCHANTS)
        if rnd.random() < 0.05:  # late: event time two hours before the others around it
            when -= timedelta(hours=2)
        records.append(Record(merchant, encode_event(event(rnd, i, when, merchant))))
        if rnd.random() < 0.03:  # redelivered by a producer
            records.append(records[-1])
    return records


def run_stream(log: MemoryLog, store: SqliteStore) -> Aggregator:
    aggregator = Aggregator(log, store, DEFINITIONS, max_batch_records=700)
    while aggregator.poll():
        pass
    return aggregator


def run_archiver(log: Log, root: Root) -> None:
    with Archiver(log, root, ArchiveConfig(flush_interval_seconds=0)) as archiver:
        while archiver.poll():
            pass
        archiver.poll()  # finds every partition caught up: the watermark becomes "now"


def layer(
    store: SqliteStore, version: int, merchant: str, final: bool
) -> dict[tuple[str, str, str, int], tuple[object, ...]]:
    table = store.read(
        version, merchant, EXACT, *EVERYTHING, "", EVERYTHING[1] if final else None
    ).to_pylist()
    for dimension in ("channel", "country", "payment_method", "api_path"):
        more = store.read(
            version, merchant, EXACT, *EVERYTHING, dimension, EVERYTHING[1] if final else None
        )
        table += more.to_pylist()
    return {
        (r["metric"], r["dimension"], r["member"], r["bucket"]): (
            r["count"], r["sum"], r["min"], r["max"]
        )
        for r in table
    }  # fmt: skip


@pytest.fixture
def engine() -> Iterator[DuckDbEngine]:
    engine = DuckDbEngine(chunk_rows=1_000)  # several chunks: their partials merge
    yield engine
    engine.close()


def test_stream_equals_batch_for_exact_metrics_and_sketches_agree(
    tmp_path: Path, engine: DuckDbEngine
) -> None:
    log = MemoryLog(partitions=4)
    log.append(traffic(6_000))
    store = SqliteStore(tmp_path / "store.sqlite3", StoreConfig())
    aggregator = run_stream(log, store)
    assert aggregator.stats.duplicates > 0
    run_archiver(log, tmp_path / "archive")

    report = seal(store, tmp_path / "archive", DEFINITIONS, engine, grace=timedelta(0))
    version = aggregator.version
    assert report.version == version
    assert len(report.sealed) >= 5  # three hours of traffic plus the late events' hours
    assert sum(h.events for h in report.sealed) == 6_000  # every distinct event, once
    assert sum(h.rows for h in report.sealed) > 6_000  # the redeliveries were archived too
    for merchant in MERCHANTS:
        speed, final = layer(store, version, merchant, False), layer(store, version, merchant, True)
        assert speed, merchant
        assert speed == final, merchant
        for metric in ("unique_customers", "sessions"):
            got = [store.read(version, merchant, [metric], *EVERYTHING, "", through)
                   for through in (None, EVERYTHING[1])]  # fmt: skip
            s, f = ([sketch_estimate(b) for b in t["sketch"].to_pylist()] for t in got)
            assert s == pytest.approx(f, rel=0.02)
    sealed_through = store.watermark(SEALED_THROUGH, version)
    assert sealed_through is not None
    assert sealed_through >= int((T0 + timedelta(hours=3)).timestamp())


def test_a_late_event_for_a_sealed_hour_is_final_after_the_next_seal(
    tmp_path: Path,
    engine: DuckDbEngine,
) -> None:
    log = MemoryLog(partitions=4)
    log.append(traffic(2_000))
    store = SqliteStore(tmp_path / "store.sqlite3", StoreConfig())
    root = tmp_path / "archive"
    version = run_stream(log, store).version
    run_archiver(log, root)
    first = seal(store, root, DEFINITIONS, engine, grace=timedelta(0))
    assert first.sealed
    assert not first.unchanged
    again = seal(store, root, DEFINITIONS, engine, grace=timedelta(0))
    assert (again.sealed, again.unchanged) == ([], len(first.sealed))  # nothing changed

    merchant = "m_3"
    hour = T0 + timedelta(hours=1)
    view = MerchantView(store, version, merchant, store.watermark(SEALED_THROUGH, version))
    bounds = [int(hour.timestamp()), int(hour.timestamp()) + 3600]
    orders = DEFINITIONS.metrics["orders"]
    before = timeseries(view, DEFINITIONS, orders, bounds)[0].values[0]
    assert isinstance(before, int)  # a count
    assert view.is_final(bounds[1])

    late = NormalizedEvent(
        event_id="late-1",
        merchant_id=merchant,
        type="order_completed",
        event_time=hour + timedelta(minutes=20),
        received_at=datetime.now(UTC),
        properties={"amount": 1234, "channel": "web"},
    )
    log.append([Record(merchant, encode_event(late))] * 2)  # and delivered twice
    run_stream(log, store)
    run_archiver(log, root)
    assert timeseries(view, DEFINITIONS, orders, bounds)[0].values[0] == before  # still sealed

    third = seal(store, root, DEFINITIONS, engine, grace=timedelta(0))
    assert [(h.hour, h.resealed) for h in third.sealed] == [(hour, True)]
    assert timeseries(view, DEFINITIONS, orders, bounds)[0].values[0] == before + 1


def test_compaction_does_not_make_an_hour_dirty(tmp_path: Path, engine: DuckDbEngine) -> None:
    log = MemoryLog(partitions=2)
    root = tmp_path / "archive"
    store = SqliteStore(tmp_path / "store.sqlite3", StoreConfig())
    for part in range(3):  # three archiver batches: three small files per partition and hour
        log.append(traffic(500, seed=part, start=part * 500))
        run_archiver(log, root)
    first = seal(store, root, DEFINITIONS, engine, grace=timedelta(0))
    hour = first.sealed[0].hour
    compact_hour(root, hour.date(), hour.hour)
    again = seal(store, root, DEFINITIONS, engine, grace=timedelta(0))
    assert again.sealed == []
    assert again.unchanged == len(first.sealed)


def test_hours_the_archiver_has_not_passed_by_the_grace_stay_unsealed(
    tmp_path: Path, engine: DuckDbEngine
) -> None:
    log = MemoryLog(partitions=1)
    now = datetime.now(UTC)
    rnd = random.Random(3)
    log.append([Record("m_1", encode_event(event(rnd, i, now - timedelta(minutes=i), "m_1")))
                for i in range(0, 180, 7)])  # fmt: skip
    root = tmp_path / "archive"
    run_archiver(log, root)
    store = SqliteStore(tmp_path / "store.sqlite3", StoreConfig())
    report = seal(store, root, DEFINITIONS, engine, grace=timedelta(minutes=10))
    assert report.complete_before is not None
    assert report.sealed
    assert all(h.hour + timedelta(hours=1) <= report.complete_before for h in report.sealed)
    current = now.replace(minute=0, second=0, microsecond=0)
    assert current not in [h.hour for h in report.sealed]
    assert report.sealed_through is not None
    assert report.sealed_through <= current


def test_seal_command_seals_then_finds_nothing_changed(tmp_path: Path) -> None:
    from mercato.config import load_config
    from mercato.log import open_log
    from tests.test_cli import mercato

    data = tmp_path / "data"
    config = load_config(env={"MERCATO_DATA_DIR": str(data), "MERCATO_LOG_FSYNC": "false"})
    with closing(open_log(config)) as log:
        log.append(traffic(1_500))
        with Archiver(log, config.archive_path, ArchiveConfig(flush_interval_seconds=0)) as a:
            while a.poll():
                pass
            a.poll()
    first = mercato("seal", "--format", "json", data_dir=data)
    assert first.returncode == 0, first.stderr
    report = msgspec.json.decode(first.stdout)
    assert sum(h["events"] for h in report["sealed"]) == 1_500
    assert report["sealed_through"] is not None
    again = mercato("seal", data_dir=data)
    assert again.returncode == 0, again.stderr
    assert f"0 hour(s) sealed, {len(report['sealed'])} unchanged" in again.stdout
    bad = mercato("seal", "--from", "yesterday", data_dir=data)
    assert bad.returncode == 1
    assert "--from takes a UTC hour" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_fingerprint_ignores_compaction_and_sees_new_files() -> None:
    from mercato.archive.layout import ArchiveFile
    from mercato.batch.seal import fingerprint

    hour = T0
    small = [
        ArchiveFile(hour, 3, 0, 99),
        ArchiveFile(hour, 3, 250, 300),
        ArchiveFile(hour, 1, 5, 9),
    ]
    merged = [ArchiveFile(hour, 3, 0, 300), ArchiveFile(hour, 1, 5, 9)]  # across the gap
    assert fingerprint(small) == fingerprint(merged)
    late = [*merged, ArchiveFile(hour, 3, 900, 950)]
    assert fingerprint(late) != fingerprint(merged)
    assert fingerprint([*merged, ArchiveFile(hour, 2, 0, 0)]) != fingerprint(merged)
