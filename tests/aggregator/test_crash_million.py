"""A 1 M-event run of the aggregator, killed -9 at random moments and at every named crash
point, loses nothing and counts nothing twice.

The log is filled directly (the collector is not under test here) with 1,000,000 orders over
500 merchants, plus producer redeliveries of recent records. Then, on the same data directory:
the crash-point script of :mod:`test_crash_points` dies at each named point in turn, and
``mercato run aggregator`` is started and killed -9 after a random time, several times. A last
run drains the log. The store's totals must equal a plain-Python count of the distinct events.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mercato.aggregator.aggregator import Aggregator
from mercato.config import LogConfig, StoreConfig
from mercato.events.model import NormalizedEvent, encode_event
from mercato.log.base import Record
from mercato.log.file import FileLog
from mercato.metrics.definitions import load_definitions
from mercato.store.sqlite import SqliteStore
from tests.aggregator.test_crash_points import CRASHER

pytestmark = pytest.mark.slow

EVENTS = 1_000_000
MERCHANTS = 500
T0 = datetime(2026, 11, 26, 0, 0, tzinfo=UTC)
RANGE = (int(T0.timestamp()) - 86_400, int(T0.timestamp()) + 2 * 86_400)
WINDOW = 50_000  # dedup window per partition; every redelivery below falls well inside it


def fill(data: Path) -> dict[str, list[int]]:
    """Log EVENTS distinct orders plus redeliveries; return merchant -> [orders, amount]."""
    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    rnd = random.Random(1)
    with FileLog(data / "log", LogConfig(fsync=False)) as log:
        for start in range(0, EVENTS, 10_000):
            records = []
            for i in range(start, start + 10_000):
                merchant, amount = f"m_{rnd.randrange(MERCHANTS)}", rnd.randrange(100, 100_000)
                event = NormalizedEvent(
                    event_id=f"e{i}",
                    merchant_id=merchant,
                    type="order_completed",
                    event_time=T0 + timedelta(seconds=i * 86_400 // EVENTS),
                    received_at=T0 + timedelta(seconds=i * 86_400 // EVENTS + 1),
                    properties={"amount": amount, "channel": rnd.choice(["web", "pos"])},
                )
                records.append(Record(merchant, encode_event(event)))
                expected[merchant][0] += 1
                expected[merchant][1] += amount
            records += rnd.sample(records, 300)  # a producer retried some of them
            log.append(records)
    return expected


def crash_at(data: Path, point: str, at_poll: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CRASHER, str(data), point, str(at_poll), "5000"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 9, f"{point}: {result.returncode} {result.stderr}"


def kill_service_once_it_counts(data: Path, consumer: str, pause: float, output: Path) -> None:
    """Start ``mercato run aggregator``, wait until it has committed a batch, let it run for
    ``pause`` more seconds, then kill -9 it."""
    env = {
        **os.environ,
        "MERCATO_DATA_DIR": str(data),
        "MERCATO_LOG_FSYNC": "false",
        "MERCATO_AGGREGATOR_DEDUP_WINDOW": str(WINDOW),
        "MERCATO_AGGREGATOR_MAX_BATCH_RECORDS": "20000",
    }
    before = counted(data, consumer)
    with open(output, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mercato", "run", "aggregator"], env=env, stdout=out, stderr=out
        )
    deadline = time.monotonic() + 120
    while counted(data, consumer) == before:  # a machine under load starts slowly
        assert process.poll() is None, output.read_text()
        assert time.monotonic() < deadline, "the aggregator made no progress"
        time.sleep(0.05)
    time.sleep(pause)
    assert process.poll() is None, output.read_text()
    process.send_signal(signal.SIGKILL)
    process.wait()


def counted(data: Path, consumer: str) -> int:
    """Log records the store says are counted."""
    with SqliteStore(data / "store.sqlite3", StoreConfig()) as store:
        return sum(store.offsets(consumer).values())


def test_a_million_events_survive_kill_9_at_random_moments_and_named_points(tmp_path):
    data = tmp_path / "data"
    expected = fill(data)
    assert sum(n for n, _ in expected.values()) == EVENTS
    for point, at_poll in [
        ("before_write", 3),
        ("before_commit", 3),
        ("after_commit", 2),
        ("inside_write", 3),
    ]:
        crash_at(data, point, at_poll)
    definitions = load_definitions()
    consumer = f"aggregator/{definitions.version}"
    progress = [counted(data, consumer)]
    rnd = random.Random(9)
    for _ in range(4):
        kill_service_once_it_counts(data, consumer, rnd.random() * 1.5, tmp_path / "agg.out")
        progress.append(counted(data, consumer))
    logged = EVENTS + 300 * EVENTS // 10_000
    assert 0 < progress[0] < progress[1] < logged, f"no kill hit a running batch: {progress}"

    with (
        FileLog(data / "log", LogConfig(fsync=False)) as log,
        SqliteStore(data / "store.sqlite3", StoreConfig()) as store,
    ):
        aggregator = Aggregator(
            log, store, definitions, max_batch_records=50_000, dedup_window=WINDOW
        )
        while aggregator.poll():
            pass
        got: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for merchant in expected:
            rows = store.read_rows(aggregator.version, merchant, ["gross_revenue"], *RANGE)
            for _, _, dimension, _, _, count, total, *_ in rows:
                if dimension == "":
                    got[merchant][0] += count
                    got[merchant][1] += total
    assert got == expected
