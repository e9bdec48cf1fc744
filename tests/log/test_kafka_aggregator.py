"""The aggregator consuming from KafkaLog: every event counted once across restarts, the
same totals as on the in-memory log."""

from __future__ import annotations

from mercato.aggregator.aggregator import Aggregator
from mercato.log.base import Log, Record
from mercato.log.kafka import KafkaLog
from mercato.log.kafka_mock import MockKafkaCluster
from mercato.log.memory import MemoryLog
from mercato.store.sqlite import SqliteStore

from ..aggregator.test_aggregator import DEFINITIONS, drain, order, totals
from .conftest import kafka_config


def batches() -> list[list[Record]]:
    events = [order(f"e{i}", f"m_{i % 5}", amount=i) for i in range(600)]
    redelivered = [order(f"e{i}", f"m_{i % 5}", amount=i) for i in range(590, 600)]
    return [events[:250], events[250:], redelivered]


def run(log: Log) -> tuple[SqliteStore, int]:
    store = SqliteStore.temporary()
    first, second, third = batches()
    log.append(first)
    aggregator = Aggregator(log, store, DEFINITIONS, max_batch_records=64)
    drain(aggregator)
    log.append(second)
    aggregator.poll()  # one batch, then a "crash": a new aggregator resumes from the store
    restarted = Aggregator(log, store, DEFINITIONS, max_batch_records=64)
    log.append(third)
    drain(restarted)
    assert restarted.lag() == {p: 0 for p in range(log.partitions)}
    assert store.offsets(restarted.consumer) == {
        p: log.end_offset(p) for p in range(log.partitions) if log.end_offset(p)
    }
    return store, restarted.version


def test_the_aggregator_counts_every_kafka_event_once(kafka_cluster: MockKafkaCluster) -> None:
    with KafkaLog(kafka_config(kafka_cluster, 4)) as log:
        on_kafka, version = run(log)
    on_memory, memory_version = run(MemoryLog(4))
    for m in range(5):
        ids = [i for i in range(600) if i % 5 == m]
        expected = {"orders": (len(ids), None), "revenue": (len(ids), sum(ids))}
        assert totals(on_kafka, version, f"m_{m}") == expected
        assert totals(on_memory, memory_version, f"m_{m}") == expected
