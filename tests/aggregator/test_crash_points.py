"""The aggregator process dies at named crash points; a restart still counts every event once.

Crash points: before the store write, inside the write after the rows went in but before
COMMIT (SQLite's trace callback sees the COMMIT statement start), right after the commit,
and at a random SQLite VM instruction inside the write (a progress handler).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
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

pytestmark = pytest.mark.slow

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
RANGE = (int(T0.timestamp()) - 86_400, int(T0.timestamp()) + 86_400)

CRASHER = textwrap.dedent(
    """
    import os, random, sqlite3, sys
    from pathlib import Path
    from mercato.aggregator.aggregator import Aggregator
    from mercato.config import LogConfig, StoreConfig
    from mercato.log.file import FileLog
    from mercato.metrics.definitions import load_definitions
    from mercato.store.sqlite import SqliteStore

    data, point, at_poll = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 100
    polls = 0
    connect = sqlite3.connect

    def armed():
        return polls >= at_poll

    def crashing_connect(*args, **kwargs):
        db = connect(*args, **kwargs)
        if point == "before_commit":
            db.set_trace_callback(
                lambda sql: os._exit(9) if armed() and sql.strip().upper() == "COMMIT" else None
            )
        elif point == "inside_write":
            budget = [random.Random(at_poll).randrange(1, 2_000)]
            def tick():
                if armed():
                    budget[0] -= 1
                    if budget[0] <= 0:
                        os._exit(9)
                return 0
            db.set_progress_handler(tick, 50)
        return db

    sqlite3.connect = crashing_connect

    class CrashingStore(SqliteStore):
        def write(self, *args, **kwargs):
            if armed() and point == "before_write":
                os._exit(9)
            super().write(*args, **kwargs)
            if armed() and point == "after_commit":
                os._exit(9)

    log = FileLog(data / "log", LogConfig(fsync=False))
    store = CrashingStore(data / "store.sqlite3", StoreConfig())
    aggregator = Aggregator(log, store, load_definitions(), max_batch_records=batch)
    while True:
        polls += 1
        if not aggregator.poll():
            break
    sys.exit(3)  # the crash point was never reached
    """
)


def fill(data: Path, events: int) -> dict[str, list[int]]:
    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    with FileLog(data / "log", LogConfig(fsync=False)) as log:
        for start in range(0, events, 500):
            records = []
            for i in range(start, start + 500):
                merchant, amount = f"m_{i % 37}", 100 + i % 900
                event = NormalizedEvent(
                    event_id=f"e{i}",
                    merchant_id=merchant,
                    type="order_completed",
                    event_time=T0 + timedelta(seconds=i),
                    received_at=T0 + timedelta(seconds=i + 1),
                    properties={"amount": amount, "channel": "web"},
                )
                records.append(Record(merchant, encode_event(event)))
                expected[merchant][0] += 1
                expected[merchant][1] += amount
            if start % 2000 == 0:  # a producer retry: the same events logged again
                records += records[:50]
            log.append(records)
    return expected


def totals(store: SqliteStore, version: int, merchant: str) -> list[int]:
    rows = store.read(version, merchant, ["gross_revenue"], *RANGE)
    return [sum(r["count"] for r in rows.to_pylist()), sum(r["sum"] for r in rows.to_pylist())]


@pytest.mark.parametrize("point", ["before_write", "before_commit", "after_commit", "inside_write"])
def test_a_crash_at_any_point_loses_nothing_and_counts_nothing_twice(tmp_path, point):
    expected = fill(tmp_path, 10_000)
    for at_poll in (2, 3, 2):  # crash, restart from the store's offsets, crash again, ...
        result = subprocess.run(
            [sys.executable, "-c", CRASHER, str(tmp_path), point, str(at_poll)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 9, result.stderr
    with (
        FileLog(tmp_path / "log", LogConfig(fsync=False)) as log,
        SqliteStore(tmp_path / "store.sqlite3", StoreConfig()) as store,
    ):
        aggregator = Aggregator(log, store, load_definitions(), max_batch_records=100)
        while aggregator.poll():
            pass
        for merchant, want in expected.items():
            assert totals(store, aggregator.version, merchant) == want, merchant
