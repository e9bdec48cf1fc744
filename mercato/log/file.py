"""The file log: one append-only write-ahead log shared by all partitions, fsync'd per group.

Layout (format 2; byte formats in :mod:`mercato.log.segment`)::

    <path>/
      meta.json                   {"format": 2, "partitions": N}
      head                        high watermark of every partition; the writers' lock
      00000000000000000000.log    segments, numbered; the newest one is the active one
      00000000000000000001.log

Why one log for all partitions rather than one per partition: durability costs one fsync per
file per group commit, and on ext4 each fsync of a growing file is a journal commit. With
eight partition files a group commit costs eight of them (2 ms and 0.9 ms of CPU here); with
one file it costs one. Partitions stay what consumers see: each has its own dense offsets
and is read on its own; a reader skips other partitions' frames using an index it builds
from the frame headers.

Protocol. Writers take ``flock(LOCK_EX)`` on ``head``, write all frames of a group at the
head's ``end`` in one ``pwrite``, fsync once, and only then ``pwrite`` the new head (not
fsync'd: it is a cache recovery can rebuild). Readers never read past the head's ``end``, so
they never see data that is not durable. A writer that dies leaves bytes past ``end``: the
next writer (or opener) adopts complete, checksummed frames and truncates a torn tail, but
refuses (:class:`LogCorruptionError`) when an invalid frame is followed by a valid one, since
that is damage, not a torn write. A group that fails (disk full) is truncated away before
anyone is told, so a failed append leaves nothing behind. Frames already acknowledged are
not rescanned at open; every frame is checksummed when read, and :meth:`FileLog.verify`
scans everything. Retention deletes whole segments, oldest first, never the active one.
"""

from __future__ import annotations

import bisect
import fcntl
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NamedTuple

import msgspec

from mercato.config import LogConfig
from mercato.log import segment as fmt
from mercato.log.base import (
    LogEntry,
    PartitionStats,
    Position,
    Positions,
    Record,
    now_ms,
    partition_for,
)
from mercato.log.errors import (
    BadFrame,
    LogCorruptionError,
    LogError,
    LogLayoutError,
    LogWriteError,
    OffsetOutOfRangeError,
)
from mercato.log.segment import Head

__all__ = ["FileLog"]

FORMAT = 2
_HEAD_READ_ATTEMPTS = 5
_ROUTE_CACHE = 1 << 16

_logger = logging.getLogger(__name__)
_default_fsync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


class _Meta(msgspec.Struct):
    format: int
    partitions: int


class _Chunk(NamedTuple):
    """One append's records for one partition: a frame's payload still without header."""

    payload: bytes
    record_count: int
    crc: int


class _Append:
    """An append waiting for its group commit; ``bases`` are its first offsets once written."""

    __slots__ = ("bases", "chunks", "future", "routes")

    def __init__(self, routes: list[int], chunks: dict[int, _Chunk]) -> None:
        self.routes = routes
        self.chunks = chunks
        self.bases: dict[int, int] = {}
        self.future: Future[Sequence[Position]] = Future()


class _Segment:
    """What a reader knows of one segment: its start offsets and an index of its frames."""

    def __init__(self, sequence: int, starts: tuple[int, ...]) -> None:
        self.sequence = sequence
        self.starts = starts
        self.indexed = 0  # bytes of the segment covered by the index
        self.expected = list(starts)  # each partition's next offset at ``indexed``
        self.bases: list[list[int]] = [[] for _ in starts]  # per partition: frame base offsets
        self.positions: list[list[int]] = [[] for _ in starts]  # ... and their positions
        self.sizes = [0] * len(starts)  # per partition: bytes of its frames
        self.oldest: int | None = None
        self.newest: int | None = None


