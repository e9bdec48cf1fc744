"""The file log: layout, crash recovery, corruption, concurrency, segments, retention."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from itertools import count, pairwise
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercato.config import LogConfig
from mercato.log.base import LogReader, Position, Record, partition_for
from mercato.log.errors import (
    LogCorruptionError,
    LogLayoutError,
    LogWriteError,
)
from mercato.log.file import FileLog
from mercato.log.segment import (
    FRAME_HEADER_SIZE,
    decode_frame,
    decode_head,
    decode_segment_header,
    encode_frame,
    encode_segment_header,
    frames,
    head_size,
    segment_header_size,
)

ROOT = Path(__file__).resolve().parents[2]

Entry = tuple[int, str, bytes]


def config(partitions: int = 1, **options: Any) -> LogConfig:
    return LogConfig(partitions=partitions, **{"fsync": False, **options})


def batch(tag: str, n: int = 3, key: str = "merchant-1") -> list[Record]:
    return [Record(key, f"{tag}-{i}".encode()) for i in range(n)]


def spread(tag: str, n: int, keys: int = 7) -> list[Record]:
    """``n`` records over ``keys`` keys: one append holds frames of several partitions."""
    return [Record(f"m{i % keys}", f"{tag}-{i}".encode()) for i in range(n)]


def contents(log: FileLog, partition: int = 0) -> list[Entry]:
    return [(e.offset, e.key, e.value) for e in LogReader(log, partition, 0)]


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.log"))


def head_file(path: Path) -> Path:
    return path / "head"


class StoredFrame(NamedTuple):
    segment: Path
    pos: int
    end: int
    partition: int
    base_offset: int
    timestamp_ms: int
    records: list[tuple[str, bytes]]


def stored_frames(path: Path, partitions: int) -> list[StoredFrame]:
    """Every frame of every segment, read straight from the files, in log order."""
    found = []
    for segment in segments(path):
        data = segment.read_bytes()
        with open(segment, "rb") as f:
            start, size = segment_header_size(partitions), len(data)
            for frame, _ in frames(f.fileno(), start, size, None, partitions, payloads=False):
                header, records = decode_frame(data[frame.pos : frame.end], partitions)
                assert header.partition == frame.partition
                found.append(
                    StoredFrame(
                        segment,
                        frame.pos,
                        frame.end,
                        frame.partition,
                        frame.base_offset,
                        frame.timestamp_ms,
                        records,
                    )
                )
    return found


def segment_starts(segment: Path, partitions: int) -> tuple[int, ...]:
    data = segment.read_bytes()[: segment_header_size(partitions)]
    header = decode_segment_header(data, partitions)
    assert header is not None
    assert header[0] == int(segment.stem)
    return header[1]


def ticking_clock(start: int = 1_700_000_000_000) -> Callable[[], int]:
    """A clock that moves 1 ms per call, so every group commit has its own timestamp."""
    return count(start).__next__


@contextmanager
def copy_of(original: Path) -> Iterator[Path]:
    """A throwaway copy of the log at ``original`` (for loops and hypothesis examples)."""
    with tempfile.TemporaryDirectory(prefix="mercato-log-") as directory:
        shutil.copytree(original, Path(directory) / "log")
        yield Path(directory) / "log"


# -- layout -----------------------------------------------------------------------------------


def test_on_disk_layout(tmp_path: Path) -> None:
    path = tmp_path / "log"
    p = partition_for("merchant-1", 2)
    with FileLog(path, config(partitions=2), clock=lambda: 1_700_000_000_000) as log:
        log.append([Record("merchant-1", b"hello"), Record("merchant-4", b"x")])
        log.append([Record("merchant-1", b"again")])
        ends = (log.end_offset(0), log.end_offset(1))
    assert p != partition_for("merchant-4", 2)
    assert json.loads((path / "meta.json").read_text()) == {"format": 2, "partitions": 2}
    assert sorted(child.name for child in path.iterdir()) == [
        "00000000000000000000.log",
        "head",
        "meta.json",
    ]
    [segment] = segments(path)
    data = segment.read_bytes()
    assert decode_segment_header(data[: segment_header_size(2)], 2) == (0, (0, 0))
    stored = stored_frames(path, 2)
    first_append = sorted(  # an append's frames are in partition order
        [(p, 0, [("merchant-1", b"hello")]), (1 - p, 0, [("merchant-4", b"x")])]
    )
    assert [(f.partition, f.base_offset, f.records) for f in stored] == [
        *first_append,
        (p, 1, [("merchant-1", b"again")]),
    ]
    assert {f.timestamp_ms for f in stored} == {1_700_000_000_000}
    assert stored[-1].end == len(data)
    head = decode_head(head_file(path).read_bytes(), 2)
    assert len(head_file(path).read_bytes()) == head_size(2)
    assert head is not None
    assert (head.segment, head.end, head.next_offsets) == (0, len(data), ends)
    assert ends[p] == 2


# -- crash recovery ---------------------------------------------------------------------------


class TornLog(NamedTuple):
    path: Path
    head_before: Path  # the head file as it was before the last append
    kept: list[list[Entry]]  # every partition's records before the last append
    start: int  # where the last append's only frame starts in the active segment
    end: int


@pytest.fixture(scope="module")
def torn_log(tmp_path_factory: pytest.TempPathFactory) -> TornLog:
    """A 3-partition log of appends over every partition, then one append to one partition."""
    root = tmp_path_factory.mktemp("torn")
    path = root / "log"
    with FileLog(path, config(partitions=3)) as log:
        for i in range(4):
            log.append(spread(f"a{i}", n=4 + 3 * i))
        kept = [contents(log, p) for p in range(3)]
        assert all(kept)
        [active] = segments(path)
        start = active.stat().st_size
        shutil.copy(head_file(path), root / "head.before")
        log.append(batch("last", n=3))
        end = active.stat().st_size
    last = stored_frames(path, 3)[-1]
    assert (last.pos, last.end) == (start, end)  # the last group is this one frame
    return TornLog(path, root / "head.before", kept, start, end)


@pytest.mark.parametrize("head", ["before-last-append", "claims-last-append"])
def test_torn_last_frame_is_cut_at_every_byte(torn_log: TornLog, head: str) -> None:
    p = partition_for("merchant-1", 3)
    kept = torn_log.kept
    assert torn_log.end - torn_log.start > FRAME_HEADER_SIZE
    for k in range(torn_log.end - torn_log.start):
        with copy_of(torn_log.path) as path:
            [active] = segments(path)
            with open(active, "r+b") as f:
                f.truncate(torn_log.start + k)
            if head == "before-last-append":
                shutil.copy(torn_log.head_before, head_file(path))
            with FileLog(path, config(partitions=3)) as log:
                assert [contents(log, q) for q in range(3)] == kept, f"torn at byte {k}"
                assert [log.end_offset(q) for q in range(3)] == [len(e) for e in kept]
                assert active.stat().st_size == torn_log.start
                n = len(kept[p])
                positions = log.append(batch("next", n=2))
                assert positions == [Position(p, n), Position(p, n + 1)]
                assert contents(log, p) == [
                    *kept[p],
                    (n, "merchant-1", b"next-0"),
                    (n + 1, "merchant-1", b"next-1"),
                ]
                assert [contents(log, q) for q in range(3) if q != p] == [
                    kept[q] for q in range(3) if q != p
                ]
                assert log.verify() == []


def test_complete_frames_after_a_stale_head_are_adopted_and_made_durable(
    torn_log: TornLog, tmp_path: Path
) -> None:
    path = tmp_path / "log"
    shutil.copytree(torn_log.path, path)
    shutil.copy(torn_log.head_before, head_file(path))  # the writer died before its head
    synced: list[int] = []
    with FileLog(path, config(partitions=3, fsync=True), fsync=synced.append) as log:
        assert synced  # the dead writer may not have fsync'd what readers now see
        p = partition_for("merchant-1", 3)
        values = [value for _, _, value in contents(log, p)]
        assert values[-3:] == [b"last-0", b"last-1", b"last-2"]
        assert log.end_offset(p) == len(torn_log.kept[p]) + 3
        assert log.verify() == []


def test_missing_head_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with FileLog(path, config(partitions=3, segment_bytes=4096)) as log:
        for i in range(60):
            log.append(spread(f"b{i}", n=6, keys=5))
        before = [contents(log, p) for p in range(3)]
        head = head_file(path).read_bytes()
    assert len(segments(path)) > 2
    head_file(path).unlink()
    with FileLog(path, config(partitions=3, segment_bytes=4096)) as log:
        assert [contents(log, p) for p in range(3)] == before
        assert head_file(path).read_bytes() == head
        assert log.verify() == []


def test_opening_without_a_head_checks_the_previous_segment(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with FileLog(path, config(2, segment_bytes=4096)) as log:
        while len(segments(path)) < 3:
            log.append(spread("p" * 100, n=4))
    previous = segments(path)[-2]
    last = [f for f in stored_frames(path, 2) if f.segment == previous][-1]
    with open(previous, "r+b") as f:  # its last frame lost: records missing mid-log
        f.truncate(last.pos)
    head_file(path).unlink()
    with pytest.raises(LogCorruptionError, match=f"{previous.name} ends at offsets"):
        FileLog(path, config(2))


def test_bytes_past_the_head_are_never_read(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with FileLog(path, config(2)) as writer, FileLog(path, config(2)) as reader:
        p = writer.append(batch("durable"))[0].partition
        assert reader.end_offset(p) == 3
        [active] = segments(path)
        with open(active, "ab") as f:  # a writer in the middle of its group commit
            f.write(encode_frame(p, 3, 1, [("merchant-1", b"not yet durable")]))
        # ... and one that rolled to a new segment and is writing its first group
        starts = [writer.end_offset(q) for q in range(2)]
        header = encode_segment_header(1, starts)
        frame = encode_frame(p, 3, 1, [("merchant-1", b"not durable either")])
        (path / "00000000000000000001.log").write_bytes(header + frame)
        for log in (reader, writer):
            assert [v for _, _, v in contents(log, p)] == [b"durable-0", b"durable-1", b"durable-2"]
            assert log.read(p, 3) == []
            assert log.end_offset(p) == 3
            assert [s.end_offset for s in log.stats()] == starts


def test_a_read_never_goes_past_the_head_it_started_from(tmp_path: Path) -> None:
    """A thread that read the head before a roll must not see what the new segment holds,
    even when another thread of the same object has indexed that segment meanwhile."""
    path = tmp_path / "log"
    with FileLog(path, config(2, segment_bytes=4096)) as writer, FileLog(path, config(2)) as reader:
        while len(segments(path)) < 2:
            writer.append(spread("x" * 100, n=4))
        early = head_file(path).read_bytes()
        ends = [writer.end_offset(p) for p in range(2)]
        while len(segments(path)) < 3:
            writer.append(spread("y" * 100, n=4))
        full = [contents(reader, p) for p in range(2)]  # indexes every segment
        head_file(path).write_bytes(early)  # what the earlier thread still works from
        for p in range(2):
            assert contents(reader, p) == full[p][: ends[p]]
            assert reader.read(p, ends[p]) == []


# -- corruption -------------------------------------------------------------------------------


class HealthyLog(NamedTuple):
    path: Path
    contents: list[list[Entry]]
    damageable: list[StoredFrame]  # frames before the last group commit


@pytest.fixture(scope="module")
def healthy_log(tmp_path_factory: pytest.TempPathFactory) -> HealthyLog:
    """A one-segment log of 3 partitions whose group commits hold frames of several."""
    path = tmp_path_factory.mktemp("healthy") / "log"
    with FileLog(path, config(partitions=3), clock=ticking_clock()) as log:
        for i in range(5):
            log.append(spread(f"f{i}", n=3 + 2 * i, keys=4))
        everything = [contents(log, p) for p in range(3)]
    stored = stored_frames(path, 3)
    last_stamp = stored[-1].timestamp_ms
    damageable = [f for f in stored if f.timestamp_ms != last_stamp]
    assert len(segments(path)) == 1
    assert {f.partition for f in damageable} == {0, 1, 2}
    assert len(damageable) < len(stored)
    return HealthyLog(path, everything, damageable)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_flipped_bit_in_an_acknowledged_frame_is_refused(
    healthy_log: HealthyLog, data: st.DataObject
) -> None:
    frame = data.draw(st.sampled_from(healthy_log.damageable), label="frame")
    byte = data.draw(st.integers(min_value=frame.pos, max_value=frame.end - 1), label="byte")
    bit = data.draw(st.integers(min_value=0, max_value=7), label="bit")
    with copy_of(healthy_log.path) as path:
        [segment] = segments(path)
        with open(segment, "r+b") as f:
            f.seek(byte)
            flipped = f.read(1)[0] ^ (1 << bit)
            f.seek(byte)
            f.write(bytes([flipped]))
        with FileLog(path, config(partitions=3)) as log:
            with pytest.raises(LogCorruptionError, match=segment.name):
                contents(log, frame.partition)
            for p in range(3):  # other partitions: their own records, or an error
                with suppress(LogCorruptionError):
                    assert contents(log, p) == healthy_log.contents[p]
            problems = log.verify()
            assert problems
            assert segment.name in problems[0]
        head_file(path).unlink()
        with pytest.raises(LogCorruptionError, match="followed by valid data"):
            FileLog(path, config(partitions=3))


def test_frame_with_a_valid_checksum_but_a_wrong_offset_is_refused(
    healthy_log: HealthyLog, tmp_path: Path
) -> None:
    path = tmp_path / "log"
    shutil.copytree(healthy_log.path, path)
    [segment] = segments(path)
    data = segment.read_bytes()
    victim = next(f for f in healthy_log.damageable if f.base_offset > 0)
    forged = encode_frame(
        victim.partition, victim.base_offset + 1, victim.timestamp_ms, victim.records
    )
    assert len(forged) == victim.end - victim.pos
    segment.write_bytes(data[: victim.pos] + forged + data[victim.end :])
    expected = f"expected {victim.base_offset}"
    with FileLog(path, config(partitions=3)) as log:
        with pytest.raises(LogCorruptionError, match=expected):
            contents(log, victim.partition)
        assert expected in log.verify()[0]
    head_file(path).unlink()
    with pytest.raises(LogCorruptionError, match="refusing to open"):
        FileLog(path, config(partitions=3))


def test_damaged_segment_header_is_refused(healthy_log: HealthyLog, tmp_path: Path) -> None:
    path = tmp_path / "log"
    shutil.copytree(healthy_log.path, path)
    [segment] = segments(path)
    data = bytearray(segment.read_bytes())
    data[segment_header_size(3) - 1] ^= 0x04  # the last partition's start offset
    segment.write_bytes(bytes(data))
    with FileLog(path, config(partitions=3)) as log:
        for p in range(3):
            with pytest.raises(LogCorruptionError, match="invalid segment header"):
                log.read(p, 0)
        assert "invalid segment header" in log.verify()[0]
    head_file(path).unlink()
    with pytest.raises(LogCorruptionError, match="invalid segment header"):
        FileLog(path, config(partitions=3))


def test_healthy_log_verifies_clean(healthy_log: HealthyLog, tmp_path: Path) -> None:
    path = tmp_path / "log"
    shutil.copytree(healthy_log.path, path)
    with FileLog(path, config(partitions=3)) as log:
        assert log.verify() == []
        assert [contents(log, p) for p in range(3)] == healthy_log.contents
    head_file(path).unlink()
    with FileLog(path, config(partitions=3)) as log:
        assert [contents(log, p) for p in range(3)] == healthy_log.contents


# -- concurrency ------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from mercato.config import LogConfig
    from mercato.log.base import Record
    from mercato.log.file import FileLog

    path, name, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    landed = []
    with FileLog(path, LogConfig(partitions=3, segment_bytes=64 * 1024)) as log:
        (path.parent / f"ready-{name}").touch()
        while not (path.parent / "go").exists():
            time.sleep(0.001)
        for b in range(200):
            records = [Record(f"m{i % 7}", f"{name}:{b}:{i}".encode()) for i in range(50)]
            for record, pos in zip(records, log.append(records)):
                landed.append([record.value.decode(), pos.partition, pos.offset])
    Path(out).write_text(json.dumps(landed))
    """
)


