"""The aggregator loop: log partitions in, rollup deltas and offsets out, in one transaction.

Exactly-once counting without Kafka transactions (the pattern Druid uses with Kafka): the
rollup deltas of a micro-batch and the log offsets just past it are written to the store in
one transaction, and on start the aggregator seeks to the offsets in the store, never to
offsets kept anywhere else. A crash before the commit loses the batch's deltas and offsets
together, so the batch is read again; after the commit, it is not. Redeliveries by producers
(the same event id again) are dropped within a bounded window per partition, which is
refilled from the log on start so a restart does not forget it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from mercato.aggregator.dedup import DedupWindow, dedup_key
from mercato.aggregator.errors import AggregatorError
from mercato.log.base import Log, LogEntry
from mercato.metrics.batch import BatchBuilder
from mercato.metrics.definitions import Definitions
from mercato.metrics.kernel import rollup
from mercato.store.base import Store

logger = logging.getLogger("mercato.aggregator")


class AggregatorStats(msgspec.Struct):
    """Counters since start, for logs and ``/metrics``."""

    batches: int = 0
    events: int = 0
    duplicates: int = 0
    invalid: int = 0
    partial_rows: int = 0
    dedup_ids: int = 0
    dedup_bytes: int = 0


class Aggregator:
    """Owns ``partitions`` of ``log`` and keeps the store's speed rollups up to date."""

    def __init__(
        self,
        log: Log,
        store: Store,
        definitions: Definitions,
        *,
        partitions: Sequence[int] | None = None,
        max_batch_records: int = 50_000,
        dedup_window: int = 200_000,
        start_offsets: Mapping[int, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.store = store
        self.definitions = definitions
        self.partitions = list(range(log.partitions)) if partitions is None else list(partitions)
        for p in self.partitions:
            if not 0 <= p < log.partitions:
                raise AggregatorError(f"partition {p} is not in 0..{log.partitions - 1}")
        self.max_batch_records = max_batch_records
        self.stats = AggregatorStats()
        self._clock = clock
        self._builder = BatchBuilder(definitions)
        self.version = store.register_version(definitions.version, definitions.text)
        if store.serving_version() is None:
            store.set_serving_version(self.version)
        self.consumer = f"aggregator/{definitions.version}"
        stored = store.offsets(self.consumer)
        # a consumer new to the store starts at start_offsets (a promote's replay) or at
        # the beginning of the log
        first = start_offsets or {}
        self.positions = {
            p: stored.get(p, max(first.get(p, 0), log.start_offset(p))) for p in self.partitions
        }
        self.windows = {p: DedupWindow(dedup_window) for p in self.partitions}
        for p in self.partitions:
            self._refill_window(p, dedup_window)

    def _refill_window(self, partition: int, capacity: int) -> None:
        """Remember the ids of records already counted, up to the window's capacity."""
        end = self.positions[partition]
        offset = max(self.log.start_offset(partition), end - capacity)
        while offset < end:
            entries = self.log.read(partition, offset, min(self.max_batch_records, end - offset))
            if not entries:
                break
            events, _, _ = self._decode(entries)
            self.windows[partition].remember(dedup_key(e.merchant_id, e.event_id) for e in events)
            offset = entries[-1].offset + 1

    def poll(self) -> int:
        """Process one micro-batch from every owned partition; return how many log records it
        consumed (0: nothing new). Events counted, duplicates and invalid records are in
        :attr:`stats`; a batch of nothing but duplicates still moves the offsets on."""
        entries: list[LogEntry] = []
        ends: dict[int, int] = {}
        for p in self.partitions:
            batch = self.log.read(p, self.positions[p], self.max_batch_records)
            if batch:
                entries += batch
                ends[p] = batch[-1].offset + 1
        if not entries:
            return 0
        events, partitions, invalid = self._decode(entries)
        kept = self._drop_duplicates(events, partitions)
        partials = rollup(self._builder.build(kept), self.definitions)
        self.store.write(self.version, self.consumer, partials, ends)
        self.positions.update(ends)
        self.stats.batches += 1
        self.stats.events += len(kept)
        self.stats.invalid += invalid
        self.stats.partial_rows += partials.num_rows
        self.stats.dedup_ids = sum(len(w) for w in self.windows.values())
        self.stats.dedup_bytes = sum(w.size_bytes() for w in self.windows.values())
        return len(entries)

    def _decode(self, entries: list[LogEntry]) -> tuple[list[Any], list[int], int]:
        """The events of ``entries``, the partition of each, and how many were invalid."""
        try:
            return (
                self._builder.decode([e.value for e in entries]),
                [e.partition for e in entries],
                0,
            )
        except msgspec.MsgspecError:
            pass
        events: list[Any] = []
        partitions: list[int] = []
        invalid = 0
        for entry in entries:  # find the bad records; they are skipped and counted, never retried
            try:
                events += self._builder.decode([entry.value])
                partitions.append(entry.partition)
            except msgspec.MsgspecError as exc:
                invalid += 1
                logger.warning(
                    "partition %d offset %d: not a normalized event, skipped: %s",
                    entry.partition,
                    entry.offset,
                    exc,
                )
        return events, partitions, invalid

    def _drop_duplicates(self, events: list[Any], partitions: list[int]) -> list[Any]:
        positions: dict[int, list[int]] = {}
        for i, partition in enumerate(partitions):
            positions.setdefault(partition, []).append(i)
        keep = [False] * len(events)
        for partition, indexes in positions.items():
            keys = [dedup_key(events[i].merchant_id, events[i].event_id) for i in indexes]
            for i, new in zip(indexes, self.windows[partition].admit(keys), strict=True):
                keep[i] = new
        kept = [event for event, new in zip(events, keep, strict=True) if new]
        self.stats.duplicates += len(events) - len(kept)
        return kept

    def lag(self) -> dict[int, int]:
        """Records per owned partition not yet counted."""
        return {p: self.log.end_offset(p) - self.positions[p] for p in self.partitions}
