"""``mercato run archiver`` and ``mercato archive compact`` as users run them; the archiver
is killed -9 while it archives and restarted, and readers still see every event once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from mercato.archive.layout import committed_files, list_files, list_hours, read_state
from mercato.config import Config, load_config
from mercato.log import open_log

from .conftest import assert_exactly_once, records

pytestmark = pytest.mark.slow

EVENTS = 200_000


def environment(data: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "MERCATO_DATA_DIR": str(data),
        "MERCATO_LOG_PARTITIONS": "4",
        "MERCATO_LOG_FSYNC": "false",
        "MERCATO_ARCHIVE_MAX_BATCH_RECORDS": "2000",
        "MERCATO_ARCHIVE_FLUSH_INTERVAL_SECONDS": "0",
        "MERCATO_ARCHIVE_IDLE_SLEEP_MS": "50",
        **extra,
    }
    env.pop("MERCATO_CONFIG", None)
    return env


def mercato(data: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mercato", *args],
        env=environment(data, **extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def start_archiver(data: Path, output: Path, **extra: str) -> subprocess.Popen[bytes]:
    with open(output, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mercato", "run", "archiver"],
            env=environment(data, **extra),
            stdout=out,
            stderr=out,
        )


def archived_so_far(root: Any) -> int:
    try:
        return sum(read_state(root).next_offsets().values())
    except Exception:  # the state is being replaced: only a reader's retry is wanted here
        return 0


def wait_for(condition, process: subprocess.Popen[bytes], output: Path, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"archiver exited {process.returncode}: {output.read_text()}")
        assert time.monotonic() < deadline, output.read_text()
        time.sleep(0.005)


def fill(data: Path, events: int, **extra: str) -> Config:
    """A log of ``events`` events under ``data``; the configuration ``mercato`` sees there."""
    config = load_config(env=environment(data, **extra))
    with closing(open_log(config)) as log:
        for start in range(0, events, 10_000):
            stop = min(start + 10_000, events)
            log.append(records(start, stop, merchants=500, spread=timedelta(hours=6)))
    return config


def kill_9_and_restart(data: Path, events: int, kills: int, steps: range, **extra: str) -> None:
    """Start the archiver and kill -9 it ``kills`` times, each after it committed a random
    number in ``steps`` more records, then let it finish and stop it; the archive must then
    hold the ``events`` records of the log exactly once, and no leftover."""
    config = load_config(env=environment(data, **extra))
    root = config.archive_path
    output = data / "archiver.out"
    rnd = random.Random(11)
    killed_at = []
    for _ in range(kills):
        process = start_archiver(data, output, **extra)
        target = archived_so_far(root) + rnd.randrange(steps.start, steps.stop)
        wait_for(lambda t=target: archived_so_far(root) >= t, process, output)
        time.sleep(rnd.random() * 0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        killed_at.append(archived_so_far(root))
    assert killed_at[-1] < events, "the archiver finished before the last kill"
    process = start_archiver(data, output, **extra)
    wait_for(lambda: archived_so_far(root) == events, process, output)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, output.read_text()
    with closing(open_log(config)) as log:
        assert_exactly_once(root, log)
    everything = [f for hour in list_hours(root) for f in list_files(root, hour)]
    assert committed_files(root) == everything  # every crashed batch's leftover is gone


@pytest.fixture
def filled(tmp_path):
    return tmp_path, fill(tmp_path, EVENTS)


def test_kill_9_while_archiving_then_restart_reads_every_event_once(filled):
    data, _ = filled
    kill_9_and_restart(data, EVENTS, kills=5, steps=range(10_000, 30_000))


def test_compact_from_the_command_line(filled):
    data, config = filled
    output = data / "archiver.out"
    process = start_archiver(data, output)
    wait_for(lambda: archived_so_far(config.archive_path) == EVENTS, process, output)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0, output.read_text()
    assert "mercato archiver: partitions [0, 1, 2, 3] of 4" in output.read_text()
    hours = list_hours(config.archive_path)
    first = hours[0]
    one = mercato(data, "archive", "compact", "--date", f"{first:%Y-%m-%d}", "--hour", "8")
    assert one.returncode == 0, one.stderr
    assert "1 hour(s)" in one.stdout
    assert len(list_files(config.archive_path, first)) == 4
    every = mercato(data, "archive", "compact", "--all")
    assert every.returncode == 0, every.stderr
    assert f"{len(hours)} hour(s)" in every.stdout
    for hour in hours:
        assert len(list_files(config.archive_path, hour)) == 4
    with closing(open_log(config)) as log:
        assert_exactly_once(config.archive_path, log)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["archive", "compact"], "either --date and --hour, or --all"),
        (["archive", "compact", "--date", "2026-11-26"], "--date and --hour go together"),
        (["archive", "compact", "--date", "26.11.2026", "--hour", "1"], "YYYY-MM-DD"),
        (["archive", "compact", "--date", "2026-11-26", "--hour", "25"], "0..23"),
        (["archive", "compact", "--all", "--hour", "2"], "either --date and --hour, or --all"),
        (["run", "archiver", "--partitions", "one"], "--partitions takes numbers"),
        (["run", "archiver", "--partitions", "9"], "partition 9 is not in 0..3"),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, message):
    result = mercato(tmp_path, *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_second_archiver_of_the_same_partitions_refuses_to_start(tmp_path):
    output = tmp_path / "archiver.out"
    first = start_archiver(tmp_path, output)
    try:
        wait_for(lambda: "mercato archiver:" in output.read_text(), first, output)
        second = mercato(tmp_path, "run", "archiver", "--partitions", "2")
        assert second.returncode == 1
        assert "partition 2 is already archived by another process" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