def test_appends_from_two_processes(tmp_path: Path) -> None:
    path = tmp_path / "log"
    FileLog(path, config(partitions=3)).close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), name, str(tmp_path / f"{name}.json")],
            env=env,
        )
        for name in ("p1", "p2")
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{name}").exists() for name in ("p1", "p2")):
        assert all(writer.poll() is None for writer in writers)
        assert time.monotonic() < deadline
        time.sleep(0.005)
    (tmp_path / "go").touch()
    assert [writer.wait(timeout=240) for writer in writers] == [0, 0]
    landed = {
        value: (p, offset)
        for name in ("p1", "p2")
        for value, p, offset in json.loads((tmp_path / f"{name}.json").read_text())
    }
    assert len(landed) == 2 * 200 * 50
    assert len(segments(path)) > 1
    with FileLog(path, config(partitions=3)) as log:
        assert log.verify() == []
        stored: list[tuple[str, tuple[int, int]]] = []
        for p in range(3):
            entries = contents(log, p)
            assert [offset for offset, _, _ in entries] == list(range(len(entries)))
            for offset, key, value in entries:
                assert key == f"m{int(value.split(b':')[2]) % 7}"
                stored.append((value.decode(), (p, offset)))
    assert len(stored) == len(landed)  # nothing duplicated
    assert dict(stored) == landed  # nothing lost, each record where its append said
    log_order = [f.records[0][1].split(b":")[0] for f in stored_frames(path, 3)]
    assert sum(a != b for a, b in pairwise(log_order)) > 10  # the writers really interleaved
    for name in ("p1", "p2"):
        for k in range(7):
            sent = sorted(
                (tuple(map(int, value.split(":")[1:])), offset)
                for value, (_, offset) in landed.items()
                if value.startswith(f"{name}:") and int(value.split(":")[2]) % 7 == k
            )
            offsets = [offset for _, offset in sent]
            assert offsets == sorted(offsets)  # one process's records of a key keep their order


