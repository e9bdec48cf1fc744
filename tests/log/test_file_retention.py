"""File log retention: by age, by size, never the active segment, and never past what the
consumers that matter have read."""

from __future__ import annotations

from pathlib import Path

import pytest

from mercato.log.errors import OffsetOutOfRangeError
from mercato.log.file import FileLog
from tests.log.test_file import (
    batch,
    config,
    segment_starts,
    segments,
    spread,
    stored_frames,
)


def check_deleted_offsets(log: FileLog, first_kept: Path, partitions: int) -> None:
    starts = segment_starts(first_kept, partitions)
    for p in range(partitions):
        assert log.start_offset(p) == log.stats()[p].start_offset == starts[p]
        if starts[p] == 0:
            continue
        for offset in (0, starts[p] - 1):
            with pytest.raises(OffsetOutOfRangeError, match="oldest kept offset") as caught:
                log.read(p, offset)
            assert (caught.value.partition, caught.value.start) == (p, starts[p])
        if starts[p] < log.end_offset(p):
            assert log.read(p, starts[p], 1)[0].offset == starts[p]


def test_retention_by_age(tmp_path: Path) -> None:
    now = [1_700_000_000_000]
    path = tmp_path / "log"
    cfg = config(3, segment_bytes=4096, retention_hours=1)
    with FileLog(path, cfg, clock=lambda: now[0]) as log:
        for i in range(120):
            log.append(spread("v" * 100 + str(i), n=3))
            now[0] += 60_000
        files = segments(path)
        assert len(files) > 4
        stored = stored_frames(path, 3)
        oldest = [min(f.timestamp_ms for f in stored if f.segment == s) for s in files]
        newest = [max(f.timestamp_ms for f in stored if f.segment == s) for s in files]
        kept = len(files) // 2
        assert oldest[kept] < newest[kept]
        # an hour after the middle of a segment: older than that but for its newest frames
        now[0] = (oldest[kept] + newest[kept]) // 2 + 3_600_000
        assert log.enforce_retention() == kept
        assert segments(path) == files[kept:]
        check_deleted_offsets(log, files[kept], 3)
        assert log.enforce_retention() == 0
        # far in the future everything is old, but the active segment stays
        ends = [log.end_offset(p) for p in range(3)]
        assert log.enforce_retention(now_ms=now[0] + 10 * 3_600_000) == len(files) - kept - 1
        assert segments(path) == files[-1:]
        check_deleted_offsets(log, files[-1], 3)
        positions = log.append(spread("after", n=3))
        for p in range(3):
            offsets = [pos.offset for pos in positions if pos.partition == p]
            assert offsets == list(range(ends[p], ends[p] + len(offsets)))
        assert log.verify() == []


def test_retention_by_size(tmp_path: Path) -> None:
    path = tmp_path / "log"
    limit = 3 * 4096
    cfg = config(3, segment_bytes=4096, retention_hours=0, retention_bytes=limit)
    with FileLog(path, cfg) as log, FileLog(path, cfg) as reader:
        for i in range(100):
            log.append(spread("s" * 100 + str(i), n=3))
        files = segments(path)
        sizes = [f.stat().st_size for f in files]
        assert [reader.read(p, 0) for p in range(3)]  # the reader holds old segments indexed
        drop = 0
        while drop < len(files) - 1 and sum(sizes[drop:]) > limit:
            drop += 1
        assert 0 < drop < len(files) - 1
        assert log.enforce_retention() == drop
        assert segments(path) == files[drop:]
        assert sum(f.stat().st_size for f in segments(path)) <= limit
        for instance in (log, reader):
            check_deleted_offsets(instance, files[drop], 3)
        assert log.enforce_retention() == 0


def test_retention_never_deletes_the_active_segment(tmp_path: Path) -> None:
    cfg = config(2, segment_bytes=4096, retention_hours=1, retention_bytes=4096)
    with FileLog(tmp_path / "log", cfg) as log:
        for i in range(40):
            log.append(spread("a" * 200 + str(i), n=2))
        files = segments(tmp_path / "log")
        assert len(files) > 1
        assert files[-1].stat().st_size > 0
        assert log.enforce_retention(now_ms=2**62) == len(files) - 1
        assert segments(tmp_path / "log") == files[-1:]
        assert log.enforce_retention(now_ms=2**62) == 0


def test_retention_waits_until_consumers_have_passed_a_segment(tmp_path: Path) -> None:
    cfg = config(2, segment_bytes=4096, retention_hours=1)
    with FileLog(tmp_path / "log", cfg) as log:
        for i in range(40):
            log.append(spread("c" * 200 + str(i), n=2))
        files = segments(tmp_path / "log")
        assert len(files) > 3
        second = segment_starts(files[2], 2)  # where the third segment starts
        assert log.enforce_retention(now_ms=2**62, consumed={0: 0, 1: 0}) == 0
        # one partition is past the first two segments, the other only just short of them
        behind = {0: second[0], 1: second[1] - 1}
        assert log.enforce_retention(now_ms=2**62, consumed=behind) == 1
        assert segments(tmp_path / "log") == files[1:]
        assert log.enforce_retention(now_ms=2**62, consumed=dict(enumerate(second))) == 1
        assert segments(tmp_path / "log") == files[2:]
        check_deleted_offsets(log, files[2], 2)
        everything = {p: log.end_offset(p) for p in range(2)}
        assert log.enforce_retention(now_ms=2**62, consumed=everything) == len(files) - 3


def test_retention_off_keeps_everything(tmp_path: Path) -> None:
    cfg = config(segment_bytes=4096, retention_hours=0, retention_bytes=0)
    with FileLog(tmp_path / "log", cfg) as log:
        for i in range(50):
            log.append(batch("k" * 200 + str(i)))
        assert len(segments(tmp_path / "log")) > 1
        assert log.enforce_retention(now_ms=2**62) == 0
        assert log.start_offset(0) == 0
