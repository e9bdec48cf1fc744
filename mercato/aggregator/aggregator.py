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
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any, Protocol

import msgspec
import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from mercato.aggregator.dedup import DedupWindow
from mercato.aggregator.errors import AggregatorError
from mercato.aggregator.fingerprints import Hashes, Strings, event_fingerprints
from mercato.log.base import Log, LogEntry
from mercato.metrics.batch import BatchBuilder
from mercato.metrics.definitions import Definitions
from mercato.metrics.kernel import rollup
from mercato.names import aggregator_consumer
from mercato.store.base import RollupStore, VersionStore
from mercato.store.errors import OffsetConflictError

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
    fenced: int = 0  # batches refused because another process had stored past them


class AggregatorStore(RollupStore, VersionStore, Protocol):
    """What an aggregator needs of the store: its version registered and served, its rollups
    and offsets."""


class Aggregator:
    """Owns ``partitions`` of ``log`` and keeps the store's speed rollups up to date."""

    def __init__(
        self,
        log: Log,
        store: AggregatorStore,
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
        self.max_batch_records = max_batch_records
        self.stats = AggregatorStats()
        self._clock = clock
        self._builder = BatchBuilder(definitions)
        self.version = store.register_version(definitions.version, definitions.text)
        if store.serving_version() is None:
            store.set_serving_version(self.version)
        self.consumer = aggregator_consumer(definitions.version)
        self._dedup_window = dedup_window
        # a consumer new to the store starts at start_offsets (a promote's replay) or at
        # the beginning of the log
        self._start_offsets = dict(start_offsets or {})
        self.partitions: list[int] = []
        self.positions: dict[int, int] = {}
        self.windows: dict[int, DedupWindow] = {}
        # the offsets last seen in the store, which a write expects to find there still
        self._stored: dict[int, int | None] = {}
        self.assign(range(log.partitions) if partitions is None else partitions)

    def assign(self, partitions: Iterable[int]) -> None:
        """Take ``partitions`` on (those not owned yet): start at the store's offsets and
        refill their dedup windows from the log."""
        new = sorted(set(partitions) - set(self.partitions))
        for p in new:
            if not 0 <= p < self.log.partitions:
                raise AggregatorError(f"partition {p} is not in 0..{self.log.partitions - 1}")
        if not new:
            return
        stored = self.store.offsets(self.consumer)
        for p in new:
            self._stored[p] = stored.get(p)
            first = max(self._start_offsets.get(p, 0), self.log.start_offset(p))
            self.positions[p] = stored.get(p, first)
            self.windows[p] = DedupWindow(self._dedup_window)
            self._refill_window(p, self._dedup_window)
        self.partitions = sorted([*self.partitions, *new])

    def revoke(self, partitions: Iterable[int]) -> None:
        """Give ``partitions`` up; their next batch is another consumer's."""
        gone = set(partitions)
        self.partitions = [p for p in self.partitions if p not in gone]
        for p in gone:
            self.positions.pop(p, None)
            self.windows.pop(p, None)
            self._stored.pop(p, None)

    def _refill_window(self, partition: int, capacity: int) -> None:
        """Remember the ids of records already counted, up to the window's capacity."""
        end = self.positions[partition]
        offset = max(self.log.start_offset(partition), end - capacity)
        while offset < end:
            entries = self.log.read(partition, offset, min(self.max_batch_records, end - offset))
            if not entries:
                break
            events, _, _ = self._decode(entries)
            self.windows[partition].remember(*_id_columns(events))
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
        batch = self._builder.build(events)
        new, admitted = self._drop_duplicates(batch["merchant_id"], batch["event_id"], partitions)
        partials = rollup(batch if new.all() else batch.filter(new), self.definitions)
        expect = {p: self._stored[p] for p in ends}
        try:
            self.store.write(self.version, self.consumer, partials, ends, expect)
        except OffsetConflictError as exc:
            # another process took these partitions over and stored past them: this batch
            # is not ours to count; start again from what the store holds
            logger.warning("%s; the batch was dropped", exc)
            self.revoke(ends)
            self.assign(ends)
            self.stats.fenced += 1
            return 0
        for p, keys in admitted.items():  # the windows learn the batch once it counts
            self.windows[p].remember_fingerprints(keys)
        self.positions.update(ends)
        self._stored.update(ends)
        self.stats.batches += 1
        self.stats.events += int(np.count_nonzero(new))
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

    def _drop_duplicates(
        self,
        merchant_ids: Strings,
        event_ids: Strings,
        partitions: Sequence[int] | NDArray[np.integer[Any]],
    ) -> tuple[NDArray[np.bool_], dict[int, Hashes]]:
        """Which events were not seen before (a mask in batch order), and per partition the
        fingerprints to remember once the batch is stored."""
        keys = event_fingerprints(merchant_ids, event_ids)
        of = np.asarray(partitions, dtype=np.int64)
        new = np.zeros(len(keys), dtype=np.bool_)
        admitted: dict[int, Hashes] = {}
        for partition in np.unique(of).tolist():
            where = np.flatnonzero(of == partition)
            verdicts = self.windows[partition].check_fingerprints(keys[where])
            new[where] = verdicts
            admitted[partition] = keys[where[verdicts]]
        self.stats.duplicates += len(new) - int(np.count_nonzero(new))
        return new, admitted

    def lag(self) -> dict[int, int]:
        """Records per owned partition not yet counted."""
        return {p: self.log.end_offset(p) - self.positions[p] for p in self.partitions}


def _id_columns(events: Sequence[Any]) -> tuple[Any, Any]:
    """The merchant ids and event ids of decoded events, as Arrow string columns."""
    return (
        pa.array(list(map(attrgetter("merchant_id"), events)), type=pa.large_string()),
        pa.array(list(map(attrgetter("event_id"), events)), type=pa.large_string()),
    )