def test_group_commit_batches_fsyncs(tmp_path: Path) -> None:
    calls = []
    lock = threading.Lock()

    def counting_fsync(fd: int) -> None:
        with lock:
            calls.append(fd)
        time.sleep(0.002)  # a disk's flush; appends arriving meanwhile join the next group
        os.fdatasync(fd)

    threads, appends_each = 16, 15
    results: list[Sequence[Position]] = []
    with FileLog(tmp_path / "log", config(4, fsync=True), fsync=counting_fsync) as log:

        def work(t: int) -> None:
            for i in range(appends_each):
                positions = log.append(batch(f"t{t}-{i}", n=8, key=f"k{(t + i) % 5}"))
                with lock:
                    results.append(positions)

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        everything = [pos for positions in results for pos in positions]
        assert len(everything) == len(set(everything)) == threads * appends_each * 8
        for p in range(4):
            offsets = sorted(pos.offset for pos in everything if pos.partition == p)
            assert offsets == list(range(log.end_offset(p)))
        assert 0 < len(calls) < threads * appends_each
        assert log.verify() == []


def test_submits_from_one_thread_are_committed_in_groups(tmp_path: Path) -> None:
    calls = []

    def slow_fsync(fd: int) -> None:
        calls.append(fd)
        time.sleep(0.002)
        os.fdatasync(fd)

    with FileLog(tmp_path / "log", config(2, fsync=True), fsync=slow_fsync) as log:
        futures = [log.submit(batch(f"s{i}", n=2, key=f"k{i % 4}")) for i in range(200)]
        positions = [pos for future in futures for pos in future.result(timeout=60)]
        assert sorted(positions, key=lambda pos: (pos.partition, pos.offset)) == [
            Position(p, offset) for p in range(2) for offset in range(log.end_offset(p))
        ]
        assert len(calls) < 200


