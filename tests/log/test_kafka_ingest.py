"""The collector on KafkaLog, with the mock cluster failing under it: a 200 only for events
Kafka acknowledged, 503 + Retry-After otherwise, and no acknowledged event lost."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import KafkaError

from mercato.collector.app import CollectorApp
from mercato.collector.keys import KeyStore
from mercato.config import CollectorConfig
from mercato.events.model import decode_event
from mercato.log.base import LogReader
from mercato.log.kafka import KafkaLog
from mercato.log.kafka_mock import MockKafkaCluster
from tests.inprocess import Response, call

from .conftest import kafka_config

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
PRODUCE = 0


class Ingest:
    """A collector app on a KafkaLog of its own mock cluster; remembers what got a 200."""

    def __init__(self, tmp_path: Path, cluster: MockKafkaCluster) -> None:
        keys = KeyStore(tmp_path / "keys.json", reload_interval=0)
        _, secret = keys.create("web")
        self.auth = "Basic " + base64.b64encode(f"{secret}:".encode()).decode()
        self.log = KafkaLog(kafka_config(cluster, 4, kafka_delivery_timeout_ms=1000))
        self.app = CollectorApp(CollectorConfig(), self.log, keys, clock=lambda: NOW)
        self.acknowledged: set[str] = set()
        self.statuses: list[int] = []
        self._lock = threading.Lock()

    def post(self, ids: list[str]) -> Response:
        events = [
            {
                "event_id": i,
                "type": "order_completed",
                "merchant_id": f"m_{hash(i) % 13}",
                "timestamp": "2026-11-26T11:00:00Z",
            }
            for i in ids
        ]
        headers = {"Content-Type": "application/json", "Authorization": self.auth}
        body = msgspec.json.encode(events)
        # A thread of its own: ``call`` runs an event loop, and the calling thread may have
        # one running already (the browser tests' Playwright leaves one in the main thread).
        with ThreadPoolExecutor(1) as pool:
            response = pool.submit(call, self.app, "POST", "/v1/events", body, headers).result()
        with self._lock:
            self.statuses.append(response.status)
            if response.status == 200:
                self.acknowledged.update(ids)
        return response

    def stored(self) -> list[str]:
        return [
            decode_event(e.value).event_id
            for p in range(self.log.partitions)
            for e in LogReader(self.log, p, 0)
        ]


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[tuple[Ingest, MockKafkaCluster]]:
    with MockKafkaCluster(brokers=3) as cluster:
        ingest = Ingest(tmp_path, cluster)
        yield ingest, cluster
        ingest.app.close()
        ingest.log.close()


def test_all_brokers_down_during_ingest_is_503_and_no_acknowledged_event_is_lost(
    ingest: tuple[Ingest, MockKafkaCluster],
) -> None:
    collector, cluster = ingest
    stop = threading.Event()
    down_statuses: list[int] = []

    def producer(worker: int) -> None:
        n = 0
        while not stop.is_set():
            collector.post([f"w{worker}-{n}-{k}" for k in range(20)])
            n += 1

    workers = [threading.Thread(target=producer, args=(w,)) for w in range(4)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0)
        cluster.all_brokers_down()
        started = len(collector.statuses)
        time.sleep(3.0)
        response = collector.post(["probe-while-down"])
        down_statuses = collector.statuses[started:]
        cluster.all_brokers_up()
        time.sleep(2.0)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert response.status == 503
    assert response.headers["retry-after"] == "1"
    assert 503 in down_statuses
    assert collector.statuses[-1] == 200  # it recovered once the brokers came back
    assert set(collector.statuses) <= {200, 503}
    stored = collector.stored()
    assert collector.acknowledged <= set(stored)
    # Idempotent producer: a retried request never stores an acknowledged event twice.
    acknowledged_stored = [i for i in stored if i in collector.acknowledged]
    assert len(acknowledged_stored) == len(collector.acknowledged)
    assert collector.statuses.count(200) * 20 >= len(collector.acknowledged) > 100


@pytest.mark.parametrize(
    ("errors", "status"),
    [
        ([KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.REQUEST_TIMED_OUT] * 2, 200),
        ([KafkaError.MSG_SIZE_TOO_LARGE] * 8, 503),
        ([KafkaError.TOPIC_AUTHORIZATION_FAILED] * 8, 503),
        ([KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER], 503),  # fatal: a new producer takes over
    ],
)
def test_injected_produce_errors_are_retried_or_503_never_a_lost_200(
    ingest: tuple[Ingest, MockKafkaCluster], errors: list[int], status: int
) -> None:
    collector, cluster = ingest
    collector.post(["warm-up"])
    cluster.push_request_errors(PRODUCE, errors)
    ids = [f"e{k}" for k in range(30)]
    response = collector.post(ids)
    assert response.status == status
    if status == 503:
        assert response.headers["retry-after"] == "1"
        assert "not stored" in response.json()["error"]["message"]
    for attempt in range(20):  # past what is left of the injected errors
        if collector.post([f"after-{attempt}"]).status == 200:
            break
    stored = collector.stored()
    assert collector.acknowledged <= set(stored)
    assert len(stored) == len(set(stored))
    assert (set(ids) <= set(stored)) == (status == 200)
