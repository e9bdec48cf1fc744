"""Compaction keeps an hour's rows, repeats harmlessly and survives a kill at any step."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pytest

from mercato.archive.archiver import Archiver
from mercato.archive.compaction import compact_all, compact_hour
from mercato.archive.errors import CompactionError
from mercato.archive.layout import ArchiveFile, list_files, list_hours
from mercato.archive.reader import read_committed
from mercato.archive.schema import SORT_KEYS, event_checksum, read_parquet, write_parquet
from mercato.archive.storage import ArchiveStorage
from mercato.log.memory import MemoryLog

from .conftest import Crash, assert_exactly_once, config, drain, records


def small_files(root, events: int = 600, partitions: int = 2, batch: int = 25) -> MemoryLog:
    log = MemoryLog(partitions)
    log.append(records(0, events))
    with Archiver(log, root, config(max_batch_records=batch)) as archiver:
        drain(archiver)
    return log


def fingerprint(root) -> tuple[int, int]:
    table = read_committed(root)
    return table.num_rows, event_checksum(table)


def hour_args(hour) -> tuple[str, int]:
    return hour.date().isoformat(), hour.hour


def test_compaction_keeps_rows_and_checksum_and_leaves_one_file_per_partition(root):
    log = small_files(root)
    before = fingerprint(root)
    hour = list_hours(root)[0]
    inputs = [f for f in list_files(root, hour)]
    result = compact_hour(root, *hour_args(hour))
    after = list_files(root, hour)
    assert result.merged_files == len(inputs)
    assert result.written_files == len(after) == 2
    assert result.rows == sum(read_parquet(root / f.path).num_rows for f in after)
    for f in after:
        mine = [i for i in inputs if i.partition == f.partition]
        assert (f.first, f.last) == (mine[0].first, mine[-1].last)
        table = read_parquet(root / f.path)
        assert table.equals(table.sort_by(SORT_KEYS))
    assert fingerprint(root) == before
    assert_exactly_once(root, log)
    assert not list(root.rglob("*.tmp"))


def test_compaction_is_idempotent(root):
    small_files(root)
    first = compact_all(root)
    assert first.hours == 3
    assert first.written_files == 6
    names = sorted(str(p) for p in root.rglob("*.parquet"))
    again = compact_all(root)
    assert (again.merged_files, again.written_files, again.redundant_files) == (0, 0, 0)
    assert sorted(str(p) for p in root.rglob("*.parquet")) == names


def test_files_past_the_committed_offsets_are_not_compacted(root):
    log = small_files(root, partitions=1)
    hour = list_hours(root)[0]
    last = list_files(root, hour)[-1]
    log.append(records(600, 700))
    leftover = ArchiveFile(hour, 0, 600, 650)  # as a batch that crashed before its state
    (root / leftover.path).write_bytes((root / last.path).read_bytes())
    before = fingerprint(root)
    result = compact_hour(root, *hour_args(hour))
    assert result.written_files == 1
    assert [(f.first, f.last) for f in list_files(root, hour)] == [(0, last.last), (600, 650)]
    assert fingerprint(root) == before


def test_big_files_split_runs(root):
    log = MemoryLog(1)
    for start, batch in ((0, 20), (200, 200), (400, 20)):
        log.append(records(start, start + 200))
        with Archiver(log, root, config(max_batch_records=batch)) as archiver:
            drain(archiver)
    hour = list_hours(root)[0]
    files = list_files(root, hour)
    (big,) = [f for f in files if (f.first, f.last) == (200, 399)]
    assert max(f.size for f in files if f != big) < big.size
    result = compact_hour(root, *hour_args(hour), target_bytes=big.size)
    assert result.written_files == 2
    after = list_files(root, hour)
    assert [(f.first, f.last) for f in after] == [(0, 199), (200, 399), (400, 599)]
    assert big in after


def test_the_archiver_carries_on_after_compaction(root):
    log = small_files(root, partitions=2)
    compact_all(root)
    log.append(records(600, 900))
    with Archiver(log, root, config(max_batch_records=40)) as archiver:
        drain(archiver)
    compact_all(root)
    assert_exactly_once(root, log)
    for hour in list_hours(root):
        assert len(list_files(root, hour)) == 2


class DeleteCrash(ArchiveStorage):
    """Dies at the ``fail_at``-th delete: after a merged file was renamed into place."""

    def __init__(self, root: Any, fail_at: int) -> None:
        super().__init__(root)
        self.fail_at = fail_at
        self.deletes = 0

    def delete(self, relative: str) -> bool:
        self.deletes += 1
        if self.deletes == self.fail_at:
            raise Crash(relative)
        return super().delete(relative)


@pytest.mark.parametrize("fail_at", [1, 2, 10])
def test_a_kill_between_the_rename_and_the_deletes_is_read_once_and_finished_later(root, fail_at):
    log = small_files(root, partitions=1)
    before = fingerprint(root)
    hour = list_hours(root)[0]
    with pytest.raises(Crash):
        compact_hour(DeleteCrash(root, fail_at), *hour_args(hour))
    merged_and_inputs = list_files(root, hour)
    assert len(merged_and_inputs) > 2  # the merged file and the inputs not yet deleted
    assert fingerprint(root) == before
    assert_exactly_once(root, log)
    result = compact_hour(root, *hour_args(hour))
    assert result.redundant_files == len(merged_and_inputs) - 1
    assert len(list_files(root, hour)) == 1
    assert fingerprint(root) == before


class Truncating(ArchiveStorage):
    """Writes merged files one row short, as a bug or a bad disk might."""

    def write_atomic(self, relative: str, write: Any, **kwargs: Any) -> None:
        def short(out: Any) -> None:
            buffer = pa.BufferOutputStream()
            write(buffer)
            table = read_parquet(pa.BufferReader(buffer.getvalue()))
            write_parquet(table.slice(1), out, 3)

        super().write_atomic(relative, short, **kwargs)


def test_a_merged_file_that_does_not_match_its_inputs_is_deleted_and_nothing_else(root):
    small_files(root, partitions=1)
    before = fingerprint(root)
    hour = list_hours(root)[0]
    inputs = list_files(root, hour)
    with pytest.raises(CompactionError, match="does not hold its"):
        compact_hour(Truncating(root), *hour_args(hour))
    assert list_files(root, hour) == inputs
    assert fingerprint(root) == before
    assert not list(root.rglob("*.tmp"))


def test_stale_temp_files_are_removed_and_fresh_ones_kept(root):
    small_files(root, partitions=1)
    hour = list_hours(root)[0]
    directory = root / list_files(root, hour)[0].path.rsplit("/", 1)[0]
    stale = directory / ".p0000-0000000000000000-0000000000000099.parquet.compaction-a.tmp"
    fresh = directory / ".p0000-0000000000000000-0000000000000099.parquet.compaction-b.tmp"
    stale.write_bytes(b"PAR1")
    fresh.write_bytes(b"PAR1")
    old = time.time() - timedelta(hours=2).total_seconds()
    os.utime(stale, (old, old))
    compact_hour(root, *hour_args(hour))
    assert not stale.exists()
    assert fresh.exists()
