"""Replaying the log into a version's speed layer (a promote, a new aggregator's start).

A version new to the store has no offsets; its aggregator starts at the records received a
little before the version's seal watermark (:data:`REPLAY_MARGIN`), found by binary search
in the log (which is in arrival order), so the hours not sealed yet are counted with its
definitions and nothing sealed is counted twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import msgspec

from mercato.aggregator.aggregator import Aggregator, AggregatorStore
from mercato.events.model import decode_event
from mercato.log.base import Log
from mercato.metrics.definitions import Definitions

# Events whose time is in a bucket the speed layer must hold may have been received a little
# before the bucket starts (client clocks run ahead): replay from this much earlier.
REPLAY_MARGIN = timedelta(hours=1)

Progress = Callable[[int, int], None]


def replay_start(log: Log, partition: int, since: datetime) -> int:
    """The first offset of ``partition`` received at or after ``since`` (binary search: the
    log is in arrival order)."""
    low, high = log.start_offset(partition), log.end_offset(partition)
    while low < high:
        middle = (low + high) // 2
        entries = log.read(partition, middle, 1)
        if not entries:
            return middle
        try:
            received = decode_event(entries[0].value).received_at
        except msgspec.MsgspecError:
            received = None  # undecodable: decide by its neighbour
            after = log.read(partition, middle + 1, 1) if middle + 1 < high else []
            if after:
                try:
                    received = decode_event(after[0].value).received_at
                except msgspec.MsgspecError:
                    received = None
        if received is not None and received < since:
            low = middle + 1
        else:
            high = middle
    return low


def catch_up(
    log: Log,
    store: AggregatorStore,
    definitions: Definitions,
    since: datetime | None,
    *,
    progress: Progress | None = None,
) -> int:
    """Bring ``definitions``' speed layer to the end of the log; a consumer new to the store
    starts at records received from ``since`` (None: the beginning of the log). Returns the
    events counted."""
    starts = {p: replay_start(log, p, since) for p in range(log.partitions)} if since else None
    aggregator = Aggregator(log, store, definitions, start_offsets=starts)
    total = sum(aggregator.lag().values())
    done = 0
    while consumed := aggregator.poll():
        done += consumed
        if progress is not None:
            progress(done, total)
    return aggregator.stats.events
