"""Collector and aggregator as real processes; the aggregator is killed -9 again and again."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from mercato.config import load_config
from mercato.log import open_log
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


def orders(batch: int, merchants: int = 40) -> list[dict]:
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
        with open_log(config) as log, open_store(config) as store:
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
                got = defaultdict(lambda: [0, 0])
                for row in rows.to_pylist():
                    got[row["metric"]][0] += row["count"]
                    got[row["metric"]][1] += row["sum"] or 0
                assert got["orders"][0] == count, merchant
                assert got["gross_revenue"] == [count, amount], merchant
    finally:
        aggregator.send_signal(signal.SIGTERM)
        assert aggregator.wait(timeout=30) == 0, output.read_text()
