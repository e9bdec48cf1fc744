"""The file log: per-partition append-only segment files, fsync'd before an append returns.

On-disk format (format 1)
=========================

::

    <path>/
      meta.json                       {"format": 1, "partitions": N}
      partition-0000/
        head                          high watermark of the partition; its writers' lock
        00000000000000000000.log      segments, named by the offset of their first record
        00000000000000041237.log      (20 decimal digits); the newest one is the active one
      partition-0001/
      ...

``meta.json`` is created once, atomically (temporary file, fsync, ``link`` into place so two
processes creating the same log cannot both win, fsync of the directory). Opening a log whose
partition count differs from the configuration raises :class:`LogLayoutError`.

A segment is a sequence of frames, one per partition touched by an ``append``. All integers
are little-endian::

    byte  size  field
       0     4  magic          b"MRC1"
       4     4  header_crc     CRC-32C of bytes 8..36
       8     4  payload_len
      12     4  record_count
      16     8  base_offset    offset of the frame's first record
      24     8  timestamp_ms   wall-clock time of the append (the writer's clock)
      32     4  payload_crc    CRC-32C of the payload
      36     …  payload        msgpack array of [key (str), value (bin)] pairs

Record ``i`` of a frame has offset ``base_offset + i``; frames of a partition are contiguous in
offsets, and the first frame of a segment starts at the segment's base offset.

``head`` is 32 bytes::

    byte  size  field
       0     4  magic          b"MRH1"
       4     8  segment        base offset of the active segment
      12     8  next_offset    the offset the next record will get (the end offset)
      20     8  end            bytes of the active segment that are durable and visible
      28     4  crc            CRC-32C of bytes 0..28

Protocol
--------

Writers take ``flock(LOCK_EX)`` on a partition's ``head`` (partitions in ascending order), write
their frames at ``end``, fsync the segments, and only then ``pwrite`` the new head; the head is
not fsync'd, it is a cache that recovery can rebuild. Readers never read past ``end`` of the
active segment, so they never see data that is not durable. A writer that dies leaves bytes
past ``end``: the next writer (or opener) adopts the complete, checksummed frames and truncates
a torn tail, but refuses (:class:`LogCorruptionError`) when an invalid frame is followed by a
valid one, since that is damage, not a torn write. Appends of many threads are committed in
groups (one write and one fsync per partition per group). Frames already acknowledged are not
rescanned at open; every frame is checksummed when it is read, and :meth:`FileLog.verify` scans
everything.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

import crc32c
import msgspec

from mercato.config import LogConfig
from mercato.log.base import LogEntry, PartitionStats, Position, Record, now_ms, partition_for
from mercato.log.errors import (
    LogCorruptionError,
    LogError,
    LogLayoutError,
    LogWriteError,
    OffsetOutOfRangeError,
)

__all__ = ["FileLog", "decode_frame", "encode_frame"]

FORMAT = 1
MAGIC = b"MRC1"
HEAD_MAGIC = b"MRH1"
_HEADER = struct.Struct("<4sIIIQQI")
_HEAD = struct.Struct("<4sQQQI")
HEADER_SIZE = _HEADER.size
HEAD_SIZE = _HEAD.size
_MAX_PAYLOAD = 2**32 - 1
_READ_AHEAD = 256 * 1024
_INDEX_INTERVAL = 1024 * 1024
_HEAD_READ_ATTEMPTS = 5

_logger = logging.getLogger(__name__)
_DECODER = msgspec.msgpack.Decoder(list[tuple[str, bytes]])
_ENCODER = msgspec.msgpack.Encoder()
_default_fsync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def _crc(data: bytes | memoryview) -> int:
    value: int = crc32c.crc32c(data)
    return value


class _Meta(msgspec.Struct):
    format: int
    partitions: int


class _Head(NamedTuple):
    segment: int
    next_offset: int
    end: int


class _Frame(NamedTuple):
    pos: int
    payload_len: int
    record_count: int
    base_offset: int
    timestamp_ms: int
    payload_crc: int

    @property
    def end(self) -> int:
        return self.pos + HEADER_SIZE + self.payload_len


class _BadFrame(Exception):
    """An invalid frame at byte ``pos``; callers turn it into an error or a truncation."""

    def __init__(self, pos: int, reason: str) -> None:
        super().__init__(f"byte {pos}: {reason}")
        self.pos = pos
        self.reason = reason


def _header(payload_len: int, count: int, base_offset: int, timestamp_ms: int, crc: int) -> bytes:
    body = _HEADER.pack(MAGIC, 0, payload_len, count, base_offset, timestamp_ms, crc)[8:]
    return MAGIC + struct.pack("<I", _crc(body)) + body


def _parse_header(buf: bytes | memoryview, off: int, pos: int) -> _Frame:
    magic, header_crc, *fields = _HEADER.unpack_from(buf, off)
    if magic != MAGIC:
        raise _BadFrame(pos, "bad magic")
    if _crc(buf[off + 8 : off + HEADER_SIZE]) != header_crc:
        raise _BadFrame(pos, "header checksum mismatch")
    return _Frame(pos, *fields)


def _decode_payload(frame: _Frame, payload: bytes | memoryview) -> list[tuple[str, bytes]]:
    try:
        records = _DECODER.decode(payload)
    except msgspec.DecodeError as exc:
        raise _BadFrame(frame.pos, f"payload does not decode: {exc}") from None
    if len(records) != frame.record_count:
        raise _BadFrame(frame.pos, f"{len(records)} records, header says {frame.record_count}")
    return records


def encode_frame(
    base_offset: int, timestamp_ms: int, records: Sequence[tuple[str, bytes]]
) -> bytes:
    """One frame holding ``records`` (key, value pairs), exactly as stored in a segment."""
    payload = _ENCODER.encode(list(records))
    return _header(len(payload), len(records), base_offset, timestamp_ms, _crc(payload)) + payload


def decode_frame(data: bytes) -> tuple[int, int, list[tuple[str, bytes]]]:
    """``(base_offset, timestamp_ms, records)`` of the frame ``data``; raises if it is invalid."""
    try:
        if len(data) < HEADER_SIZE:
            raise _BadFrame(0, "incomplete frame header")
        frame = _parse_header(data, 0, 0)
        if frame.end != len(data):
            raise _BadFrame(0, f"the header says {frame.end} bytes, got {len(data)}")
        payload = memoryview(data)[HEADER_SIZE:]
        if _crc(payload) != frame.payload_crc:
            raise _BadFrame(0, "payload checksum mismatch")
        return frame.base_offset, frame.timestamp_ms, _decode_payload(frame, payload)
    except _BadFrame as bad:
        raise LogCorruptionError(f"invalid frame: {bad}") from None


def _frames(
    fd: int, pos: int, limit: int, expected: int | None, *, payloads: bool
) -> Iterator[tuple[_Frame, memoryview]]:
    """The frames from byte ``pos`` up to ``limit``, checked; payloads too with ``payloads``.

    ``expected`` is the base offset the first frame must have (``None``: any); later frames
    must continue it. Raises :class:`_BadFrame` at the first frame that is invalid or does not
    end by ``limit``. Reads ahead in chunks so that small frames cost no syscall each.
    """
    buf, at, empty = memoryview(b""), pos, memoryview(b"")
    while pos < limit:
        off = pos - at
        if off + HEADER_SIZE > len(buf):
            buf, at, off = memoryview(os.pread(fd, min(_READ_AHEAD, limit - pos), pos)), pos, 0
            if len(buf) < HEADER_SIZE:
                raise _BadFrame(pos, "incomplete frame header")
        frame = _parse_header(buf, off, pos)
        if frame.end > limit:
            raise _BadFrame(pos, "incomplete frame")
        if expected is not None and frame.base_offset != expected:
            raise _BadFrame(pos, f"offset {frame.base_offset}, expected {expected}")
        expected = frame.base_offset + frame.record_count
        payload = empty
        if payloads:
            size = HEADER_SIZE + frame.payload_len
            if off + size > len(buf):
                buf, at, off = memoryview(os.pread(fd, max(size, _READ_AHEAD), pos)), pos, 0
                if len(buf) < size:
                    raise _BadFrame(pos, "incomplete frame")
            payload = buf[off + HEADER_SIZE : off + size]
            if _crc(payload) != frame.payload_crc:
                raise _BadFrame(pos, "payload checksum mismatch")
        yield frame, payload
        pos = frame.end


def _find_valid_frame(fd: int, start: int, size: int) -> int | None:
    """The position of the first valid frame at or after byte ``start``, if there is one."""
    pos = start
    while pos < size:
        chunk = os.pread(fd, min(_READ_AHEAD, size - pos), pos)
        i = chunk.find(MAGIC)
        while i != -1:
            try:
                next(_frames(fd, pos + i, size, None, payloads=True))
                return pos + i
            except (_BadFrame, StopIteration):
                i = chunk.find(MAGIC, i + 1)
        if not chunk or pos + len(chunk) >= size:
            return None
        pos += len(chunk) - (len(MAGIC) - 1)  # a magic split between chunks is found next time
    return None


def _read_head(fd: int) -> _Head | None:
    data = os.pread(fd, HEAD_SIZE, 0)
    if len(data) != HEAD_SIZE:
        return None
    magic, segment, next_offset, end, crc = _HEAD.unpack(data)
    if magic != HEAD_MAGIC or _crc(data[: HEAD_SIZE - 4]) != crc:
        return None
    return _Head(segment, next_offset, end)


def _write_head(fd: int, head: _Head) -> None:
    body = _HEAD.pack(HEAD_MAGIC, *head, 0)[: HEAD_SIZE - 4]
    os.pwrite(fd, body + struct.pack("<I", _crc(body)), 0)


def _pwrite_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, pos)
        if written <= 0:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        view, pos = view[written:], pos + written


def _describe(exc: OSError) -> str:
    if exc.strerror:
        return exc.strerror
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _list_segments(directory: Path) -> list[int]:
    return sorted(
        int(name[:20])
        for name in os.listdir(directory)
        if len(name) == 24 and name.endswith(".log") and name[:20].isdigit()
    )


class _Chunk(NamedTuple):
    """One append's records for one partition: the payload of a frame still without header."""

    payload: bytes
    record_count: int
    crc: int


