"""The file log: on-disk format, crash recovery, corruption, concurrency, segments, retention."""

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercato.config import LogConfig
from mercato.log.base import LogReader, Position, Record, partition_for
from mercato.log.errors import (
    LogCorruptionError,
    LogLayoutError,
    LogWriteError,
    OffsetOutOfRangeError,
)
from mercato.log.file import HEAD_SIZE, HEADER_SIZE, FileLog, decode_frame, encode_frame

ROOT = Path(__file__).resolve().parents[2]


def config(partitions: int = 1, **options: object) -> LogConfig:
    return LogConfig(partitions=partitions, **{"fsync": False, **options})  # type: ignore[arg-type]


def batch(tag: str, n: int = 3, key: str = "merchant-1") -> list[Record]:
    return [Record(key, f"{tag}-{i}".encode()) for i in range(n)]


def contents(log: FileLog, partition: int = 0) -> list[tuple[int, str, bytes]]:
    return [(e.offset, e.key, e.value) for e in LogReader(log, partition, 0)]


def segments(path: Path, partition: int = 0) -> list[Path]:
    return sorted((path / f"partition-{partition:04d}").glob("*.log"))


def head_file(path: Path, partition: int = 0) -> Path:
    return path / f"partition-{partition:04d}" / "head"


@contextmanager
def copy_of(original: Path) -> Iterator[Path]:
    """A throwaway copy of the log at ``original`` (for loops and hypothesis examples)."""
    with tempfile.TemporaryDirectory(prefix="mercato-log-") as directory:
        shutil.copytree(original, Path(directory) / "log")
        yield Path(directory) / "log"


# -- frames -----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    base=st.integers(min_value=0, max_value=2**64 - 1),
    stamp=st.integers(min_value=0, max_value=2**64 - 1),
    items=st.lists(st.tuples(st.text(), st.binary()), min_size=1, max_size=20),
)
def test_frame_round_trip(base: int, stamp: int, items: list[tuple[str, bytes]]) -> None:
    frame = encode_frame(base, stamp, items)
    assert frame[:4] == b"MRC1"
    assert decode_frame(frame) == (base, stamp, items)


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.tuples(st.text(), st.binary()), min_size=1, max_size=5), data=st.data())
def test_any_flipped_bit_in_a_frame_is_detected(
    items: list[tuple[str, bytes]], data: st.DataObject
) -> None:
    frame = bytearray(encode_frame(7, 1234, items))
    byte = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    frame[byte] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    with pytest.raises(LogCorruptionError):
        decode_frame(bytes(frame))


