"""The drift check: speed vs final for recently sealed hours, recorded and exported."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from mercato.aggregator.aggregator import Aggregator
from mercato.batch.drift import check_drift
from mercato.batch.duckdb import DuckDbEngine
from mercato.batch.seal import seal
from mercato.config import ApiConfig, StoreConfig
from mercato.log.memory import MemoryLog
from mercato.metrics.definitions import load_definitions
from mercato.names import DRIFT_PPM
from mercato.query.app import QueryApi
from mercato.query.tokens import TokenSigner
from mercato.store.sqlite import SqliteStore
from tests.batch.test_seal import run_archiver, traffic
from tests.inprocess import call

DEFINITIONS = load_definitions()


def sealed_pipeline(tmp_path: Path, window: int) -> tuple[SqliteStore, int]:
    """Traffic in which a few events come back 3,000 records later; the stream's dedup window
    is ``window`` records per partition."""
    log = MemoryLog(partitions=1)
    records = traffic(4_000)
    late_copies = records[:1_000:100]  # 10 redeliveries, far from the originals
    log.append(records)
    log.append(late_copies)
    store = SqliteStore(tmp_path / "store.sqlite3", StoreConfig())
    aggregator = Aggregator(log, store, DEFINITIONS, max_batch_records=500, dedup_window=window)
    while aggregator.poll():
        pass
    run_archiver(log, tmp_path / "archive")
    engine = DuckDbEngine()
    seal(store, tmp_path / "archive", DEFINITIONS, engine, grace=timedelta(0))
    engine.close()
    return store, aggregator.version


def test_no_drift_when_the_window_covers_every_redelivery(tmp_path: Path) -> None:
    store, version = sealed_pipeline(tmp_path, window=100_000)
    report = check_drift(store, version, DEFINITIONS)
    assert report.hours
    assert report.ratio == 0
    assert report.largest == []
    assert sum(m.final for m in report.metrics if m.metric == "orders") > 0
    assert store.watermark(DRIFT_PPM, version) == 0


def test_redeliveries_older_than_the_window_show_as_drift(tmp_path: Path) -> None:
    store, version = sealed_pipeline(tmp_path, window=500)
    report = check_drift(store, version, DEFINITIONS)
    assert report.ratio > 0
    assert report.largest
    biggest = report.largest[0]
    assert biggest.speed is not None
    assert biggest.final is not None
    assert biggest.speed > biggest.final  # the stream counted a redelivery twice
    ppm = store.watermark(DRIFT_PPM, version)
    assert ppm is not None
    assert ppm == round(report.ratio * 1_000_000)

    api = QueryApi(ApiConfig(), store, DEFINITIONS, TokenSigner("s"), "admin")
    text = call(api.app, "GET", "/metrics").body.decode()
    assert f"mercato_serving_version {version}" in text
    assert f"mercato_drift_ratio {ppm / 1_000_000}" in text
    assert "mercato_sealed_through_seconds" in text


def test_nothing_sealed_recently_is_no_drift(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.sqlite3", StoreConfig())
    version = store.register_version(DEFINITIONS.version, "{}")
    report = check_drift(store, version, DEFINITIONS)
    assert (report.hours, report.ratio) == ([], 0.0)
