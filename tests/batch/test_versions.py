"""Reprocess into a shadow version, diff, promote atomically under concurrent queries, roll
back; the aggregator service follows the serving version."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mercato.aggregator.aggregator import Aggregator
from mercato.archive.archiver import Archiver
from mercato.batch.duckdb import DuckDbEngine
from mercato.batch.seal import seal
from mercato.batch.versions import diff, promote, prune, reprocess, rollback
from mercato.config import ArchiveConfig, StoreConfig, load_config
from mercato.demo.runner import free_port
from mercato.events.model import NormalizedEvent, encode_event
from mercato.log import open_log
from mercato.log.base import Record
from mercato.metrics.definitions import DEFAULT_FILE, load_definitions, parse_definitions
from mercato.names import SEALED_THROUGH
from mercato.query.tokens import TokenSigner
from mercato.store.errors import UnknownVersionError
from mercato.store.sqlite import SqliteStore
from mercato.store.versions import definitions_of
from tests.query.test_api import Api

OLD = load_definitions()
# The "bug fix": gross revenue should never have counted marketplace orders.
NEW = parse_definitions(
    DEFAULT_FILE.read_text().replace(
        "    value: properties.amount\n    dimensions: [channel, country, payment_method]",
        "    value: properties.amount\n    where:\n"
        "      - {field: properties.channel, op: ne, value: marketplace}\n"
        "    dimensions: [channel, country, payment_method]",
        1,
    )
)
DAY = datetime(2026, 11, 18, tzinfo=UTC)
MERCHANTS = ["m_1", "m_2", "m_3"]
CHANNELS = ["web", "pos", "marketplace"]
GRACE = timedelta(0)


def orders(n: int = 3_000) -> tuple[list[Record], dict[tuple[str, str], list[int]]]:
    """Orders over two UTC days; per (merchant, day): [all amounts, non-marketplace]."""
    rnd = random.Random(5)
    records: list[Record] = []
    expected: defaultdict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for i in range(n):
        merchant = rnd.choice(MERCHANTS)
        when = DAY + timedelta(seconds=rnd.randrange(2 * 86_400))
        channel, amount = rnd.choice(CHANNELS), rnd.randrange(100, 10_000)
        event = NormalizedEvent(
            event_id=f"o{i}", merchant_id=merchant, type="order_completed", event_time=when,
            received_at=when + timedelta(seconds=2),
            properties={"amount": amount, "channel": channel},
        )  # fmt: skip
        records.append(Record(merchant, encode_event(event)))
        cell = expected[(merchant, when.date().isoformat())]
        cell[0] += amount
        cell[1] += amount if channel != "marketplace" else 0
    return records, expected


def build(data: Path) -> tuple[dict[tuple[str, str], list[int]], int]:
    """A data directory with the log, the archive and the old version sealed and serving."""
    config = load_config(env={"MERCATO_DATA_DIR": str(data), "MERCATO_LOG_FSYNC": "false"})
    records, expected = orders()
    log = open_log(config)
    try:
        log.append(records)
        with SqliteStore(config.store_path, StoreConfig()) as store:
            aggregator = Aggregator(log, store, OLD)
            while aggregator.poll():
                pass
            with Archiver(log, config.archive_path, ArchiveConfig(flush_interval_seconds=0)) as a:
                while a.poll():
                    pass
                a.poll()
            engine = DuckDbEngine()
            seal(store, config.archive_path, OLD, engine, grace=GRACE)
            engine.close()
            return expected, aggregator.version
    finally:
        log.close()


def test_reprocess_diff_promote_rollback(tmp_path: Path) -> None:
    data = tmp_path / "data"
    expected, old = build(data)
    config = load_config(env={"MERCATO_DATA_DIR": str(data)})
    engine = DuckDbEngine()
    log = open_log(config)
    with SqliteStore(config.store_path, StoreConfig()) as store:
        report = reprocess(store, config.archive_path, NEW, engine, start=DAY,
                           end=DAY + timedelta(days=2), grace=GRACE)  # fmt: skip
        new = report.version
        assert new != old
        assert store.serving_version() == old  # a shadow: served by nobody yet
        assert len(report.sealed) == 48

        rows = list(diff(store, old, new, DAY, DAY + timedelta(days=2)))
        assert {r.metric for r in rows} == {"gross_revenue", "net_revenue", "average_order_value"}
        got = {(r.merchant_id, r.day): (r.old, r.new) for r in rows if r.metric == "gross_revenue"}
        assert got == {key: tuple(amounts) for key, amounts in expected.items()}

        now = datetime.now(UTC)
        fresh = [  # this hour's orders: not sealed yet, so only a replay can count them
            NormalizedEvent(event_id=f"fresh{i}", merchant_id="m_1", type="order_completed",
                            event_time=now, received_at=now,
                            properties={"amount": 5, "channel": "web"})
            for i in range(40)
        ]  # fmt: skip
        log.append([Record("m_1", encode_event(e)) for e in fresh])
        promoted = promote(store, log, config.archive_path, new, engine, grace=GRACE)
        assert (promoted.version, promoted.previous) == (new, old)
        assert store.serving_version() == new
        assert store.watermark(SEALED_THROUGH, new) == store.watermark(SEALED_THROUGH, old)
        assert promoted.replayed_events == 40  # the speed layer replayed from the watermark
        hour = int(now.timestamp()) // 3600 * 3600
        rows_now = store.read(new, "m_1", ["gross_revenue"], hour, hour + 3600)
        assert sum(rows_now["sum"].to_pylist()) == 200

        back = rollback(store, log, config.archive_path, engine, grace=GRACE)
        assert (back.version, back.previous, store.serving_version()) == (old, new, old)
        assert prune(store, timedelta(0)) == []  # the rollback target is kept
        with pytest.raises(UnknownVersionError, match="no definitions version 99"):
            definitions_of(store, 99)
    log.close()
    engine.close()


def gross(api: Api, token: str) -> list[int]:
    path = "/v1/metrics/gross_revenue?from=2026-11-18&to=2026-11-20&granularity=day&tz=UTC"
    status, _, body = api.get(path, token)
    assert status == 200, body
    values: list[int] = body["series"][0]["values"]
    return values


@pytest.mark.slow
def test_answers_never_mix_versions_while_promote_and_rollback_switch(tmp_path: Path) -> None:
    data = tmp_path / "data"
    expected, _old = build(data)
    config = load_config(env={"MERCATO_DATA_DIR": str(data)})
    days = [DAY.date().isoformat(), (DAY + timedelta(days=1)).date().isoformat()]
    want = {
        merchant: {
            "old": [expected[(merchant, d)][0] for d in days],
            "new": [expected[(merchant, d)][1] for d in days],
        }
        for merchant in MERCHANTS
    }
    engine = DuckDbEngine()
    with SqliteStore(config.store_path, StoreConfig()) as store:
        new = reprocess(store, config.archive_path, NEW, engine, start=None, end=None,
                        grace=GRACE).version  # fmt: skip

    port = free_port()
    env = {**os.environ, "MERCATO_DATA_DIR": str(data), "MERCATO_API_PORT": str(port),
           "MERCATO_API_SECRET": "s", "MERCATO_API_RATE_LIMIT_PER_SECOND": "10000",
           "MERCATO_API_RATE_LIMIT_BURST": "10000"}  # fmt: skip
    with open(tmp_path / "api.out", "ab") as out:
        server = subprocess.Popen([sys.executable, "-m", "mercato", "run", "api"], env=env,
                                  stdout=out, stderr=out)  # fmt: skip
    api = Api(port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if api.get("/livez")[0] == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        tokens = {m: TokenSigner("s").issue(m, 3600)[0] for m in MERCHANTS}
        assert gross(api, tokens["m_1"]) == want["m_1"]["old"]
        seen: dict[str, set[str]] = defaultdict(set)
        problems: list[str] = []
        stop = threading.Event()

        def reader(merchant: str) -> None:
            while not stop.is_set():
                values = gross(api, tokens[merchant])
                for name, vector in want[merchant].items():
                    if values == vector:
                        seen[merchant].add(name)
                        break
                else:
                    problems.append(f"{merchant}: {values} is neither {want[merchant]}")

        threads = [threading.Thread(target=reader, args=(m,)) for m in MERCHANTS * 2]
        for t in threads:
            t.start()
        log = open_log(config)
        with SqliteStore(config.store_path, StoreConfig()) as store:
            for _ in range(3):
                promote(store, log, config.archive_path, new, engine, grace=GRACE)
                time.sleep(1.5)  # past the API's one-second cache of the serving version
                rollback(store, log, config.archive_path, engine, grace=GRACE)
                time.sleep(1.5)
        log.close()
        stop.set()
        for t in threads:
            t.join()
        assert problems == []
        assert all(seen[m] == {"old", "new"} for m in MERCHANTS), seen
    finally:
        server.terminate()
        server.wait(timeout=30)
        engine.close()


@pytest.mark.slow
def test_the_aggregator_service_follows_a_promote(tmp_path: Path) -> None:
    data = tmp_path / "data"
    build(data)
    config = load_config(env={"MERCATO_DATA_DIR": str(data), "MERCATO_LOG_FSYNC": "false"})
    env = {**os.environ, "MERCATO_DATA_DIR": str(data), "MERCATO_LOG_FSYNC": "false"}
    with open(tmp_path / "aggregator.out", "ab") as out:
        service = subprocess.Popen([sys.executable, "-m", "mercato", "run", "aggregator"],
                                   env=env, stdout=out, stderr=out)  # fmt: skip
    engine = DuckDbEngine()
    log = open_log(config)
    try:
        deadline = time.monotonic() + 60
        while f"definitions {OLD.version}" not in (tmp_path / "aggregator.out").read_text():
            assert service.poll() is None, (tmp_path / "aggregator.out").read_text()
            assert time.monotonic() < deadline, "the aggregator did not start"
            time.sleep(0.1)
        with SqliteStore(config.store_path, StoreConfig()) as store:
            new = reprocess(store, config.archive_path, NEW, engine, start=None, end=None,
                            grace=GRACE).version  # fmt: skip
            promote(store, log, config.archive_path, new, engine, grace=GRACE)
            now = datetime.now(UTC)
            late = [  # arriving now for a sealed day: counted by the speed layer of the new
                NormalizedEvent(event_id=f"late{i}", merchant_id=m, type="order_completed",
                                event_time=DAY, received_at=now,
                                properties={"amount": 1, "channel": "web"})
                for i, m in enumerate(MERCHANTS * 10)
            ]  # fmt: skip
            positions = log.append([Record(e.merchant_id, encode_event(e)) for e in late])
            ends = {p.partition: p.offset + 1 for p in positions}
            consumer = f"aggregator/{NEW.version}"
            deadline = time.monotonic() + 30
            while any(store.offsets(consumer).get(p) != end for p, end in ends.items()):
                assert service.poll() is None, (tmp_path / "aggregator.out").read_text()
                assert time.monotonic() < deadline, "the service did not follow the promote"
                time.sleep(0.2)
            output = (tmp_path / "aggregator.out").read_text()
            assert "version 2 serves now: switching from 1" in output
    finally:
        service.terminate()
        assert service.wait(timeout=30) == 0
        log.close()
        engine.close()
