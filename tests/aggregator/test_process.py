"""Collector and aggregator as real processes; the aggregator is killed -9 again and again."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mercato.config import load_config
from mercato.events.model import NormalizedEvent, encode_event
from mercato.log import open_log
from mercato.log.base import Record
from mercato.metrics.definitions import load_definitions
from mercato.store import open_store

pytestmark = pytest.mark.slow

DAY = (1_795_000_000 - 86_400 * 30, 1_795_000_000 + 86_400 * 30)


def start_aggregator(data_dir: Path, output: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MERCATO_DATA_DIR": str(data_dir)}
    with open(output, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mercato", "run", "aggregator"],
            env=env,
            stdout=out,
            stderr=out,
        )


def orders(batch: int, merchants: int = 40) -> list[dict[str, Any]]:
    rnd = random.Random(batch)
    return [
        {
            "event_id": f"b{batch}-{i}",
            "type": "order_completed",
            "merchant_id": f"m_{rnd.randrange(merchants)}",
            "timestamp": "2026-11-20T10:00:00Z",
            "properties": {"amount": rnd.randrange(100, 10_000), "channel": "web"},
        }
        for i in range(200)
    ]


def test_kill_9_of_the_aggregator_loses_nothing_and_counts_nothing_twice(
    collector_factory, tmp_path
):
    collector = collector_factory()
    data = collector.data_dir
    output = tmp_path / "aggregator.out"
    aggregator = start_aggregator(data, output)
    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    rnd = random.Random(7)
    kills = 0
    try:
        for batch in range(150):
            events = orders(batch)
            status, _, body = collector.post_events(events)
            assert status == 200, body
            for e in events:
                cell = expected[e["merchant_id"]]
                cell[0] += 1
                cell[1] += e["properties"]["amount"]
            if rnd.random() < 0.1:  # a client retry: the same events again
                assert collector.post_events(events)[0] == 200
            if rnd.random() < 0.08:
                time.sleep(rnd.random() * 0.3)
                aggregator.send_signal(signal.SIGKILL)
                aggregator.wait()
                kills += 1
                aggregator = start_aggregator(data, output)
        assert kills >= 3
        config = load_config(env={"MERCATO_DATA_DIR": str(data)})
        version = load_definitions().version
        with closing(open_log(config)) as log, open_store(config) as store:
            ends = {p: log.end_offset(p) for p in range(log.partitions) if log.end_offset(p)}
            deadline = time.monotonic() + 60
            while store.offsets(f"aggregator/{version}") != ends:
                assert aggregator.poll() is None, output.read_text()
                assert time.monotonic() < deadline, "the aggregator did not catch up"
                time.sleep(0.2)
            serving = store.serving_version()
            assert serving is not None
            for merchant, (count, amount) in expected.items():
                rows = store.read(serving, merchant, ["orders", "gross_revenue"], *DAY)
                got: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
                for row in rows.to_pylist():
                    got[row["metric"]][0] += row["count"]
                    got[row["metric"]][1] += row["sum"] or 0
                assert got["orders"][0] == count, merchant
                assert got["gross_revenue"] == [count, amount], merchant
    finally:
        aggregator.send_signal(signal.SIGTERM)
        assert aggregator.wait(timeout=30) == 0, output.read_text()


def wait_for(text: str, output: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while text not in output.read_text():
        assert process.poll() is None, output.read_text()
        assert time.monotonic() < deadline, f"no {text!r} in: {output.read_text()}"
        time.sleep(0.1)


def test_an_aggregator_started_on_a_full_disk_waits_for_space(small_disk, tmp_path):
    data = small_disk.path / "data"
    config = load_config(env={"MERCATO_DATA_DIR": str(data), "MERCATO_LOG_FSYNC": "false"})
    when = datetime(2026, 11, 20, 10, tzinfo=UTC)
    events = [
        NormalizedEvent(event_id=f"e{i}", merchant_id=f"m_{i % 4}", type="order_completed",
                        event_time=when, received_at=when, properties={"amount": i})
        for i in range(300)
    ]  # fmt: skip
    with closing(open_log(config)) as log:
        log.append([Record(e.merchant_id, encode_event(e)) for e in events])
        ends = {p: log.end_offset(p) for p in range(log.partitions) if log.end_offset(p)}

    # no store yet and no room for one: it waits, and SIGTERM stops it cleanly
    small_disk.fill()
    output = tmp_path / "aggregator.out"
    aggregator = start_aggregator(data, output)
    wait_for("(failure 2)", output, aggregator)
    aggregator.send_signal(signal.SIGTERM)
    assert aggregator.wait(timeout=30) == 0, output.read_text()
    assert "cannot use" in output.read_text()
    assert "Traceback" not in output.read_text()

    # a store, then a full disk ("disk I/O error" opening it): it waits until there is room
    small_disk.free()
    open_store(config).close()
    small_disk.fill()
    output = tmp_path / "aggregator-2.out"
    aggregator = start_aggregator(data, output)
    try:
        wait_for("(failure 2)", output, aggregator)
        assert "cannot open the store" in output.read_text()
        small_disk.free()
        wait_for("started after", output, aggregator)
        version = load_definitions().version
        with open_store(config) as store:
            deadline = time.monotonic() + 60
            while store.offsets(f"aggregator/{version}") != ends:
                assert aggregator.poll() is None, output.read_text()
                assert time.monotonic() < deadline, output.read_text()
                time.sleep(0.2)
            serving = store.serving_version()
            assert serving is not None
            for m in range(4):
                rows = store.read(serving, f"m_{m}", ["gross_revenue"], *DAY).to_pylist()
                assert sum(r["sum"] for r in rows) == sum(range(m, 300, 4))
    finally:
        aggregator.send_signal(signal.SIGTERM)
        assert aggregator.wait(timeout=30) == 0, output.read_text()
    assert "Traceback" not in output.read_text()