def test_cancelled_submit_is_not_written(tmp_path: Path) -> None:
    entered, gate = threading.Event(), threading.Event()

    def gated_fsync(fd: int) -> None:
        entered.set()
        assert gate.wait(timeout=60)
        os.fdatasync(fd)

    FileLog(tmp_path / "log", config()).close()  # opening a new log fsyncs its first segment
    with FileLog(tmp_path / "log", config(fsync=True), fsync=gated_fsync) as log:
        first = log.submit(batch("first", n=2))
        assert entered.wait(timeout=60)
        second = log.submit(batch("second", n=2))
        assert second.cancel()
        gate.set()
        assert [pos.offset for pos in first.result(timeout=60)] == [0, 1]
        assert [pos.offset for pos in log.append(batch("third", n=1))] == [2]
        assert [v for _, _, v in contents(log)] == [b"first-0", b"first-1", b"third-0"]


# -- write failures ---------------------------------------------------------------------------


class FailingFsync:
    """fsync that raises ``error`` on its ``skip + 1``-th call once armed."""

    def __init__(self) -> None:
        self.error: OSError | None = None
        self.skip = 0

    def arm(self, code: int, skip: int = 0) -> None:
        self.error, self.skip = OSError(code, os.strerror(code)), skip

    def __call__(self, fd: int) -> None:
        if self.error is not None:
            if self.skip == 0:
                error, self.error = self.error, None
                raise error
            self.skip -= 1
        os.fdatasync(fd)


