"""The archiver: log partitions in, Parquet files by event hour out, offsets committed last.

Each poll reads up to ``max_batch_records`` records per owned partition from where the last
poll stopped and keeps them (decoded, as Arrow) until a partition has ``max_batch_records``
waiting or the oldest waiting record is ``flush_interval_seconds`` old, so a slow stream does
not make thousands of tiny files. A flush writes, per partition, one file for each event hour
of the waiting range ``[first, last]`` of offsets, named by that range (see
:mod:`mercato.archive.layout`), and only once every file is durable does it replace the state
file with the new next offsets. On start the archiver reads the state and carries on from it.

Crash rules (kill -9 anywhere leaves readers no duplicate and no missing event):

- Files past the committed offsets are invisible to readers (the committed rule).
- The replay reads from the committed offset again, so it rewrites a range of the same name
  with the same rows. A replay with another batch size writes other ranges; so writing
  ``[a, b]`` for partition p deletes every other file of p in that hour whose range overlaps
  ``[a, b]``. A leftover always holds records of its hour that the replay reaches before its
  offsets pass the leftover's end, so it is gone before it could become committed.
- Deletions are made durable (directory fsync) before the state is written.

A record that does not decode as a normalized event is skipped, counted in
:attr:`ArchiverStats.invalid` and logged with its partition and offset, never retried.

The watermark of a partition is the later of the newest ``received_at`` archived and the last
time a poll found the partition fully archived; :meth:`Archiver.watermark` is the lowest over
the owned partitions. Every hour ending at least a grace period before it is complete in the
archive, up to events the collector received but had not yet logged at that time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import BinaryIO

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from mercato.archive.errors import ArchiveError
from mercato.archive.layout import (
    ArchiveFile,
    PartitionState,
    Root,
    hour_dir,
    open_storage,
    owner_of,
    parse_file_name,
    partition_lock,
    read_state,
    update_state,
)
from mercato.archive.schema import SCHEMA, SORT_KEYS, events_batch, write_parquet
from mercato.archive.storage import new_tag, temp_target
from mercato.config import ArchiveConfig
from mercato.events.model import NormalizedEvent, decode_event
from mercato.log.base import Log, LogEntry

logger = logging.getLogger("mercato.archive")

ROLE = "archiver"


class ArchiverStats(msgspec.Struct):
    """Counters since start, for logs."""

    batches: int = 0
    records: int = 0
    events: int = 0
    invalid: int = 0
    files: int = 0
    bytes: int = 0
    replaced: int = 0


class Archiver:
    """Owns ``partitions`` of ``log`` (default: ``config.partitions``, or all) and archives
    them under ``root``.

    ``clock`` gives wall-clock seconds since the epoch; it times flushes and watermarks.
    While it exists, the archiver holds a lock per partition, so a second archiver of the
    same partition and local root fails with
    :class:`~mercato.archive.errors.PartitionBusyError` (an ``s3://`` root has no locks: see
    :mod:`mercato.archive.storage`); :meth:`close` releases them (and drops records not yet
    flushed: call :meth:`flush` first to keep them).
    """

    def __init__(
        self,
        log: Log,
        root: Root,
        config: ArchiveConfig,
        *,
        partitions: Sequence[int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = log
        self.storage = open_storage(root)
        self.config = config
        owned = partitions if partitions is not None else config.partitions
        self.partitions = sorted(set(owned)) if owned else list(range(log.partitions))
        # the state file of its own: archivers that split the partitions never write one
        # object (object stores have no locks)
        self._owner = owner_of(self.partitions) if owned else None
        for p in self.partitions:
            if not 0 <= p < log.partitions:
                raise ArchiveError(f"partition {p} is not in 0..{log.partitions - 1}")
        self.stats = ArchiverStats()
        self._clock = clock
        self._tag = new_tag(ROLE)
        self._releases: list[Callable[[], None]] = []
        try:
            for p in self.partitions:
                self._releases.append(self.storage.hold(partition_lock(p), f"partition {p}"))
            state = read_state(self.storage).partitions
        except BaseException:
            self.close()
            raise
        self.committed = {
            p: state[p].next_offset if p in state else log.start_offset(p) for p in self.partitions
        }
        self.watermarks: dict[int, datetime | None] = {
            p: state[p].watermark if p in state else None for p in self.partitions
        }
        self.positions = dict(self.committed)
        self._pending: dict[int, list[pa.RecordBatch]] = {p: [] for p in self.partitions}
        self._pending_since: float | None = None
        self._caught_up: dict[int, float] = {}
        self._state_written = clock()
        self._state_dirty = False

    def __enter__(self) -> Archiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the partition locks; records not flushed are dropped (the log keeps them)."""
        while self._releases:
            self._releases.pop()()

    def poll(self) -> int:
        """Read what is new in every owned partition and flush if it is time; return how many
        log records this poll read (0: every partition is at its end)."""
        consumed = 0
        limit = self.config.max_batch_records
        for p in self.partitions:
            room = limit - (self.positions[p] - self.committed[p])
            started = self._clock()
            entries = self.log.read(p, self.positions[p], room) if room > 0 else []
            if entries:
                self._add(p, entries)
                consumed += len(entries)
            if len(entries) < room and self.positions[p] >= self.log.end_offset(p):
                self._caught_up[p] = started
        if self._flush_due():
            self.flush()
        else:
            self._advance_idle_watermarks()
        return consumed

    def flush(self) -> int:
        """Write every record read so far and commit the offsets past them; return how many
        log records were committed."""
        ranges = {p: (self.committed[p], self.positions[p] - 1) for p in self.partitions}
        ranges = {p: r for p, r in ranges.items() if r[0] <= r[1]}
        if not ranges:
            self._advance_idle_watermarks(force=True)
            return 0
        for p, (first, last) in ranges.items():
            table = pa.Table.from_batches(self._pending[p], schema=SCHEMA)
            if table.num_rows:
                self._write_hours(p, first, last, table)
                newest = pc.max(table.column("received_at")).as_py()
                self.watermarks[p] = _later(self.watermarks[p], newest)
        for p, seen in self._caught_up.items():
            self.watermarks[p] = _later(self.watermarks[p], _utc(seen))
        self._caught_up.clear()
        self._write_state(self.positions)
        records = sum(last - first + 1 for first, last in ranges.values())
        self.committed = dict(self.positions)
        self._pending = {p: [] for p in self.partitions}
        self._pending_since = None
        self.stats.batches += 1
        self.stats.records += records
        return records

    def lag(self) -> dict[int, int]:
        """Records per owned partition not yet archived (committed)."""
        return {p: self.log.end_offset(p) - self.committed[p] for p in self.partitions}

    def watermark(self) -> datetime | None:
        """The lowest watermark over the owned partitions; None until each has one."""
        marks = [self.watermarks[p] for p in self.partitions]
        if any(m is None for m in marks):
            return None
        return min(m for m in marks if m is not None)

    def _add(self, partition: int, entries: list[LogEntry]) -> None:
        events: list[NormalizedEvent] = []
        offsets: list[int] = []
        for entry in entries:
            try:
                events.append(decode_event(entry.value))
            except msgspec.MsgspecError as exc:  # skipped and counted, never retried
                self.stats.invalid += 1
                logger.warning(
                    "partition %d offset %d: not a normalized event, skipped: %s",
                    entry.partition,
                    entry.offset,
                    exc,
                )
                continue
            offsets.append(entry.offset)
        if events:
            self._pending[partition].append(events_batch(events, partition, offsets))
        self.positions[partition] = entries[-1].offset + 1
        if self._pending_since is None:
            self._pending_since = self._clock()

    def _flush_due(self) -> bool:
        if self._pending_since is None:
            return False
        if self._clock() - self._pending_since >= self.config.flush_interval_seconds:
            return True
        limit = self.config.max_batch_records
        return any(self.positions[p] - self.committed[p] >= limit for p in self.partitions)

    def _advance_idle_watermarks(self, *, force: bool = False) -> None:
        """Partitions with nothing waiting are archived up to when they were found caught up;
        the state learns it at most once per flush interval (or now, if ``force``)."""
        for p, seen in list(self._caught_up.items()):
            if self.positions[p] == self.committed[p]:
                del self._caught_up[p]
                mark = _later(self.watermarks[p], _utc(seen))
                if mark != self.watermarks[p]:
                    self.watermarks[p] = mark
                    self._state_dirty = True
        elapsed = self._clock() - self._state_written
        if self._state_dirty and (force or elapsed >= self.config.flush_interval_seconds):
            self._write_state(self.committed)

    def _write_state(self, offsets: dict[int, int]) -> None:
        changes = {p: PartitionState(offsets[p], self.watermarks[p]) for p in self.partitions}
        update_state(self.storage, changes, tag=self._tag, owner=self._owner)
        self._state_written = self._clock()
        self._state_dirty = False

    def _write_hours(self, partition: int, first: int, last: int, table: pa.Table) -> None:
        """One file per event hour of ``table``, all named ``[first, last]``."""
        hours = pc.floor_temporal(table.column("event_time"), unit="hour")
        table = table.append_column("_hour", hours).sort_by([("_hour", "ascending"), *SORT_KEYS])
        start = 0
        for item in pc.value_counts(table.column("_hour")):
            hour, rows = item["values"].as_py(), item["counts"].as_py()
            part = table.slice(start, rows).drop_columns(["_hour"])
            start += rows
            self._write_file(ArchiveFile(hour, partition, first, last), part)

    def _write_file(self, target: ArchiveFile, rows: pa.Table) -> None:
        size = 0

        def write(out: BinaryIO) -> None:
            nonlocal size
            write_parquet(rows, out, self.config.compression_level)
            size = out.tell()

        self.storage.write_atomic(target.path, write, tag=self._tag)
        self.stats.files += 1
        self.stats.events += rows.num_rows
        self.stats.bytes += size
        directory = hour_dir(target.hour)
        deleted = False
        for entry in self.storage.list_dir(directory):
            if self._stale(entry.name, target) and self.storage.delete(f"{directory}/{entry.name}"):
                deleted = True
                self.stats.replaced += parse_file_name(entry.name) is not None
        if deleted:
            self.storage.sync_directory(directory)

    def _stale(self, name: str, written: ArchiveFile) -> bool:
        """Whether ``name``, in the directory ``written`` was just written to, is a leftover
        of a crashed batch of the same partition: an overlapping range, or a temp file of
        another archiver (the partition lock says it is dead)."""
        parsed = parse_file_name(name)
        if parsed is not None:
            partition, first, last = parsed
            same = (first, last) == (written.first, written.last)
            overlaps = first <= written.last and written.first <= last
            return partition == written.partition and overlaps and not same
        temp = temp_target(name)
        if temp is None or not temp[1].startswith(f"{ROLE}-") or temp[1] == self._tag:
            return False
        parsed = parse_file_name(temp[0])
        return parsed is not None and parsed[0] == written.partition


def _later(mark: datetime | None, candidate: datetime | None) -> datetime | None:
    if candidate is None:
        return mark
    return candidate if mark is None or candidate > mark else mark


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
