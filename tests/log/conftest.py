"""Fixtures of the log tests: a ``log_factory`` over every backend of the Log protocol.

Kafka runs on librdkafka's mock cluster (one per session, a topic per log) and passes every
contract test, durability included; none is skipped. Retention is the broker's on Kafka, so
test_retention.py stays file-only; the mock's bounded tail stands in for it in test_kafka.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mercato.config import LogConfig
from mercato.log.base import Log
from mercato.log.file import FileLog
from mercato.log.memory import MemoryLog

LogFactory = Callable[..., Log]

_topics = itertools.count()


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[object]:
    """One librdkafka mock cluster of three brokers for the session (each test its topic)."""
    from mercato.log.kafka_mock import MockKafkaCluster

    with MockKafkaCluster(brokers=3) as cluster:
        yield cluster


def kafka_config(cluster: object, partitions: int, **overrides: Any) -> LogConfig:
    """A fresh topic of ``partitions`` partitions on ``cluster`` and a config naming it."""
    from mercato.log.kafka_mock import MockKafkaCluster

    assert isinstance(cluster, MockKafkaCluster)
    topic = f"events-{next(_topics)}"
    cluster.create_topic(topic, partitions)
    settings: dict[str, Any] = {
        "backend": "kafka",
        "partitions": partitions,
        "kafka_bootstrap_servers": cluster.bootstraps,
        "kafka_topic": topic,
        "kafka_linger_ms": 1,
        **overrides,
    }
    return LogConfig(**settings)


@pytest.fixture(params=["memory", "file", "kafka"])
def log_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogFactory]:
    """``make(partitions=4)`` opens a log of the parametrized backend; all are closed after."""
    opened: list[Log] = []

    def make(partitions: int = 4) -> Log:
        log: Log
        if request.param == "memory":
            log = MemoryLog(partitions)
        elif request.param == "kafka":
            from mercato.log.kafka import KafkaLog

            cluster = request.getfixturevalue("kafka_cluster")
            log = KafkaLog(kafka_config(cluster, partitions))
        else:
            log = FileLog(tmp_path / "log", LogConfig(partitions=partitions, fsync=False))
        opened.append(log)
        return log

    yield make
    for log in opened:
        log.close()


@pytest.fixture(params=["file", "kafka"])
def durable_log_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogFactory]:
    """Like ``log_factory`` for the backends that keep data across close and reopen."""
    opened: list[Log] = []
    kafka: list[LogConfig] = []

    def make(partitions: int = 4) -> Log:
        log: Log
        if request.param == "kafka":
            from mercato.log.kafka import KafkaLog

            if not kafka:
                kafka.append(kafka_config(request.getfixturevalue("kafka_cluster"), partitions))
            log = KafkaLog(kafka[0])
        else:
            log = FileLog(tmp_path / "log", LogConfig(partitions=partitions, fsync=True))
        opened.append(log)
        return log

    yield make
    for log in opened:
        log.close()
