"""Crashes of the archiver between and inside its writes; replays leave readers every event
exactly once, whatever batch size the replay uses.

A crash is a storage that raises at the chosen write (the archiver does nothing after a failed
write, so raising there is what a kill at that moment leaves on disk), or a temp file left as a
kill inside a write would leave it.
"""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from mercato.archive.archiver import Archiver
from mercato.archive.layout import committed_files, list_files, list_hours, read_state
from mercato.log.base import Record
from mercato.log.memory import MemoryLog

from .conftest import (
    Crash,
    CrashingStorage,
    archived,
    assert_exactly_once,
    config,
    drain,
    records,
)

HOUR = timedelta(hours=1)


def all_files(root):
    return [f for hour in list_hours(root) for f in list_files(root, hour)]


@pytest.mark.parametrize("replay_batch", [40, 17, 100, 1000])
def test_a_crash_between_the_files_and_the_state_is_replayed_exactly_once(root, replay_batch):
    log = MemoryLog(2)
    log.append(records(0, 400))
    with Archiver(log, root, config(max_batch_records=40)) as first:
        first.poll()
    committed = read_state(root).next_offsets()
    log.append(records(400, 500))
    crashing = CrashingStorage(root, fail_at=1, state=True)
    with Archiver(log, crashing, config(max_batch_records=40)) as second:
        with pytest.raises(Crash):
            second.poll()
        assert second.stats.files > 0  # the batch's files are on disk ...
    assert read_state(root).next_offsets() == committed  # ... but not committed
    assert {f.path for f in committed_files(root)} < {f.path for f in all_files(root)}
    with Archiver(log, root, config(max_batch_records=replay_batch)) as replay:
        drain(replay)
    assert_exactly_once(root, log)
    assert committed_files(root) == all_files(root)  # no leftover survives the replay


@pytest.mark.parametrize("fail_at", [1, 2, 5])
def test_a_crash_after_some_of_a_batchs_files_is_replayed_exactly_once(root, fail_at):
    log = MemoryLog(3)
    log.append(records(0, 600))
    crashing = CrashingStorage(root, fail_at=fail_at, state=False)
    with Archiver(log, crashing, config(max_batch_records=70)) as first, pytest.raises(Crash):
        drain(first)
    with Archiver(log, root, config(max_batch_records=33)) as replay:
        drain(replay)
    assert_exactly_once(root, log)


def test_a_leftover_stays_invisible_until_the_replay_replaces_it(root):
    """The crashed batch [0, 99] wrote an hour whose only events are at offsets 60..99; the
    replay in batches of 50 commits [0, 49] without writing that hour, so the leftover is on
    disk past the committed offsets, then [50, 99] replaces it."""
    log = MemoryLog(1)
    log.append(records(0, 60, spread=HOUR))  # all in 08:00-09:00
    late = records(60, 100, spread=HOUR)  # moved to 10:00-11:00
    log.append([Record(r.key, r.value.replace(b"2026-11-26T08", b"2026-11-26T10")) for r in late])
    crashing = CrashingStorage(root, fail_at=1, state=True)
    with Archiver(log, crashing, config(max_batch_records=100)) as first, pytest.raises(Crash):
        first.poll()
    (leftover,) = [f for f in all_files(root) if f.hour.hour == 10]
    assert (leftover.first, leftover.last) == (0, 99)
    with Archiver(log, root, config(max_batch_records=50)) as replay:
        replay.poll()
        assert read_state(root).next_offsets() == {0: 50}
        assert leftover in all_files(root)
        assert leftover not in committed_files(root)
        assert_exactly_once_so_far(root, 50)
        replay.poll()
        assert leftover not in all_files(root)
        assert replay.stats.replaced >= 1
    assert_exactly_once(root, log)


def assert_exactly_once_so_far(root, committed: int) -> None:
    assert archived(root) == {(0, offset): 1 for offset in range(committed)}


def test_a_temp_file_left_by_a_kill_inside_a_write_is_ignored_and_cleaned(root):
    log = MemoryLog(1)
    log.append(records(0, 50))
    with Archiver(log, root, config()) as archiver:
        drain(archiver)
    (written,) = [f for f in committed_files(root) if f.partition == 0][:1]
    directory = root / written.path.rsplit("/", 1)[0]
    torn = directory / f".{written.name.replace('0049', '0099')}.archiver-dead1.tmp"
    torn.write_bytes(b"PAR1 torn")
    other = directory / f".{written.name}.compaction-busy.tmp"
    other.write_bytes(b"PAR1 in progress")
    assert_exactly_once(root, log)  # readers never look at temp files
    log.append(records(50, 100, spread=HOUR))
    with Archiver(log, root, config()) as archiver:
        drain(archiver)
    assert not torn.exists()  # the dead archiver's temp file is gone
    assert other.exists()  # another role's is not the archiver's to delete
    assert_exactly_once(root, log)


@pytest.mark.parametrize("seed", range(8))
def test_repeated_crashes_with_changing_batch_sizes(root, seed):
    rnd = random.Random(seed)
    log = MemoryLog(3)
    total = crashes = 0
    for _ in range(6):
        log.append(records(total, total + rnd.randrange(50, 300)))
        total = sum(log.end_offset(p) for p in range(3))
        state = rnd.random() < 0.5
        crashing = CrashingStorage(root, fail_at=rnd.randrange(1, 6), state=state)
        with Archiver(log, crashing, config(max_batch_records=rnd.randrange(5, 120))) as a:
            try:
                drain(a)
            except Crash:
                crashes += 1
    with Archiver(log, root, config(max_batch_records=rnd.randrange(5, 120))) as last:
        drain(last)
    assert crashes >= 3
    assert_exactly_once(root, log)
    assert committed_files(root) == all_files(root)