class _Append:
    """An append waiting for its group commit."""

    __slots__ = ("bases", "chunks", "done", "error")

    def __init__(self, chunks: dict[int, _Chunk]) -> None:
        self.chunks = chunks
        self.bases: dict[int, int] = {}
        self.error: BaseException | None = None
        self.done = False


class _Partition:
    """Open files and caches of one partition.

    ``lock`` (with the ``flock`` on ``head_fd``) guards writing and ``write_fd``; ``read_lock``
    guards the readers' caches and is always taken last.
    """

    def __init__(self, number: int, directory: Path, head_fd: int) -> None:
        self.number = number
        self.dir = directory
        self.head_fd = head_fd
        self.lock = threading.Lock()
        self.write_fd: int | None = None
        self.write_base = -1
        self.read_lock = threading.Lock()
        self.read_fd: int | None = None
        self.read_base = -1
        self.bases: list[int] = []
        self.index: dict[int, tuple[list[int], list[int]]] = {}  # segment -> offsets, positions
        self.cursor = (-1, -1, -1)  # segment, base offset and position of the next frame to read
        self.scanned: dict[int, tuple[int, int | None]] = {}  # segment -> position, newest time

    def segment_path(self, base: int) -> Path:
        return self.dir / f"{base:020d}.log"

    def refresh(self) -> list[int]:
        self.bases = _list_segments(self.dir)
        for cache in (self.index, self.scanned):
            for base in set(cache).difference(self.bases):
                del cache[base]
        return self.bases

    def close(self) -> None:
        for fd in (self.write_fd, self.read_fd, self.head_fd):
            if fd is not None:
                os.close(fd)
        self.write_fd = self.read_fd = None


