"""The log interface, in Kafka's terms.

A log has a fixed number of partitions. Every record carries a key (the merchant id) and is
routed to ``partition_for(key, partitions)``; records of one key therefore keep their order
and one reader owns all of a merchant's records. Within a partition each record gets the next
offset, starting at 0. ``append`` returns only once every record is durable; readers read
from any offset up to the partition's end offset (the high watermark: records at or past it
are not durable yet and are never shown). Consumers keep their own offsets; the log stores
none of them.

Partitioner (stable, documented, shared with producers that write to Kafka directly):
``crc32(key.encode("utf-8")) % partitions``, where crc32 is the ISO-HDLC CRC-32 of zlib; this
is what librdkafka's ``consistent`` partitioner computes for a keyed message.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Protocol, overload, runtime_checkable

import msgspec

# what the log carries: the event model's records (re-exported: the log's API names them)
from mercato.events.model import Record as Record  # noqa: PLC0414


class Position(msgspec.Struct, frozen=True, gc=False):
    """Where an appended record landed."""

    partition: int
    offset: int


class Positions(Sequence[Position]):
    """The positions of one append's records, made only when somebody looks at them.

    ``offsets`` gives, per partition, the offsets its records got, in order (the file log: a
    count from the partition's base offset; Kafka: what the delivery reports said). The
    collector never looks, and making a position per record would cost it more than routing
    them. Compares equal to any sequence of the same positions.
    """

    __slots__ = ("_items", "_offsets", "_routes")

    def __init__(self, routes: Sequence[int], offsets: Mapping[int, Iterable[int]]) -> None:
        self._routes = routes
        self._offsets = offsets
        self._items: list[Position] | None = None

    def _positions(self) -> list[Position]:
        if self._items is None:
            iterators = {p: iter(offsets) for p, offsets in self._offsets.items()}
            self._items = [Position(p, next(iterators[p])) for p in self._routes]
        return self._items

    @overload
    def __getitem__(self, index: int) -> Position: ...

    @overload
    def __getitem__(self, index: slice) -> list[Position]: ...

    def __getitem__(self, index: int | slice) -> Position | list[Position]:
        return self._positions()[index]

    def __len__(self) -> int:
        return len(self._routes)

    def __iter__(self) -> Iterator[Position]:
        return iter(self._positions())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return self._positions() == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Positions({self._positions()!r})"


class LogEntry(msgspec.Struct, frozen=True, gc=False):
    """One record read back, with its position and the time it was appended."""

    partition: int
    offset: int
    timestamp_ms: int
    key: str
    value: bytes


class PartitionStats(msgspec.Struct, frozen=True):
    """What ``mercato log stats`` shows for a partition; backends fill what they know."""

    partition: int
    start_offset: int
    end_offset: int
    size_bytes: int | None = None
    segments: int | None = None
    oldest_timestamp_ms: int | None = None
    newest_timestamp_ms: int | None = None


def partition_for(key: str, partitions: int) -> int:
    """The partition of ``key``: CRC-32 of its UTF-8 bytes modulo the partition count."""
    return zlib.crc32(key.encode("utf-8")) % partitions


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@runtime_checkable
class Log(Protocol):
    """A partitioned, append-only, durable record log (the file log, Kafka, memory)."""

    @property
    def partitions(self) -> int:
        """The number of partitions; fixed for the life of the log."""
        ...

    def append(self, records: Sequence[Record]) -> Sequence[Position]:
        """Append ``records`` durably; return each record's position, in input order.

        Raises :class:`~mercato.log.errors.LogWriteError` when the records could not be made
        durable; none of them is then acknowledged (readers may still see some of them if the
        process died half way, which is why events carry ids and consumers drop duplicates).
        """
        ...

    def submit(self, records: Sequence[Record]) -> Future[Sequence[Position]]:
        """Start appending ``records``; the future resolves once they are all durable.

        Like Kafka's ``producer.send``: the caller does not block, so one thread (an event
        loop) can keep many appends in flight and the log commits them together. The future
        fails with :class:`~mercato.log.errors.LogWriteError` as ``append`` would raise.
        """
        ...

    def read(self, partition: int, offset: int, max_records: int = 1000) -> list[LogEntry]:
        """Up to ``max_records`` durable records of ``partition`` from ``offset`` on.

        Returns an empty list at the end of the partition. Raises
        :class:`~mercato.log.errors.OffsetOutOfRangeError` for an offset deleted by retention
        and :class:`~mercato.log.errors.LogCorruptionError` for data that fails its checksum.
        """
        ...

    def start_offset(self, partition: int) -> int:
        """The oldest offset still kept in ``partition``."""
        ...

    def end_offset(self, partition: int) -> int:
        """The offset the next record of ``partition`` will get (the high watermark)."""
        ...

    def stats(self) -> list[PartitionStats]:
        """Per-partition offsets and, where the backend knows them, sizes and times."""
        ...

    def close(self) -> None:
        """Release files and connections; appends in flight finish first."""
        ...


@runtime_checkable
class MaintainedLog(Log, Protocol):
    """A log whose storage this process looks after (the file log): it deletes what is past
    retention and checks its own checksums. Kafka's brokers do both for the Kafka log."""

    def enforce_retention(
        self, now_ms: int | None = None, consumed: Mapping[int, int] | None = None
    ) -> int:
        """Delete the oldest data past retention, but only data below ``consumed`` (per
        partition, the offset every consumer that matters has passed; None: no such rule).
        Returns how many units (segments) were deleted."""
        ...

    def verify(self) -> list[str]:
        """Check every record's checksum; return the problems found (none: healthy)."""
        ...


class LogReader:
    """Reads one partition from an offset on, remembering its position between polls."""

    def __init__(self, log: Log, partition: int, offset: int, poll_interval: float = 0.05):
        self._log = log
        self.partition = partition
        self.position = offset
        self._poll_interval = poll_interval

    def poll(self, max_records: int = 1000, timeout: float = 0.0) -> list[LogEntry]:
        """The next records, waiting up to ``timeout`` seconds for some to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self._log.read(self.partition, self.position, max_records)
            if entries:
                self.position = entries[-1].offset + 1
                return entries
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            time.sleep(min(self._poll_interval, remaining))

    def __iter__(self) -> Iterator[LogEntry]:
        """Every record up to the current end of the partition."""
        while entries := self.poll():
            yield from entries