def test_failed_fsync_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "log"
    fsync = FailingFsync()
    with FileLog(path, config(2, fsync=True), fsync=fsync) as log, FileLog(path, config(2)) as peer:
        first = log.append([Record(f"k{i}", b"one") for i in range(10)])
        [active] = segments(path)
        size, head = active.stat().st_size, head_file(path).read_bytes()
        ends = [log.end_offset(p) for p in range(2)]
        assert all(ends)
        fsync.arm(errno.ENOSPC)
        with pytest.raises(LogWriteError, match="No space left on device"):
            log.append([Record(f"k{i}", b"two") for i in range(10)])
        fsync.arm(errno.ENOSPC)
        failed = log.submit([Record(f"k{i}", b"two") for i in range(10)]).exception(timeout=60)
        assert isinstance(failed, LogWriteError)
        assert segments(path) == [active]
        assert active.stat().st_size == size
        assert head_file(path).read_bytes() == head
        for reader in (log, peer):
            assert [reader.end_offset(p) for p in range(2)] == ends
            values = {v for p in range(2) for _, _, v in contents(reader, p)}
            assert values == {b"one"}
        third = log.append([Record(f"k{i}", b"three") for i in range(10)])
        for p in range(2):
            offsets = [pos.offset for pos in [*first, *third] if pos.partition == p]
            assert sorted(offsets) == list(range(ends[p] * 2))
            assert [v for _, _, v in contents(peer, p)] == [b"one"] * ends[p] + [b"three"] * ends[p]
        assert log.verify() == []


