"""An in-memory log for tests: the same contract as the file log, nothing on disk."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future

from mercato.log.base import LogEntry, PartitionStats, Position, Record, now_ms, partition_for
from mercato.log.errors import LogWriteError, OffsetOutOfRangeError


class MemoryLog:
    """A thread-safe log held in lists. ``fail_appends`` injects write failures."""

    def __init__(self, partitions: int = 4) -> None:
        if partitions < 1:
            raise ValueError("a log needs at least one partition")
        self._partitions = partitions
        self._entries: list[list[LogEntry]] = [[] for _ in range(partitions)]
        self._start = [0] * partitions
        self._lock = threading.Lock()
        self.fail_appends: Exception | None = None

    @property
    def partitions(self) -> int:
        return self._partitions

    def append(self, records: Sequence[Record]) -> list[Position]:
        with self._lock:
            if self.fail_appends is not None:
                raise LogWriteError(str(self.fail_appends)) from self.fail_appends
            stamp = now_ms()
            positions = []
            for record in records:
                p = partition_for(record.key, self._partitions)
                offset = self._start[p] + len(self._entries[p])
                self._entries[p].append(LogEntry(p, offset, stamp, record.key, record.value))
                positions.append(Position(p, offset))
            return positions

    def submit(self, records: Sequence[Record]) -> Future[Sequence[Position]]:
        future: Future[Sequence[Position]] = Future()
        try:
            future.set_result(self.append(records))
        except LogWriteError as exc:
            future.set_exception(exc)
        return future

    def read(self, partition: int, offset: int, max_records: int = 1000) -> list[LogEntry]:
        with self._lock:
            start = self._start[partition]
            if offset < start:
                raise OffsetOutOfRangeError(partition, offset, start)
            i = offset - start
            return self._entries[partition][i : i + max_records]

    def start_offset(self, partition: int) -> int:
        return self._start[partition]

    def end_offset(self, partition: int) -> int:
        with self._lock:
            return self._start[partition] + len(self._entries[partition])

    def truncate_before(self, partition: int, offset: int) -> None:
        """Drop records before ``offset``, as retention would."""
        with self._lock:
            drop = max(0, min(offset - self._start[partition], len(self._entries[partition])))
            del self._entries[partition][:drop]
            self._start[partition] += drop

    def stats(self) -> list[PartitionStats]:
        with self._lock:
            return [
                PartitionStats(
                    partition=p,
                    start_offset=self._start[p],
                    end_offset=self._start[p] + len(entries),
                    size_bytes=sum(len(e.value) + len(e.key) for e in entries),
                    oldest_timestamp_ms=entries[0].timestamp_ms if entries else None,
                    newest_timestamp_ms=entries[-1].timestamp_ms if entries else None,
                )
                for p, entries in enumerate(self._entries)
            ]

    def close(self) -> None:
        pass
