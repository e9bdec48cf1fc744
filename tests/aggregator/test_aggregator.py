"""The aggregator with the in-memory log and a store in a temporary directory: exactly-once
counting across restarts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mercato.aggregator.aggregator import Aggregator
from mercato.aggregator.errors import AggregatorError
from mercato.config import StoreConfig
from mercato.events.model import NormalizedEvent, encode_event
from mercato.log.base import Record
from mercato.log.memory import MemoryLog
from mercato.metrics.definitions import parse_definitions
from mercato.store.base import RollupStore
from mercato.store.sqlite import SqliteStore

DEFINITIONS = parse_definitions(
    """
    metrics:
      - {name: orders, kind: count, events: [order_completed]}
      - {name: revenue, kind: sum, events: [order_completed], value: properties.amount}
    """
)
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
DAY = (int(T0.timestamp()) - 86400, int(T0.timestamp()) + 86400)


def order(event_id: str, merchant: str = "m_1", amount: int = 100) -> Record:
    event = NormalizedEvent(
        event_id=event_id,
        merchant_id=merchant,
        type="order_completed",
        event_time=T0 + timedelta(minutes=1),
        received_at=T0 + timedelta(minutes=1, seconds=1),
        properties={"amount": amount},
    )
    return Record(merchant, encode_event(event))


def totals(store: RollupStore, version: int, merchant: str) -> dict[str, tuple[int, int | None]]:
    table = store.read(version, merchant, ["orders", "revenue"], *DAY)
    out: dict[str, tuple[int, int | None]] = {}
    for row in table.to_pylist():
        count, total = out.get(row["metric"], (0, None))
        out[row["metric"]] = (
            count + row["count"],
            row["sum"] if total is None else total + (row["sum"] or 0),
        )
    return out


def drain(aggregator: Aggregator) -> None:
    while aggregator.poll():
        pass


def test_counts_every_event_once():
    log, store = MemoryLog(4), SqliteStore.temporary()
    log.append([order(f"e{i}", f"m_{i % 3}", amount=i) for i in range(300)])
    aggregator = Aggregator(log, store, DEFINITIONS, max_batch_records=50)
    drain(aggregator)
    for m in range(3):
        ids = [i for i in range(300) if i % 3 == m]
        assert totals(store, aggregator.version, f"m_{m}") == {
            "orders": (len(ids), None),
            "revenue": (len(ids), sum(ids)),
        }
    assert aggregator.lag() == {p: 0 for p in range(4)}
    assert store.offsets(aggregator.consumer) == {
        p: log.end_offset(p) for p in range(4) if log.end_offset(p)
    }


def test_duplicate_deliveries_are_dropped_within_the_window():
    log, store = MemoryLog(2), SqliteStore.temporary()
    log.append([order("a"), order("b"), order("a")])
    aggregator = Aggregator(log, store, DEFINITIONS)
    drain(aggregator)
    log.append([order("b"), order("c")])
    drain(aggregator)
    assert totals(store, aggregator.version, "m_1")["orders"] == (3, None)
    assert aggregator.stats.duplicates == 2


def test_same_id_from_two_merchants_is_two_events():
    log, store = MemoryLog(1), SqliteStore.temporary()
    log.append([order("x", "m_1"), order("x", "m_2")])
    aggregator = Aggregator(log, store, DEFINITIONS)
    drain(aggregator)
    assert totals(store, aggregator.version, "m_1")["orders"] == (1, None)
    assert totals(store, aggregator.version, "m_2")["orders"] == (1, None)


def test_a_restart_resumes_from_the_stored_offsets_and_remembers_ids():
    log, store = MemoryLog(2), SqliteStore.temporary()
    log.append([order(f"e{i}") for i in range(10)])
    first = Aggregator(log, store, DEFINITIONS)
    drain(first)
    # a producer retries events that were already counted, then sends new ones
    log.append([order("e3"), order("e7"), order("new")])
    second = Aggregator(log, store, DEFINITIONS)  # a fresh process: empty memory
    drain(second)
    assert second.version == first.version
    assert totals(store, second.version, "m_1")["orders"] == (11, None)
    assert second.stats.duplicates == 2


def test_a_failed_write_counts_nothing_and_is_retried():
    log = MemoryLog(2)
    log.append([order(f"e{i}") for i in range(20)])

    class FailingOnce(SqliteStore):
        failed = False

        def write(self, *args, **kwargs):
            if not FailingOnce.failed:
                FailingOnce.failed = True
                raise OSError("disk went away")
            return super().write(*args, **kwargs)

    flaky = FailingOnce.temporary()
    aggregator = Aggregator(log, flaky, DEFINITIONS)
    with pytest.raises(OSError, match="disk went away"):
        aggregator.poll()
    assert flaky.offsets(aggregator.consumer) == {}
    # the dedup window learns a batch only once it is stored: the same aggregator retries it
    drain(aggregator)
    assert totals(flaky, aggregator.version, "m_1")["orders"] == (20, None)


def test_records_that_are_not_events_are_skipped_and_counted():
    log, store = MemoryLog(1), SqliteStore.temporary()
    log.append([order("a"), Record("m_1", b"not json"), Record("m_1", b'{"x": 1}'), order("b")])
    aggregator = Aggregator(log, store, DEFINITIONS)
    drain(aggregator)
    assert totals(store, aggregator.version, "m_1")["orders"] == (2, None)
    assert aggregator.stats.invalid == 2
    assert aggregator.lag() == {0: 0}


def test_aggregators_own_disjoint_partitions():
    log, store = MemoryLog(4), SqliteStore.temporary()
    log.append([order(f"e{i}", f"m_{i}") for i in range(40)])
    low = Aggregator(log, store, DEFINITIONS, partitions=[0, 1])
    high = Aggregator(log, store, DEFINITIONS, partitions=[2, 3])
    drain(low)
    drain(high)
    for i in range(40):
        assert totals(store, low.version, f"m_{i}")["orders"] == (1, None)
    assert set(store.offsets(low.consumer)) == {p for p in range(4) if log.end_offset(p)}


def test_unknown_partition_is_refused():
    with pytest.raises(AggregatorError, match="partition 9"):
        Aggregator(MemoryLog(2), SqliteStore.temporary(), DEFINITIONS, partitions=[9])


def test_a_batch_of_only_duplicates_still_moves_on():
    log, store = MemoryLog(1), SqliteStore.temporary()
    log.append([order("a"), order("b")])
    aggregator = Aggregator(log, store, DEFINITIONS, max_batch_records=2)
    drain(aggregator)
    log.append([order("a"), order("b"), order("c")])  # a retried batch, then something new
    drain(aggregator)
    assert totals(store, aggregator.version, "m_1")["orders"] == (3, None)
    assert aggregator.lag() == {0: 0}


def test_partitions_handed_over_between_batches_count_every_event_once():
    log, store = MemoryLog(4), SqliteStore.temporary()
    log.append([order(f"e{i}", f"m_{i % 7}", amount=i) for i in range(400)])
    first = Aggregator(log, store, DEFINITIONS, partitions=[0, 1, 2, 3], max_batch_records=20)
    second = Aggregator(log, store, DEFINITIONS, partitions=[], max_batch_records=20)
    first.poll()
    first.revoke([2, 3])  # a rebalance: 2 and 3 move to the second aggregator
    second.assign([2, 3])
    assert (first.partitions, second.partitions) == ([0, 1], [2, 3])
    log.append([order(f"e{i}", f"m_{i % 7}", amount=i) for i in range(380, 420)])  # redeliveries
    drain(first)
    drain(second)
    for m in range(7):
        ids = [i for i in range(420) if i % 7 == m]
        assert totals(store, first.version, f"m_{m}") == {
            "orders": (len(ids), None),
            "revenue": (len(ids), sum(ids)),
        }


class StallingStore(SqliteStore):
    """Runs ``meanwhile`` just before the next write: another aggregator's work, done while
    this one was stalled between reading its batch and storing it."""

    def __init__(self, path: Path, config: StoreConfig) -> None:
        super().__init__(path, config)
        self.meanwhile: list[Callable[[], object]] = []

    def write(self, *args: Any, **kwargs: Any) -> None:
        while self.meanwhile:
            self.meanwhile.pop()()
        return super().write(*args, **kwargs)


def test_a_stalled_aggregator_is_fenced_when_another_took_its_partitions():
    log, store = MemoryLog(2), StallingStore.temporary()
    log.append([order(f"e{i}", f"m_{i % 7}", amount=i) for i in range(100)])
    assert log.end_offset(0) > 20
    assert log.end_offset(1) > 20
    stalled = Aggregator(log, store, DEFINITIONS, max_batch_records=10)
    stalled.poll()
    # stalled is paused past its session; the group gives partition 1 to a new member,
    # which stores past it while the stalled one holds a batch of it
    successor = Aggregator(log, store, DEFINITIONS, partitions=[1], max_batch_records=10)
    store.meanwhile = [lambda: drain(successor)]
    assert stalled.poll() == 0
    assert stalled.stats.fenced == 1
    # it starts again from the stored offsets, partition 1 included, until told to let go
    assert stalled.positions[1] == log.end_offset(1)
    drain(stalled)
    for m in range(7):
        ids = [i for i in range(100) if i % 7 == m]
        assert totals(store, stalled.version, f"m_{m}") == {
            "orders": (len(ids), None),
            "revenue": (len(ids), sum(ids)),
        }