@pytest.mark.parametrize("failing", ["segment-header", "first-group"])
def test_failed_append_into_a_new_segment_leaves_nothing_behind(
    tmp_path: Path, failing: str
) -> None:
    path = tmp_path / "log"
    fsync = FailingFsync()
    with FileLog(path, config(2, fsync=True, segment_bytes=4096), fsync=fsync) as log:
        while len(segments(path)) == 1:
            log.append(spread("x" * 300, n=4))
        while segments(path)[-1].stat().st_size < 4096:
            log.append(spread("y" * 300, n=4))
        files = sorted(path.iterdir())
        head = head_file(path).read_bytes()
        ends = [log.end_offset(p) for p in range(2)]
        # creating the segment fsyncs its header, then the group is fsync'd
        fsync.arm(errno.EIO, skip=0 if failing == "segment-header" else 1)
        with pytest.raises(LogWriteError, match="Input/output error"):
            log.append(spread("z", n=4))
        assert sorted(path.iterdir()) == files
        assert head_file(path).read_bytes() == head
        assert [log.end_offset(p) for p in range(2)] == ends
        positions = log.append(spread("w", n=4))
        for p in range(2):
            offsets = [pos.offset for pos in positions if pos.partition == p]
            assert offsets == list(range(ends[p], ends[p] + len(offsets)))
        assert len(segments(path)) == len(files) - 1  # the new segment, minus head and meta
        assert log.verify() == []