def test_on_disk_layout(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with FileLog(path, config(partitions=2), clock=lambda: 1_700_000_000_000) as log:
        positions = log.append([Record("merchant-1", b"hello")])
    assert json.loads((path / "meta.json").read_text()) == {"format": 1, "partitions": 2}
    p = positions[0].partition
    [segment] = segments(path, p)
    assert segment.name == "00000000000000000000.log"
    data = segment.read_bytes()
    assert decode_frame(data) == (0, 1_700_000_000_000, [("merchant-1", b"hello")])
    assert len(head_file(path, p).read_bytes()) == HEAD_SIZE
    assert segments(path, 1 - p)[0].stat().st_size == 0


# -- crash recovery ---------------------------------------------------------------------------


def build_torn_log(path: Path, appends: int) -> tuple[list[tuple[int, str, bytes]], int, int]:
    """A log of ``appends`` appends to one partition; the head after the last-but-one is saved
    as ``head.before``. Returns the records of all but the last append and the last frame's
    byte range."""
    with FileLog(path, config(partitions=2)) as log:
        for i in range(appends - 1):
            log.append(batch(f"a{i}", n=i + 1))
        p = partition_for("merchant-1", 2)
        kept = contents(log, p)
        start = segments(path, p)[-1].stat().st_size
        shutil.copy(head_file(path, p), path / "head.before")
        log.append(batch("last", n=3))
        end = segments(path, p)[-1].stat().st_size
    return kept, start, end


@pytest.mark.parametrize("head", ["before-last-append", "claims-last-append"])
def test_torn_last_frame_is_cut_at_every_byte(tmp_path: Path, head: str) -> None:
    original = tmp_path / "log"
    kept, start, end = build_torn_log(original, appends=5)
    p = partition_for("merchant-1", 2)
    assert end - start > HEADER_SIZE
    for k in range(end - start):
        with copy_of(original) as path:
            with open(segments(path, p)[-1], "r+b") as f:
                f.truncate(start + k)
            if head == "before-last-append":
                shutil.copy(path / "head.before", head_file(path, p))
            with FileLog(path, config(partitions=2)) as log:
                assert contents(log, p) == kept, f"torn at byte {k}"
                assert log.end_offset(p) == len(kept)
                assert segments(path, p)[-1].stat().st_size == start
                positions = log.append(batch("next", n=2))
                assert [pos.offset for pos in positions] == [len(kept), len(kept) + 1]
                assert contents(log, p)[-3:] == [
                    kept[-1],
                    (len(kept), "merchant-1", b"next-0"),
                    (len(kept) + 1, "merchant-1", b"next-1"),
                ]
                assert log.verify() == []


def test_complete_frames_after_a_stale_head_are_adopted(tmp_path: Path) -> None:
    path = tmp_path / "log"
    build_torn_log(path, appends=4)
    p = partition_for("merchant-1", 2)
    shutil.copy(path / "head.before", head_file(path, p))  # the writer died before its head
    with FileLog(path, config(partitions=2)) as log:
        values = [value for _, _, value in contents(log, p)]
        assert values[-3:] == [b"last-0", b"last-1", b"last-2"]
        assert log.end_offset(p) == 1 + 2 + 3 + 3


def test_missing_head_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with FileLog(path, config(partitions=2, segment_bytes=4096)) as log:
        for i in range(60):
            log.append(batch(f"b{i}", n=4, key=f"k{i % 3}"))
        before = [contents(log, p) for p in range(2)]
    for p in range(2):
        head_file(path, p).unlink()
    with FileLog(path, config(partitions=2, segment_bytes=4096)) as log:
        assert [contents(log, p) for p in range(2)] == before
        assert log.verify() == []


def test_bytes_past_the_head_are_never_read(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with FileLog(path, config()) as writer, FileLog(path, config()) as reader:
        writer.append(batch("durable"))
        assert reader.end_offset(0) == 3
        with open(segments(path)[-1], "ab") as f:  # a writer in the middle of its append
            f.write(encode_frame(3, 1, [("merchant-1", b"not yet durable")]))
        assert [v for _, _, v in contents(reader, 0)] == [b"durable-0", b"durable-1", b"durable-2"]
        assert reader.end_offset(0) == 3


# -- corruption -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def healthy_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A one-partition log of five frames, and the byte where its last frame starts."""
    path = tmp_path_factory.mktemp("healthy") / "log"
    with FileLog(path, config()) as log:
        for i in range(4):
            log.append(batch(f"f{i}", n=2 + i))
        last = segments(path)[0].stat().st_size
        log.append(batch("f4", n=2))
    return path, last


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_flipped_bit_in_an_acknowledged_frame_is_refused(
    healthy_log: tuple[Path, int], data: st.DataObject
) -> None:
    original, last = healthy_log
    byte = data.draw(st.integers(min_value=0, max_value=last - 1), label="byte")
    bit = data.draw(st.integers(min_value=0, max_value=7), label="bit")
    with copy_of(original) as path:
        flip_and_check(path, byte, bit)


def flip_and_check(path: Path, byte: int, bit: int) -> None:
    with open(segments(path)[0], "r+b") as f:
        f.seek(byte)
        flipped = f.read(1)[0] ^ (1 << bit)
        f.seek(byte)
        f.write(bytes([flipped]))
    with FileLog(path, config()) as log:
        with pytest.raises(LogCorruptionError, match=segments(path)[0].name):
            contents(log, 0)
        problems = log.verify()
        assert problems
        assert segments(path)[0].name in problems[0]
    head_file(path).unlink()
    with pytest.raises(LogCorruptionError, match="followed by valid data"):
        FileLog(path, config())


def test_healthy_log_verifies_clean(healthy_log: tuple[Path, int], tmp_path: Path) -> None:
    path = tmp_path / "log"
    shutil.copytree(healthy_log[0], path)
    with FileLog(path, config()) as log:
        assert log.verify() == []
        assert len(contents(log)) == 2 + 3 + 4 + 5 + 2


# -- concurrency ------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from mercato.config import LogConfig
    from mercato.log.base import Record
    from mercato.log.file import FileLog

    path, name, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    landed = []
    with FileLog(path, LogConfig(partitions=3, segment_bytes=64 * 1024)) as log:
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
    assert [writer.wait(timeout=240) for writer in writers] == [0, 0]
    landed = {
        value: (p, offset)
        for name in ("p1", "p2")
        for value, p, offset in json.loads((tmp_path / f"{name}.json").read_text())
    }
    assert len(landed) == 2 * 200 * 50
    with FileLog(path, config(partitions=3)) as log:
        assert log.verify() == []
        stored = {}
        for p in range(3):
            entries = contents(log, p)
            assert [offset for offset, _, _ in entries] == list(range(len(entries)))
            for offset, key, value in entries:
                assert key == f"m{int(value.split(b':')[2]) % 7}"
                stored[value.decode()] = (p, offset)
        assert stored == landed  # nothing lost, nothing duplicated, each where append said
    for name in ("p1", "p2"):
        for key in range(7):
            mine = [
                offset
                for value, (_, offset) in sorted(
                    landed.items(), key=lambda kv: tuple(map(int, kv[0].split(":")[1:]))
                )
                if value.startswith(f"{name}:") and int(value.split(":")[2]) % 7 == key
            ]
            assert mine == sorted(mine)


def test_group_commit_batches_fsyncs(tmp_path: Path) -> None:
    calls = []
    lock = threading.Lock()

    def counting_fsync(fd: int) -> None:
        with lock:
            calls.append(fd)
        time.sleep(0.002)  # a disk's flush; appends arriving meanwhile join the next group
        os.fdatasync(fd)

    threads, appends_each = 16, 15
    results: list[list[Position]] = []
    with FileLog(path := tmp_path / "log", config(4, fsync=True), fsync=counting_fsync) as log:

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
    assert path.exists()


# -- write failures ---------------------------------------------------------------------------


class FailingFsync:
    """fsync that raises ``error`` once it is armed."""

    def __init__(self) -> None:
        self.error: OSError | None = None

    def __call__(self, fd: int) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        os.fdatasync(fd)


def test_failed_fsync_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "log"
    fsync = FailingFsync()
    with FileLog(path, config(2, fsync=True), fsync=fsync) as log, FileLog(path, config(2)) as peer:
        first = log.append([Record(f"k{i}", b"one") for i in range(10)])
        sizes = [s.stat().st_size for p in range(2) for s in segments(path, p)]
        ends = [log.end_offset(p) for p in range(2)]
        fsync.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        with pytest.raises(LogWriteError, match="No space left on device"):
            log.append([Record(f"k{i}", b"two") for i in range(10)])
        assert [s.stat().st_size for p in range(2) for s in segments(path, p)] == sizes
        for reader in (log, peer):
            assert [reader.end_offset(p) for p in range(2)] == ends
            values = {v for p in range(2) for _, _, v in contents(reader, p)}
            assert values == {b"one"}
        third = log.append([Record(f"k{i}", b"three") for i in range(10)])
        for p in range(2):
            offsets = [pos.offset for pos in first + third if pos.partition == p]
            assert sorted(offsets) == list(range(ends[p] * 2))
        assert log.verify() == []


def test_failed_append_into_a_new_segment_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "log"
    fsync = FailingFsync()
    with FileLog(path, config(fsync=True, segment_bytes=4096), fsync=fsync) as log:
        while len(segments(path)) == 1:
            log.append(batch("x" * 300, n=4))
        while segments(path)[-1].stat().st_size < 4096:
            log.append(batch("y" * 300, n=4))
        files, end = segments(path), log.end_offset(0)
        fsync.error = OSError(errno.EIO, os.strerror(errno.EIO))
        with pytest.raises(LogWriteError, match="Input/output error"):
            log.append(batch("z"))
        assert segments(path) == files
        assert log.end_offset(0) == end
        assert [pos.offset for pos in log.append(batch("w", n=2))] == [end, end + 1]
        assert len(segments(path)) == len(files) + 1
        assert log.verify() == []


# -- segments and retention -------------------------------------------------------------------


def test_segments_roll_and_reads_cross_them(tmp_path: Path) -> None:
    path = tmp_path / "log"
    written = []
    with FileLog(path, config(partitions=2, segment_bytes=4096)) as log:
        for i in range(150):
            records = [Record(f"k{j}", f"{i}-{j}-".encode() * 8) for j in range(2, 7)]
            written += list(zip(log.append(records), records, strict=True))
        for p in range(2):
            files = segments(path, p)
            assert len(files) >= 4
            bases = [int(f.stem) for f in files]
            for f, base in zip(files, bases, strict=True):
                assert decode_frame_prefix(f)[0] == base
                assert f.stat().st_size < 4096 + 2000
            expected = [(pos.offset, r.key, r.value) for pos, r in written if pos.partition == p]
            for max_records in (1, 7, 1000):
                got = []
                while chunk := log.read(p, len(got), max_records):
                    assert len(chunk) <= max_records
                    got += [(e.offset, e.key, e.value) for e in chunk]
                assert got == expected
            for base in bases[1:]:  # random access around each boundary
                assert [e.offset for e in log.read(p, base - 1, 2)] == [base - 1, base]
            stats = log.stats()[p]
            assert stats.segments == len(files)
            assert stats.end_offset == len(expected)
            assert stats.size_bytes == sum(f.stat().st_size for f in files)
        assert log.verify() == []


def decode_frame_prefix(segment: Path) -> tuple[int, int]:
    """Base offset and record count of a segment's first frame."""
    data = segment.read_bytes()
    length = int.from_bytes(data[8:12], "little")
    base, _, records = decode_frame(data[: HEADER_SIZE + length])
    return base, len(records)


def test_retention_by_age(tmp_path: Path) -> None:
    now = [1_700_000_000_000]
    path = tmp_path / "log"
    stamps: dict[int, int] = {}
    cfg = config(segment_bytes=4096, retention_hours=1)
    with FileLog(path, cfg, clock=lambda: now[0]) as log:
        for i in range(120):
            for pos in log.append(batch("v" * 100 + str(i), n=3)):
                stamps[pos.offset] = now[0]
            now[0] += 60_000
        bases = [int(f.stem) for f in segments(path)]
        ends = [*bases[1:], log.end_offset(0)]
        newest = [stamps[end - 1] for end in ends]
        cutoff = now[0] - 3_600_000
        expected = 0
        while expected < len(bases) - 1 and newest[expected] < cutoff:
            expected += 1
        assert 0 < expected < len(bases) - 1
        assert log.enforce_retention() == expected
        assert [int(f.stem) for f in segments(path)] == bases[expected:]
        assert log.start_offset(0) == bases[expected]
        assert log.stats()[0].start_offset == bases[expected]
        with pytest.raises(OffsetOutOfRangeError):
            log.read(0, 0)
        with pytest.raises(OffsetOutOfRangeError):
            log.read(0, bases[expected] - 1)
        assert log.read(0, bases[expected], 1)[0].offset == bases[expected]
        assert log.enforce_retention() == 0
        # far in the future everything is old, but the active segment stays
        assert log.enforce_retention(now_ms=now[0] + 10 * 3_600_000) == len(bases) - expected - 1
        assert [int(f.stem) for f in segments(path)] == bases[-1:]
        assert [e.offset for e in log.read(0, bases[-1])] == list(range(bases[-1], ends[-1]))
        assert log.append(batch("after", n=1))[0].offset == ends[-1]


def test_retention_by_size(tmp_path: Path) -> None:
    path = tmp_path / "log"
    cfg = config(segment_bytes=4096, retention_hours=0, retention_bytes=3 * 4096)
    with FileLog(path, cfg) as log, FileLog(path, cfg) as reader:
        for i in range(100):
            log.append(batch("s" * 100 + str(i), n=3))
        files = segments(path)
        sizes = [f.stat().st_size for f in files]
        reader.read(0, 0)  # the other instance holds the oldest segment open
        drop = 0
        while drop < len(files) - 1 and sum(sizes[drop:]) > 3 * 4096:
            drop += 1
        assert drop > 0
        assert log.enforce_retention() == drop
        assert segments(path) == files[drop:]
        assert sum(f.stat().st_size for f in segments(path)) <= 3 * 4096
        for instance in (log, reader):
            with pytest.raises(OffsetOutOfRangeError, match="oldest kept offset"):
                instance.read(0, 0)
            assert instance.start_offset(0) == int(files[drop].stem)


def test_retention_off_keeps_everything(tmp_path: Path) -> None:
    cfg = config(segment_bytes=4096, retention_hours=0, retention_bytes=0)
    with FileLog(tmp_path / "log", cfg) as log:
        for i in range(50):
            log.append(batch("k" * 200 + str(i)))
        assert log.enforce_retention(now_ms=2**62) == 0
        assert log.start_offset(0) == 0


# -- layout and sharing -----------------------------------------------------------------------


def test_partition_count_mismatch_is_refused(tmp_path: Path) -> None:
    FileLog(tmp_path / "log", config(partitions=4)).close()
    with pytest.raises(LogLayoutError, match=r"has 4 partitions.*asks for 8"):
        FileLog(tmp_path / "log", config(partitions=8))


def test_second_instance_sees_new_appends_without_reopening(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with FileLog(path, config(2)) as writer, FileLog(path, config(2)) as reader:
        p = writer.append([Record("merchant-9", b"1")])[0].partition
        assert [v for _, _, v in contents(reader, p)] == [b"1"]
        writer.append([Record("merchant-9", b"2")])
        assert reader.end_offset(p) == 2
        assert [e.value for e in reader.read(p, 1)] == [b"2"]


def test_closed_log_refuses_work(tmp_path: Path) -> None:
    log = FileLog(tmp_path / "log", config())
    log.close()
    log.close()
    with pytest.raises(Exception, match="closed"):
        log.append(batch("late"))
    with pytest.raises(Exception, match="closed"):
        log.read(0, 0)