def _failure(exc: BaseException) -> LogError:
    """A fresh error for one waiter of a group that failed with ``exc``."""
    failure: LogError
    if isinstance(exc, LogCorruptionError):
        failure = LogCorruptionError(str(exc))
    elif isinstance(exc, LogError):
        failure = LogWriteError(str(exc))
    else:
        failure = LogWriteError(f"append failed: {exc!r}")
    failure.__cause__ = exc
    return failure


class FileLog:
    """A :class:`~mercato.log.base.Log` kept in segment files under ``path``.

    Several processes may open the same directory: group commits are serialized by a file
    lock, and readers see other processes' appends without reopening. ``clock`` stamps frames
    (ms); ``fsync`` makes a segment's data durable (``os.fdatasync``).
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
        self._committer: threading.Thread | None = None
        self._closed = False
        self._write_lock = threading.Lock()
        self._write_fd: int | None = None
        self._write_seq = -1
        self._read_lock = threading.Lock()
        self._segments: dict[int, _Segment] = {}
        self._routes: dict[str, int] = {}
        self._path.mkdir(parents=True, exist_ok=True)
        self._partitions = self._load_meta()
        self._head_size = fmt.head_size(self._partitions)
        self._header_size = fmt.segment_header_size(self._partitions)
        self._head_fd = os.open(self._path / "head", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            with self._locked():
                self._recover(self._read_head())
        except BaseException:
            self._close_files()
            raise

    @property
    def partitions(self) -> int:
        return self._partitions

    @property
    def path(self) -> Path:
        return self._path

    def __enter__(self) -> FileLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- opening and recovery -------------------------------------------------------------------

    def _load_meta(self) -> int:
        meta_path, wanted = self._path / "meta.json", self._config.partitions
        if not meta_path.exists():
            tmp = self._path / f".meta.json.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "wb") as f:
                f.write(msgspec.json.encode(_Meta(FORMAT, wanted)))
                f.flush()
                os.fsync(f.fileno())
            with suppress(FileExistsError):
                os.link(tmp, meta_path)  # unlike rename, never replaces a concurrent creator's
            tmp.unlink()
            self._sync_dir(always=True)
        try:
            meta = msgspec.json.decode(meta_path.read_bytes(), type=_Meta)
        except msgspec.DecodeError as exc:
            raise LogLayoutError(f"{meta_path} does not describe a mercato log: {exc}") from None
        if meta.format != FORMAT:
            raise LogLayoutError(f"{meta_path}: unknown log format {meta.format}")
        if meta.partitions != wanted:
            raise LogLayoutError(
                f"the log at {self._path} has {meta.partitions} partitions but the "
                f"configuration asks for {wanted}; the partition count of a log cannot change"
            )
        return meta.partitions

    def _sync_dir(self, *, always: bool = False) -> None:
        if self._config.fsync or always:
            fd = os.open(self._path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._write_lock:  # flock excludes other processes; this process's threads share it
            fcntl.flock(self._head_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._head_fd, fcntl.LOCK_UN)

    def _segment_path(self, sequence: int) -> Path:
        return self._path / fmt.segment_name(sequence)

    def _read_head(self) -> Head | None:
        return fmt.decode_head(os.pread(self._head_fd, self._head_size, 0), self._partitions)

    def _write_head(self, head: Head) -> None:
        os.pwrite(self._head_fd, fmt.encode_head(head), 0)

    def _open_writer(self, sequence: int) -> int:
        if self._write_fd is None or self._write_seq != sequence:
            fd = os.open(self._segment_path(sequence), os.O_RDWR)
            if self._write_fd is not None:
                os.close(self._write_fd)
            self._write_fd, self._write_seq = fd, sequence
        return self._write_fd

    def _create_segment(self, sequence: int, starts: Sequence[int]) -> None:
        """Put a segment holding only its header in place atomically, then make it durable."""
        tmp = self._path / f".{fmt.segment_name(sequence)}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(fmt.encode_segment_header(sequence, starts))
                f.flush()
                if self._config.fsync:
                    self._fsync(f.fileno())
            with suppress(FileExistsError):  # another process created it first: same header
                os.link(tmp, self._segment_path(sequence))
        finally:
            tmp.unlink(missing_ok=True)
        self._sync_dir()

    def _segment_starts(self, fd: int, path: Path) -> tuple[int, ...]:
        header = fmt.decode_segment_header(os.pread(fd, self._header_size, 0), self._partitions)
        if header is None:
            raise LogCorruptionError(f"{path}: invalid segment header")
        return header[1]

    def _writable_head(self) -> Head:
        """The head, after dealing with any bytes that a writer which died left behind."""
        head = self._read_head()
        if (
            head is not None
            and self._write_fd is not None
            and self._write_seq == head.segment
            and os.fstat(self._write_fd).st_size == head.end
        ):
            return head
        return self._recover(head)

    def _recover(self, head: Head | None) -> Head:
        sequences = fmt.list_segments(self._path)
        if not sequences:
            if head is not None and any(head.next_offsets):
                raise LogCorruptionError(f"{self._path}: no segment files, but a head with data")
            self._create_segment(0, [0] * self._partitions)
            sequences = [0]
        newest = sequences[-1]
        fd = self._open_writer(newest)
        size = os.fstat(fd).st_size
        if head is not None and head.segment == newest and head.end <= size:
            if head.end == size:
                return head
            start, expected = head.end, list(head.next_offsets)
        else:
            if head is not None and head.segment > newest:
                raise LogCorruptionError(
                    f"{self._path}: the head names segment {head.segment}, the newest is {newest}"
                )
            if head is not None or size > self._header_size or len(sequences) > 1:
                _logger.warning("%s: head missing or stale; rebuilding it", self._path)
            starts = self._segment_starts(fd, self._segment_path(newest))
            if len(sequences) > 1:
                self._check_previous(sequences[-2], starts)
            start, expected = self._header_size, list(starts)
        end = self._scan_tail(fd, self._segment_path(newest), start, expected, size)
        recovered = Head(newest, end, tuple(expected))
        self._write_head(recovered)
        return recovered

    def _check_previous(self, sequence: int, starts: tuple[int, ...]) -> None:
        path = self._segment_path(sequence)
        with open(path, "rb") as f:
            expected = list(self._segment_starts(f.fileno(), path))
            size = os.fstat(f.fileno()).st_size
            try:
                for _ in fmt.frames(
                    f.fileno(), self._header_size, size, expected, self._partitions, payloads=False
                ):
                    pass
            except BadFrame as bad:
                raise LogCorruptionError(f"corrupt frame in {path} at {bad}") from None
        if tuple(expected) != starts:
            raise LogCorruptionError(f"{path} ends at offsets {expected}, its successor {starts}")

    def _scan_tail(self, fd: int, path: Path, pos: int, expected: list[int], size: int) -> int:
        """Adopt the valid frames from byte ``pos`` on, cut a torn tail, refuse real damage.

        Advances ``expected`` past the adopted frames and returns where they end.
        """
        end = pos
        try:
            for frame, _ in fmt.frames(fd, pos, size, expected, self._partitions, payloads=True):
                end = frame.end
        except BadFrame as bad:
            valid = fmt.find_valid_frame(fd, bad.pos, size, self._partitions)
            if valid is not None:
                raise LogCorruptionError(
                    f"refusing to open: corrupt frame at {path} byte {bad.pos} ({bad.reason}) "
                    f"followed by valid data at byte {valid}; run `mercato log check`"
                ) from None
            _logger.warning("%s: discarding %d bytes of a torn write", path, size - end)
            os.ftruncate(fd, end)
        if size > pos and self._config.fsync:
            self._fsync(fd)  # the writer of adopted frames may have died before its fsync
        return end

    # -- appending ------------------------------------------------------------------------------

    def append(self, records: Sequence[Record]) -> Sequence[Position]:
        """Append ``records`` durably; return each record's position, in input order."""
        return self.submit(records).result()

    def submit(self, records: Sequence[Record]) -> Future[Sequence[Position]]:
        """Start appending ``records``; the future resolves once they are all durable.

        A background thread commits everything submitted meanwhile as one group: one write
        and one fsync, however many appends and partitions it holds.
        """
        routes, grouped = self._route(records)
        chunks = {}
        for p, items in enumerate(grouped):
            if items:
                payload = fmt.ENCODER.encode(items)  # a Record encodes as [key, value]
                chunks[p] = _Chunk(payload, len(items), fmt.crc(payload))
        pending = _Append(routes, chunks)
        if not records:
            pending.future.set_result([])
            return pending.future
        if any(len(chunk.payload) > fmt.MAX_PAYLOAD for chunk in chunks.values()):
            pending.future.set_exception(LogWriteError("an append over 4 GiB does not fit a frame"))
            return pending.future
        with self._cond:
            if self._closed:
                pending.future.set_exception(LogWriteError(f"the log at {self._path} is closed"))
                return pending.future
            self._queue.append(pending)
            if self._committer is None:
                self._committer = threading.Thread(
                    target=self._commit_loop, name="mercato-log-commit", daemon=True
                )
                self._committer.start()
            self._cond.notify()
        return pending.future

    def _route(self, records: Sequence[Record]) -> tuple[list[int], list[list[Record]]]:
        """Each record's partition, and the records grouped by partition.

        Keys repeat (a merchant sends many events), so their CRCs are cached (bounded).
        """
        cache, partitions = self._routes, self._partitions
        if len(cache) > _ROUTE_CACHE:
            cache.clear()
        routes: list[int] = []
        grouped: list[list[Record]] = [[] for _ in range(partitions)]
        for record in records:
            key = record.key
            if (p := cache.get(key)) is None:
                p = cache[key] = partition_for(key, partitions)
            routes.append(p)
            grouped[p].append(record)
        return routes, grouped

    def _commit_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
            # a future cancelled before its group starts is dropped, unwritten; later, it can't be
            batch = [waiter for waiter in batch if waiter.future.set_running_or_notify_cancel()]
            try:
                self._commit(batch)
                results = [
                    Positions(
                        waiter.routes, {p: itertools.count(b) for p, b in waiter.bases.items()}
                    )
                    for waiter in batch
                ]
            except BaseException as exc:  # every waiter must get an answer
                for waiter in batch:
                    waiter.future.set_exception(_failure(exc))
            else:
                for waiter, positions in zip(batch, results, strict=True):
                    waiter.future.set_result(positions)

    def _commit(self, batch: list[_Append]) -> None:
        stamp = self._clock()
        with self._locked():
            head = self._writable_head()
            fresh = head.end >= self._config.segment_bytes
            if fresh:
                head = self._roll(head)
            next_offsets = list(head.next_offsets)
            pieces: list[bytes] = []
            for waiter in batch:
                for p, chunk in waiter.chunks.items():
                    base = next_offsets[p]
                    waiter.bases[p] = base
                    size, count = len(chunk.payload), chunk.record_count
                    pieces.append(fmt.frame_header(size, count, p, base, stamp, chunk.crc))
                    pieces.append(chunk.payload)
                    next_offsets[p] = base + count
            fd = self._open_writer(head.segment)
            try:
                size = fmt.pwritev_all(fd, pieces, head.end)
                if self._config.fsync:
                    self._fsync(fd)
            except BaseException as exc:
                self._undo(head, fresh)
                if isinstance(exc, OSError):
                    message = f"could not append to {self._path}: {fmt.describe(exc)}"
                    raise LogWriteError(message) from exc
                raise
            try:
                self._write_head(Head(head.segment, head.end + size, tuple(next_offsets)))
            except OSError as exc:  # the data is durable: the next writer adopts it
                _logger.warning("%s: head not updated: %s", self._path, fmt.describe(exc))

    def _roll(self, head: Head) -> Head:
        sequence = head.segment + 1
        self._create_segment(sequence, head.next_offsets)
        fd = self._open_writer(sequence)
        size = os.fstat(fd).st_size
        if size == self._header_size:
            return Head(sequence, size, head.next_offsets)
        # a writer rolled, wrote and died before its head: its complete frames are kept
        expected = list(self._segment_starts(fd, self._segment_path(sequence)))
        end = self._scan_tail(fd, self._segment_path(sequence), self._header_size, expected, size)
        return Head(sequence, end, tuple(expected))

    def _undo(self, head: Head, fresh: bool) -> None:
        """Cut the segment of a failed group back, so that nothing of it stays behind."""
        try:
            os.ftruncate(self._open_writer(head.segment), head.end)
        except OSError as exc:  # the next writer may adopt these frames: a duplicate
            _logger.warning("%s: could not truncate: %s", self._path, fmt.describe(exc))
        if fresh and self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None
            with suppress(OSError):
                self._segment_path(head.segment).unlink()

    # -- reading --------------------------------------------------------------------------------

    def _visible_head(self) -> Head:
        if self._closed:
            raise LogError(f"the log at {self._path} is closed")
        for attempt in range(_HEAD_READ_ATTEMPTS):
            if (head := self._read_head()) is not None:
                return head
            time.sleep(0.001 * attempt)  # a torn read of a head being rewritten
        with self._locked():
            return self._writable_head()

    def _check_partition(self, partition: int) -> None:
        if not 0 <= partition < self._partitions:
            raise ValueError(f"partition {partition} is not in 0..{self._partitions - 1}")

    def _known_segments(self, head: Head, refresh: bool = False) -> list[_Segment]:
        """The segments, oldest first, with their headers read (read lock held)."""
        if refresh or not self._segments or max(self._segments) < head.segment:
            on_disk = set(fmt.list_segments(self._path))
            for sequence in set(self._segments) - on_disk:
                del self._segments[sequence]
            for sequence in sorted(on_disk - set(self._segments)):
                if sequence > head.segment:
                    continue  # being created by a writer right now
                path = self._segment_path(sequence)
                try:
                    with open(path, "rb") as f:
                        starts = self._segment_starts(f.fileno(), path)
                except FileNotFoundError:
                    continue
                self._segments[sequence] = _Segment(sequence, starts)
        # another thread may have cached a newer segment: its bytes are past this head's end
        return [self._segments[s] for s in sorted(self._segments) if s <= head.segment]

    def _index(self, seg: _Segment, head: Head) -> int:
        """Extend ``seg``'s frame index to its visible end; return that end."""
        path = self._segment_path(seg.sequence)
        with open(path, "rb") as f:
            fd = f.fileno()
            limit = head.end if seg.sequence == head.segment else os.fstat(fd).st_size
            if seg.indexed == 0:
                seg.indexed = self._header_size
            try:
                for frame, _ in fmt.frames(
                    fd, seg.indexed, limit, seg.expected, self._partitions, payloads=False
                ):
                    p = frame.partition
                    seg.bases[p].append(frame.base_offset)
                    seg.positions[p].append(frame.pos)
                    seg.sizes[p] += frame.end - frame.pos
                    seg.oldest = frame.timestamp_ms if seg.oldest is None else seg.oldest
                    seg.newest = frame.timestamp_ms
                    seg.indexed = frame.end
            except BadFrame as bad:
                raise LogCorruptionError(f"corrupt frame in {path} at {bad}") from None
        return limit

    def read(self, partition: int, offset: int, max_records: int = 1000) -> list[LogEntry]:
        """Up to ``max_records`` durable records of ``partition`` from ``offset`` on."""
        self._check_partition(partition)
        head = self._visible_head()
        end = head.next_offsets[partition]
        entries: list[LogEntry] = []
        if offset >= end or max_records <= 0:
            if offset < 0:
                raise OffsetOutOfRangeError(partition, offset, 0)
            return entries
        with self._read_lock:
            for attempt in range(2):
                segments = self._known_segments(head, refresh=attempt > 0)
                start = segments[0].starts[partition] if segments else end
                if offset < start:
                    raise OffsetOutOfRangeError(partition, offset, start)
                try:
                    self._read_into(entries, segments, head, partition, offset, max_records)
                    return entries
                except FileNotFoundError:  # retention deleted a segment meanwhile
                    entries.clear()
            raise LogError(f"{self._path}: segments keep vanishing while reading")

    def _read_into(
        self,
        entries: list[LogEntry],
        segments: list[_Segment],
        head: Head,
        partition: int,
        offset: int,
        max_records: int,
    ) -> None:
        starts = [seg.starts[partition] for seg in segments]
        i = bisect.bisect_right(starts, offset) - 1
        while i < len(segments) and len(entries) < max_records:
            seg = segments[i]
            limit = self._index(seg, head)
            bases, positions = seg.bases[partition], seg.positions[partition]
            j = max(bisect.bisect_right(bases, offset) - 1, 0)
            if j < len(bases):
                self._read_frames(entries, seg, positions[j:], limit, offset, max_records)
                if entries:
                    offset = entries[-1].offset + 1
            i += 1

    def _read_frames(
        self,
        entries: list[LogEntry],
        seg: _Segment,
        positions: list[int],
        limit: int,
        offset: int,
        max_records: int,
    ) -> None:
        path = self._segment_path(seg.sequence)
        with open(path, "rb") as f:
            for pos in positions:
                if pos >= limit:  # indexed by a reader that saw a newer head
                    return
                try:
                    data = os.pread(f.fileno(), fmt.FRAME_HEADER_SIZE, pos)
                    frame = fmt.parse_frame_header(data, 0, pos, self._partitions)
                    payload = os.pread(f.fileno(), frame.payload_len, pos + len(data))
                    if fmt.crc(payload) != frame.payload_crc:
                        raise BadFrame(pos, "payload checksum mismatch")
                    records = fmt.decode_payload(frame, payload)
                except BadFrame as bad:
                    raise LogCorruptionError(f"corrupt frame in {path} at {bad}") from None
                first = max(offset - frame.base_offset, 0)
                take = records[first : first + max_records - len(entries)]
                p, stamp, base = frame.partition, frame.timestamp_ms, frame.base_offset + first
                entries += [
                    LogEntry(p, base + k, stamp, key, value) for k, (key, value) in enumerate(take)
                ]
                if len(entries) >= max_records:
                    return

    def start_offset(self, partition: int) -> int:
        """The oldest offset still kept in ``partition``."""
        self._check_partition(partition)
        head = self._visible_head()
        with self._read_lock:
            segments = self._known_segments(head, refresh=True)
        return segments[0].starts[partition] if segments else head.next_offsets[partition]

    def end_offset(self, partition: int) -> int:
        """The offset the next record of ``partition`` will get (the high watermark)."""
        self._check_partition(partition)
        return self._visible_head().next_offsets[partition]

    def stats(self) -> list[PartitionStats]:
        """Offsets, bytes, segment counts and frame times of every partition."""
        head = self._visible_head()
        with self._read_lock:
            segments = self._known_segments(head, refresh=True)
            for seg in segments:
                self._index(seg, head)
        result = []
        for p in range(self._partitions):
            held = [seg for seg in segments if seg.bases[p]]
            result.append(
                PartitionStats(
                    partition=p,
                    start_offset=segments[0].starts[p] if segments else head.next_offsets[p],
                    end_offset=head.next_offsets[p],
                    size_bytes=sum(seg.sizes[p] for seg in segments),
                    segments=len(held),
                    oldest_timestamp_ms=self._frame_time(held[0], p, 0) if held else None,
                    newest_timestamp_ms=self._frame_time(held[-1], p, -1) if held else None,
                )
            )
        return result

    def _frame_time(self, seg: _Segment, partition: int, which: int) -> int:
        with open(self._segment_path(seg.sequence), "rb") as f:
            data = os.pread(f.fileno(), fmt.FRAME_HEADER_SIZE, seg.positions[partition][which])
        return fmt.parse_frame_header(data, 0, 0, self._partitions).timestamp_ms

    # -- maintenance ----------------------------------------------------------------------------

    def enforce_retention(
        self, now_ms: int | None = None, consumed: Mapping[int, int] | None = None
    ) -> int:
        """Delete the oldest segments that are past retention (never the active one).

        A segment goes when its newest frame is older than ``retention_hours``, or while the
        log holds more than ``retention_bytes`` (0 turns either rule off), and only once
        every record in it is below ``consumed`` (per partition, the offset every consumer
        that matters has passed; None: no such rule). Returns how many segments were deleted.
        """
        now = self._clock() if now_ms is None else now_ms
        hours, max_bytes = self._config.retention_hours, self._config.retention_bytes
        if hours == 0 and max_bytes == 0:
            return 0
        deleted = 0
        with self._locked():
            head = self._writable_head()
            with self._read_lock:
                segments = self._known_segments(head, refresh=True)
                sizes = {
                    s.sequence: self._segment_path(s.sequence).stat().st_size for s in segments
                }
                total = sum(sizes.values())
                for i, seg in enumerate(segments):
                    if seg.sequence >= head.segment:
                        break
                    self._index(seg, head)
                    too_old = hours > 0 and (seg.newest or 0) < now - hours * 3_600_000
                    if not too_old and not (max_bytes > 0 and total > max_bytes):
                        break
                    ends = segments[i + 1].starts if i + 1 < len(segments) else head.next_offsets
                    if consumed is not None and any(
                        ends[p] > consumed.get(p, 0) for p in range(self._partitions)
                    ):
                        break  # a consumer still needs records in it
                    self._segment_path(seg.sequence).unlink()
                    del self._segments[seg.sequence]
                    total -= sizes[seg.sequence]
                    deleted += 1
        if deleted:
            self._sync_dir()
        return deleted

    def verify(self) -> list[str]:
        """Check every frame of every segment; return the problems found (none: healthy)."""
        problems: list[str] = []
        head = self._read_head()
        if head is None:
            problems.append(f"{self._path / 'head'}: missing or invalid")
        expected: list[int] | None = None  # where the next segment must start
        for sequence in fmt.list_segments(self._path):
            path = self._segment_path(sequence)
            try:
                f = open(path, "rb")  # noqa: SIM115
            except FileNotFoundError:  # deleted by retention meanwhile
                expected = None
                continue
            with f:
                try:
                    starts = self._segment_starts(f.fileno(), path)
                except LogCorruptionError as exc:
                    problems.append(str(exc))
                    expected = None
                    continue
                if expected is not None and list(starts) != expected:
                    problems.append(f"{path}: starts at offsets {list(starts)}, not {expected}")
                expected = list(starts)
                size = os.fstat(f.fileno()).st_size
                limit = head.end if head is not None and sequence == head.segment else size
                try:
                    for frame, payload in fmt.frames(
                        f.fileno(), self._header_size, limit, expected, self._partitions,
                        payloads=True,
                    ):  # fmt: skip
                        fmt.decode_payload(frame, payload)
                except BadFrame as bad:
                    problems.append(f"{path}: corrupt frame at {bad}")
                    expected = None
        if head is not None and expected is not None and tuple(expected) != head.next_offsets:
            problems.append(
                f"{self._path}: segments end at {expected}, head at {head.next_offsets}"
            )
        return problems

    def close(self) -> None:
        """Finish the appends in flight, then close every file."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._committer is not None and self._committer is not threading.current_thread():
            self._committer.join()
        with self._write_lock, self._read_lock:
            self._close_files()

    def _close_files(self) -> None:
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None
        os.close(self._head_fd)