# -- segments and reads across them -----------------------------------------------------------


def test_segments_roll_and_reads_cross_them(tmp_path: Path) -> None:
    path = tmp_path / "log"
    written = []
    with FileLog(path, config(3, segment_bytes=4096), clock=ticking_clock()) as log:
        for i in range(150):
            records = [Record(f"k{j}", f"{i}-{j}-".encode() * 8) for j in range(2, 7)]
            written += list(zip(log.append(records), records, strict=True))
        files = segments(path)
        assert len(files) >= 4
        stored = stored_frames(path, 3)
        group_end = {f.timestamp_ms: f.end for f in stored}  # one group commit per timestamp
        group_start = {f.timestamp_ms: f.pos for f in reversed(stored)}
        next_offsets = [0, 0, 0]
        for f in files:
            assert segment_starts(f, 3) == tuple(next_offsets)  # continues its predecessor
            in_segment = [s for s in stored if s.segment == f]
            for s in in_segment:
                assert s.base_offset == next_offsets[s.partition]
                next_offsets[s.partition] += len(s.records)
            if f != files[-1]:  # full: rolled only once its last group crossed the limit
                last = in_segment[-1].timestamp_ms
                assert group_start[last] < 4096 <= group_end[last] == f.stat().st_size
        assert next_offsets == [log.end_offset(p) for p in range(3)]
        for p in range(3):
            expected = [(pos.offset, r.key, r.value) for pos, r in written if pos.partition == p]
            for max_records in (1, 7, 1000):
                got: list[Entry] = []
                while chunk := log.read(p, len(got), max_records):
                    assert len(chunk) <= max_records
                    got += [(e.offset, e.key, e.value) for e in chunk]
                assert got == expected
            boundaries = {segment_starts(f, 3)[p] for f in files[1:]} - {0, len(expected)}
            assert boundaries
            for start in boundaries:  # random access around each segment boundary
                assert [e.offset for e in log.read(p, start - 1, 2)] == [start - 1, start]
            stats = log.stats()[p]
            assert stats.segments == len({s.segment for s in stored if s.partition == p})
            assert stats.end_offset == len(expected)
            assert stats.size_bytes == sum(s.end - s.pos for s in stored if s.partition == p)
        headers = len(files) * segment_header_size(3)
        assert (
            sum(s.size_bytes or 0 for s in log.stats())
            == sum(f.stat().st_size for f in files) - headers
        )
        assert log.verify() == []