class FileLog:
    """A :class:`~mercato.log.base.Log` kept in segment files under ``path``.

    Several processes may open the same directory: appends are serialized per partition by a
    file lock, and readers see other processes' appends without reopening. ``clock`` stamps
    frames (ms); ``fsync`` makes a segment's data durable (``os.fdatasync``).
    """

    def __init__(
        self,
        path: Path,
        config: LogConfig,
        *,
        clock: Callable[[], int] = now_ms,
        fsync: Callable[[int], None] = _default_fsync,
    ) -> None:
        self._path = Path(path)
        self._config = config
        self._clock = clock
        self._fsync = fsync
        self._cond = threading.Condition()
        self._queue: list[_Append] = []
        self._writing = False
        self._closed = False
        self._parts: list[_Partition] = []
        self._path.mkdir(parents=True, exist_ok=True)
        self._partitions = self._load_meta()
        try:
            for number in range(self._partitions):
                self._parts.append(self._open_partition(number))
        except BaseException:
            for part in self._parts:
                part.close()
            raise

    @property
    def partitions(self) -> int:
        return self._partitions

    @property
    def path(self) -> Path:
        return self._path

    def __enter__(self) -> FileLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- opening --------------------------------------------------------------------------------

    def _load_meta(self) -> int:
        meta_path, wanted = self._path / "meta.json", self._config.partitions
        if not meta_path.exists():
            tmp = self._path / f".meta.json.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "wb") as f:
                f.write(msgspec.json.encode(_Meta(FORMAT, wanted)))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, meta_path)  # unlike rename, never replaces a concurrent creator's
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
            self._sync_dir(self._path, always=True)
        try:
            meta = msgspec.json.decode(meta_path.read_bytes(), type=_Meta)
        except msgspec.DecodeError as exc:
            raise LogLayoutError(f"{meta_path} does not describe a mercato log: {exc}") from None
        if meta.format != FORMAT:
            raise LogLayoutError(f"{meta_path}: unknown log format {meta.format}")
        stray = [
            name
            for name in sorted(os.listdir(self._path))
            if name.startswith("partition-") and int(name[10:] or 0) >= meta.partitions
        ]
        if meta.partitions != wanted or stray:
            raise LogLayoutError(
                f"the log at {self._path} has {meta.partitions} partitions"
                f"{' (and stray ' + ', '.join(stray) + ')' if stray else ''} but the "
                f"configuration asks for {wanted}; the partition count of a log cannot change"
            )
        return meta.partitions

    def _open_partition(self, number: int) -> _Partition:
        directory = self._path / f"partition-{number:04d}"
        if not directory.exists():
            directory.mkdir(exist_ok=True)
            self._sync_dir(self._path)
        head_fd = os.open(directory / "head", os.O_RDWR | os.O_CREAT, 0o644)
        part = _Partition(number, directory, head_fd)
        try:
            with self._locked(part):
                self._recover(part, _read_head(part.head_fd))
        except BaseException:
            part.close()
            raise
        return part

    def _sync_dir(self, directory: Path, *, always: bool = False) -> None:
        if self._config.fsync or always:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    @contextmanager
    def _locked(self, part: _Partition) -> Iterator[None]:
        with part.lock:  # flock excludes other processes; threads of this one share its lock
            fcntl.flock(part.head_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(part.head_fd, fcntl.LOCK_UN)

    # -- recovery (callers hold the partition's lock) -------------------------------------------

    def _open_writer(self, part: _Partition, base: int) -> int:
        if part.write_fd is None or part.write_base != base:
            fd = os.open(part.segment_path(base), os.O_RDWR | os.O_CREAT, 0o644)
            if part.write_fd is not None:
                os.close(part.write_fd)
            part.write_fd, part.write_base = fd, base
        return part.write_fd

    def _writable_head(self, part: _Partition) -> _Head:
        """The head, after dealing with any bytes that a writer which died left behind."""
        head = _read_head(part.head_fd)
        if (
            head is not None
            and part.write_fd is not None
            and part.write_base == head.segment
            and os.fstat(part.write_fd).st_size == head.end
        ):
            return head
        return self._recover(part, head)

    def _recover(self, part: _Partition, head: _Head | None) -> _Head:
        bases = _list_segments(part.dir)
        if not bases:
            if head is not None and head.next_offset > 0:
                raise LogCorruptionError(
                    f"{part.dir}: no segment files, but its head counts {head.next_offset} records"
                )
            bases = [0]
            self._open_writer(part, 0)
            self._sync_dir(part.dir)
        newest = bases[-1]
        fd = self._open_writer(part, newest)
        size = os.fstat(fd).st_size
        if head is not None and head.segment == newest and head.end <= size:
            if head.end == size:
                return head
            start, expected = head.end, head.next_offset
        else:
            if size or len(bases) > 1:
                _logger.warning("%s: head missing or stale; rebuilding it", part.dir)
            if len(bases) > 1:
                self._check_previous(part, bases[-2], newest)
            start, expected = 0, newest
        end, next_offset = self._scan_tail(fd, part.segment_path(newest), start, expected, size)
        recovered = _Head(newest, next_offset, end)
        _write_head(part.head_fd, recovered)
        return recovered

    def _check_previous(self, part: _Partition, base: int, newest: int) -> None:
        path = part.segment_path(base)
        with open(path, "rb") as f:
            expected = base
            try:
                for frame, _ in _frames(
                    f.fileno(), 0, os.fstat(f.fileno()).st_size, base, payloads=False
                ):
                    expected = frame.base_offset + frame.record_count
            except _BadFrame as bad:
                raise LogCorruptionError(f"corrupt frame in {path} at {bad}") from None
        if expected != newest:
            raise LogCorruptionError(
                f"{path} ends at offset {expected}, the next segment at {newest}"
            )

    def _scan_tail(
        self, fd: int, path: Path, pos: int, expected: int, size: int
    ) -> tuple[int, int]:
        """Adopt the valid frames from byte ``pos`` on, cut a torn tail, refuse real damage."""
        end, next_offset = pos, expected
        try:
            for frame, _ in _frames(fd, pos, size, expected, payloads=True):
                end, next_offset = frame.end, frame.base_offset + frame.record_count
        except _BadFrame as bad:
            valid = _find_valid_frame(fd, bad.pos, size)
            if valid is not None:
                raise LogCorruptionError(
                    f"refusing to open: corrupt frame at {path} byte {bad.pos} ({bad.reason}) "
                    f"followed by valid data at byte {valid}; run `mercato log check`"
                ) from None
            _logger.warning("%s: discarding %d bytes of a torn write", path, size - end)
            os.ftruncate(fd, end)
            if self._config.fsync:
                self._fsync(fd)
        return end, next_offset

    # -- appending ------------------------------------------------------------------------------

    def append(self, records: Sequence[Record]) -> list[Position]:
        """Append ``records`` durably; return each record's position, in input order."""
        if not records:
            return []
        routes = [partition_for(record.key, self._partitions) for record in records]
        grouped: dict[int, list[tuple[str, bytes]]] = {}
        for p, record in zip(routes, records, strict=True):
            grouped.setdefault(p, []).append((record.key, record.value))
        chunks: dict[int, _Chunk] = {}
        for p, items in grouped.items():
            payload = _ENCODER.encode(items)
            if len(payload) > _MAX_PAYLOAD:
                raise LogWriteError(f"{len(payload)} bytes for partition {p} do not fit a frame")
            chunks[p] = _Chunk(payload, len(items), _crc(payload))
        pending = _Append(chunks)
        self._submit(pending)
        if (err := pending.error) is not None:
            if isinstance(err, LogCorruptionError):
                raise LogCorruptionError(str(err)) from err
            raise LogWriteError(str(err) if isinstance(err, LogError) else repr(err)) from err
        counters = pending.bases
        positions = []
        for p in routes:
            positions.append(Position(p, counters[p]))
            counters[p] += 1
        return positions

    def _submit(self, pending: _Append) -> None:
        """Wait until ``pending`` is committed, leading a group commit when nobody else is."""
        with self._cond:
            if self._closed:
                raise LogError(f"the log at {self._path} is closed")
            self._queue.append(pending)
            while not pending.done and self._writing:
                self._cond.wait()
            if pending.done:
                return
            self._writing = True
            batch, self._queue = self._queue, []
        interrupted: BaseException | None = None
        try:
            self._commit(batch)
        except BaseException as exc:  # every waiter must wake with an answer
            for waiter in batch:
                waiter.error = exc
            if not isinstance(exc, Exception):
                interrupted = exc
        finally:
            with self._cond:
                for waiter in batch:
                    waiter.done = True
                self._writing = False
                self._cond.notify_all()
        if interrupted is not None:
            raise interrupted

    def _commit(self, batch: list[_Append]) -> None:
        touched = sorted({p for waiter in batch for p in waiter.chunks})
        stamp = self._clock()
        heads: dict[int, _Head] = {}
        fresh: set[int] = set()  # partitions that rolled into a segment created just now
        written: dict[int, int] = {}  # partition -> where its segment ended before this group
        with ExitStack() as locks:
            try:
                for p in touched:
                    part = self._parts[p]
                    locks.enter_context(self._locked(part))
                    heads[p] = self._writable_head(part)
                    if heads[p].end >= self._config.segment_bytes:
                        heads[p] = self._roll(part, heads[p])
                        if heads[p].end == 0:
                            fresh.add(p)
                for p in touched:
                    head, next_offset, pieces = heads[p], heads[p].next_offset, []
                    for waiter in batch:
                        if (chunk := waiter.chunks.get(p)) is not None:
                            waiter.bases[p] = next_offset
                            size, count = len(chunk.payload), chunk.record_count
                            pieces += [
                                _header(size, count, next_offset, stamp, chunk.crc),
                                chunk.payload,
                            ]
                            next_offset += count
                    data = b"".join(pieces)
                    written[p] = head.end
                    _pwrite_all(self._open_writer(self._parts[p], head.segment), data, head.end)
                    heads[p] = _Head(head.segment, next_offset, head.end + len(data))
                if self._config.fsync:
                    for p in touched:
                        self._fsync(self._open_writer(self._parts[p], heads[p].segment))
            except OSError as exc:
                self._undo(written, fresh)
                raise LogWriteError(f"could not append to {self._path}: {_describe(exc)}") from exc
            for p in touched:
                try:
                    _write_head(self._parts[p].head_fd, heads[p])
                except OSError as exc:  # the data is durable: the next writer adopts it
                    _logger.warning("partition %d: head not updated: %s", p, _describe(exc))

    def _roll(self, part: _Partition, head: _Head) -> _Head:
        base = head.next_offset
        fd = self._open_writer(part, base)
        self._sync_dir(part.dir)
        size = os.fstat(fd).st_size
        if size == 0:
            return _Head(base, base, 0)
        # a writer rolled, wrote and died before its head: its complete frames are kept
        end, next_offset = self._scan_tail(fd, part.segment_path(base), 0, base, size)
        return _Head(base, next_offset, end)

    def _undo(self, written: dict[int, int], fresh: set[int]) -> None:
        """Cut the segments of a failed group back, so that nothing of it stays behind."""
        for p, end in written.items():
            try:
                os.ftruncate(self._open_writer(self._parts[p], self._parts[p].write_base), end)
            except OSError as exc:  # the next writer may adopt these frames: a duplicate
                _logger.warning("partition %d: could not truncate: %s", p, _describe(exc))
        for p in fresh:
            part = self._parts[p]
            if part.write_fd is not None:
                os.close(part.write_fd)
                part.write_fd = None
            with suppress(OSError):
                part.segment_path(part.write_base).unlink()

    # -- reading --------------------------------------------------------------------------------

    def _part(self, partition: int) -> _Partition:
        if self._closed:
            raise LogError(f"the log at {self._path} is closed")
        if not 0 <= partition < self._partitions:
            raise ValueError(f"partition {partition} is not in 0..{self._partitions - 1}")
        return self._parts[partition]

    def _visible_head(self, part: _Partition) -> _Head:
        for attempt in range(_HEAD_READ_ATTEMPTS):
            if (head := _read_head(part.head_fd)) is not None:
                return head
            time.sleep(0.001 * attempt)  # a torn read of a head being rewritten
        with self._locked(part):
            return self._writable_head(part)

    def read(self, partition: int, offset: int, max_records: int = 1000) -> list[LogEntry]:
        """Up to ``max_records`` durable records of ``partition`` from ``offset`` on."""
        part = self._part(partition)
        head = self._visible_head(part)
        entries: list[LogEntry] = []
        with part.read_lock:
            while len(entries) < max_records and offset < head.next_offset:
                batch = self._read_segment(part, head, offset, max_records - len(entries))
                if not batch:
                    break
                entries += batch
                offset = batch[-1].offset + 1
        return entries

    def _segment_for(self, part: _Partition, offset: int, head: _Head) -> tuple[int, int]:
        """The segment holding ``offset`` and an open descriptor of it."""
        if not part.bases or part.bases[-1] < head.segment:
            part.refresh()
        for _ in range(2):
            i = bisect.bisect_right(part.bases, offset) - 1
            if i < 0:
                start = part.bases[0] if part.bases else head.next_offset
                raise OffsetOutOfRangeError(part.number, offset, start)
            if part.read_fd is not None and part.read_base != part.bases[i]:
                os.close(part.read_fd)
                part.read_fd = None
            try:
                if part.read_fd is None:
                    part.read_fd = os.open(part.segment_path(part.bases[i]), os.O_RDONLY)
                    part.read_base = part.bases[i]
                if os.fstat(part.read_fd).st_nlink > 0:
                    return part.read_base, part.read_fd
            except FileNotFoundError:
                pass
            part.refresh()  # deleted by retention, perhaps in another process
        raise OffsetOutOfRangeError(part.number, offset, part.bases[0] if part.bases else offset)

    def _read_segment(
        self, part: _Partition, head: _Head, offset: int, max_records: int
    ) -> list[LogEntry]:
        base, fd = self._segment_for(part, offset, head)
        if base > head.segment:
            raise LogCorruptionError(
                f"{part.segment_path(base)} is newer than its partition's head"
            )
        limit = head.end if base == head.segment else os.fstat(fd).st_size
        out: list[LogEntry] = []
        try:
            frame_pos, frame_base = self._locate(part, base, fd, offset, limit)
            for frame, payload in _frames(fd, frame_pos, limit, frame_base, payloads=True):
                records = _decode_payload(frame, payload)
                first = max(offset - frame.base_offset, 0)
                take = records[first : first + max_records - len(out)]
                out += [
                    LogEntry(part.number, frame.base_offset + first + i, frame.timestamp_ms, k, v)
                    for i, (k, v) in enumerate(take)
                ]
                if first + len(take) < frame.record_count:
                    part.cursor = (base, frame.base_offset, frame.pos)
                    break
                part.cursor = (base, frame.base_offset + frame.record_count, frame.end)
                if len(out) >= max_records:
                    break
        except _BadFrame as bad:
            raise LogCorruptionError(
                f"corrupt frame in {part.segment_path(base)} at {bad}"
            ) from None
        return out

    def _locate(
        self, part: _Partition, base: int, fd: int, offset: int, limit: int
    ) -> tuple[int, int]:
        """Position and base offset of the frame holding ``offset`` in segment ``base``."""
        start_offset, start_pos = base, 0
        offsets, positions = part.index.setdefault(base, ([], []))
        if (i := bisect.bisect_right(offsets, offset) - 1) >= 0:
            start_offset, start_pos = offsets[i], positions[i]
        cursor_base, cursor_offset, cursor_pos = part.cursor
        if cursor_base == base and start_offset <= cursor_offset <= offset:
            start_offset, start_pos = cursor_offset, cursor_pos
        for frame, _ in _frames(fd, start_pos, limit, start_offset, payloads=False):
            if offset < frame.base_offset + frame.record_count:
                return frame.pos, frame.base_offset
            if frame.end >= (positions[-1] if positions else 0) + _INDEX_INTERVAL:
                offsets.append(frame.base_offset + frame.record_count)
                positions.append(frame.end)
        raise LogCorruptionError(f"offset {offset} is missing from {part.segment_path(base)}")

    def _newest_timestamp(self, part: _Partition, base: int, limit: int) -> int | None:
        """The time of the last frame before byte ``limit`` of segment ``base``."""
        pos, newest = part.scanned.get(base, (0, None))
        if pos < limit:
            path = part.segment_path(base)
            with open(path, "rb") as f:
                try:
                    for frame, _ in _frames(f.fileno(), pos, limit, None, payloads=False):
                        pos, newest = frame.end, frame.timestamp_ms
                except _BadFrame as bad:
                    raise LogCorruptionError(f"corrupt frame in {path} at {bad}") from None
            part.scanned[base] = (pos, newest)
        return newest

    def start_offset(self, partition: int) -> int:
        """The oldest offset still kept in ``partition``."""
        part = self._part(partition)
        head = self._visible_head(part)
        with part.read_lock:
            bases = part.refresh()
        return bases[0] if bases else head.next_offset

    def end_offset(self, partition: int) -> int:
        """The offset the next record of ``partition`` will get (the high watermark)."""
        return self._visible_head(self._part(partition)).next_offset

    def _segment_sizes(self, part: _Partition, head: _Head) -> dict[int, int]:
        """Segment -> bytes, oldest first, up to the active one (read lock held)."""
        sizes = {}
        for base in part.refresh():
            if base < head.segment:
                with suppress(FileNotFoundError):
                    sizes[base] = part.segment_path(base).stat().st_size
            elif base == head.segment:
                sizes[base] = head.end
        return sizes

    def stats(self) -> list[PartitionStats]:
        """Offsets, bytes, segment counts and frame times of every partition."""
        result = []
        for number in range(self._partitions):
            part = self._part(number)
            head = self._visible_head(part)
            with part.read_lock:
                sizes = self._segment_sizes(part, head)
                oldest = newest = None
                for base, size in sizes.items():
                    if size:
                        with open(part.segment_path(base), "rb") as f:
                            frames = _frames(f.fileno(), 0, size, None, payloads=False)
                            oldest = next(frames)[0].timestamp_ms
                        break
                for base in reversed(sizes):
                    if (newest := self._newest_timestamp(part, base, sizes[base])) is not None:
                        break
            result.append(
                PartitionStats(
                    partition=number,
                    start_offset=next(iter(sizes), head.next_offset),
                    end_offset=head.next_offset,
                    size_bytes=sum(sizes.values()),
                    segments=len(sizes),
                    oldest_timestamp_ms=oldest,
                    newest_timestamp_ms=newest,
                )
            )
        return result

    # -- maintenance ----------------------------------------------------------------------------

    def enforce_retention(self, now_ms: int | None = None) -> int:
        """Delete the oldest segments that are past retention (never the active one).

        A segment goes when its newest frame is older than ``retention_hours``, or while the
        partition holds more than ``retention_bytes`` (0 turns either rule off). Returns how
        many segments were deleted.
        """
        now = self._clock() if now_ms is None else now_ms
        hours, max_bytes = self._config.retention_hours, self._config.retention_bytes
        if hours == 0 and max_bytes == 0:
            return 0
        deleted = 0
        for number in range(self._partitions):
            part = self._part(number)
            with self._locked(part):
                head = self._writable_head(part)
                with part.read_lock:
                    sizes = self._segment_sizes(part, head)
                    total, doomed = sum(sizes.values()), []
                    for base in (b for b in sizes if b < head.segment):
                        newest = self._newest_timestamp(part, base, sizes[base])
                        too_old = hours > 0 and (newest or 0) < now - hours * 3_600_000
                        if not too_old and not (max_bytes > 0 and total > max_bytes):
                            break
                        part.segment_path(base).unlink()
                        doomed.append(base)
                        total -= sizes[base]
                    if doomed:
                        self._sync_dir(part.dir)
                        part.refresh()
                        deleted += len(doomed)
        return deleted

    def verify(self) -> list[str]:
        """Check every frame of every segment; return the problems found (none: healthy)."""
        problems: list[str] = []
        for part in self._parts:
            found = len(problems)
            if (head := _read_head(part.head_fd)) is None:
                problems.append(f"{part.dir / 'head'}: missing or invalid")
            bases = _list_segments(part.dir)
            expected = bases[0] if bases else 0
            for base in bases:
                path = part.segment_path(base)
                if base != expected:
                    problems.append(f"{path}: starts at offset {base}, expected {expected}")
                    expected = base
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    limit = head.end if head is not None and base == head.segment else size
                    try:
                        for frame, payload in _frames(f.fileno(), 0, limit, base, payloads=True):
                            _decode_payload(frame, payload)
                            expected = frame.base_offset + frame.record_count
                    except _BadFrame as bad:
                        problems.append(f"{path}: corrupt frame at {bad}")
            if head is not None and expected != head.next_offset and len(problems) == found:
                problems.append(
                    f"{part.dir}: segments end at {expected}, head at {head.next_offset}"
                )
        return problems

    def close(self) -> None:
        """Finish the appends in flight, then close every file."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            while self._writing or self._queue:
                self._cond.wait()
        for part in self._parts:
            with part.lock, part.read_lock:
                part.close()