def test_read_spans_interleaved_frames_across_segments(tmp_path: Path) -> None:
    """One partition's many frames, between other partitions' frames, in several segments."""
    path = tmp_path / "log"
    expected: list[list[Entry]] = [[] for _ in range(4)]
    with FileLog(path, config(4, segment_bytes=4096)) as log, FileLog(path, config(4)) as other:
        for i in range(120):
            # a few records of "merchant-1", many of other keys, in varying proportion
            records = [Record("merchant-1", f"{i}-{j}".encode()) for j in range(1 + i % 3)]
            records += spread(f"o{i}", n=i % 9, keys=11)
            for pos, record in zip(log.append(records), records, strict=True):
                expected[pos.partition].append((pos.offset, record.key, record.value))
            if i % 17 == 0:  # indexes that grow while the log does
                assert (
                    contents(other, partition_for("merchant-1", 4))
                    == expected[partition_for("merchant-1", 4)]
                )
        p = partition_for("merchant-1", 4)
        stored = stored_frames(path, 4)
        mine = [f for f in stored if f.partition == p]
        assert len(mine) >= 100
        assert len({f.segment for f in mine}) >= 3
        assert sum(a.partition != b.partition for a, b in pairwise(stored)) > 100
        with FileLog(path, config(4)) as fresh:
            for reader in (log, other, fresh):
                for q in range(4):
                    assert contents(reader, q) == expected[q]
                for offset in range(0, len(expected[p]), 5):
                    for max_records in (1, 2, 13, 10_000):
                        got = [
                            (e.offset, e.key, e.value) for e in reader.read(p, offset, max_records)
                        ]
                        assert got == expected[p][offset : offset + max_records]


# -- layout and sharing -----------------------------------------------------------------------


def test_partition_count_mismatch_is_refused(tmp_path: Path) -> None:
    FileLog(tmp_path / "log", config(partitions=4)).close()
    with pytest.raises(LogLayoutError, match=r"has 4 partitions.*asks for 8"):
        FileLog(tmp_path / "log", config(partitions=8))
    with FileLog(tmp_path / "log", config(partitions=4)) as log:
        assert log.partitions == 4


def test_second_instance_sees_new_appends_without_reopening(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with FileLog(path, config(2)) as writer, FileLog(path, config(2)) as reader:
        p = writer.append([Record("merchant-9", b"1")])[0].partition
        assert [v for _, _, v in contents(reader, p)] == [b"1"]
        writer.append([Record("merchant-9", b"2")])
        assert reader.end_offset(p) == 2
        assert [e.value for e in reader.read(p, 1)] == [b"2"]
        assert reader.append([Record("merchant-9", b"3")]) == [Position(p, 2)]
        assert [v for _, _, v in contents(writer, p)] == [b"1", b"2", b"3"]


READER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mercato.config import LogConfig
    from mercato.log.base import LogReader
    from mercato.log.file import FileLog

    path, partition = Path(sys.argv[1]), int(sys.argv[2])
    with FileLog(path, LogConfig(partitions=2, fsync=False)) as log:
        reader = LogReader(log, partition, 0, poll_interval=0.005)
        print("ready", flush=True)
        while True:
            for entry in reader.poll(timeout=60):
                print(entry.offset, entry.value.decode(), flush=True)
                if entry.value == b"stop":
                    sys.exit(0)
    """
)


def test_reader_in_another_process_sees_new_appends(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with FileLog(path, config(2)) as log:
        p = log.append([Record("merchant-9", b"before")])[0].partition
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-c", READER, str(path), str(p)]
        with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as child:
            watchdog = threading.Timer(60, child.kill)  # a reader that never sees "stop"
            watchdog.start()
            try:
                assert child.stdout is not None
                assert child.stdout.readline() == "ready\n"
                assert child.stdout.readline() == "0 before\n"
                for value in ("one", "two", "stop"):
                    log.append([Record("merchant-9", value.encode())])
                rest = child.stdout.read()
            finally:
                watchdog.cancel()
            assert child.wait(timeout=60) == 0
    assert rest == "1 one\n2 two\n3 stop\n"


def test_closed_log_refuses_work(tmp_path: Path) -> None:
    log = FileLog(tmp_path / "log", config())
    log.close()
    log.close()
    with pytest.raises(Exception, match="closed"):
        log.append(batch("late"))
    with pytest.raises(Exception, match="closed"):
        log.read(0, 0)
