"""The quarantine over every log backend (memory, file, Kafka's mock cluster): entries folded
from append-only records, replay after the configuration is fixed (exactly once), purge."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from mercato.collector.errors import QuarantineError
from mercato.collector.quarantine import (
    Quarantine,
    Quarantined,
    Resolved,
    decode,
    open_quarantine_log,
    records_for,
    summary,
)
from mercato.config import Config, LogConfig
from mercato.events.model import NormalizedEvent, decode_event
from mercato.events.rules import EventRules
from mercato.events.segment import decode_batch, decode_single, normalize_segment
from mercato.log.base import Log, LogReader
from mercato.log.errors import LogError
from mercato.log.file import FileLog
from mercato.log.memory import MemoryLog
from tests.log.conftest import kafka_config

RECEIVED = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
LATER = RECEIVED + timedelta(hours=3)
FIXED = EventRules(merchant_id_paths=("properties.merchant_id", "properties.shop"))

QuarantineFactory = Callable[[], Quarantine]


@pytest.fixture(params=["memory", "file", "kafka"])
def make_quarantine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QuarantineFactory]:
    """``make()`` opens the quarantine of the parametrized backend (the same one each time)."""
    opened: list[Quarantine] = []
    memory = MemoryLog(1)
    kafka: list[LogConfig] = []

    def make() -> Quarantine:
        log: Log
        if request.param == "memory":
            log = memory
        elif request.param == "file":
            log = FileLog(tmp_path / "quarantine", LogConfig(partitions=1, fsync=False))
        else:
            from mercato.log.kafka import KafkaLog
            from mercato.log.kafka_mock import MockKafkaCluster

            if not kafka:
                cluster = MockKafkaCluster(brokers=1)
                request.addfinalizer(cluster.close)
                kafka.append(kafka_config(cluster, 1))
            log = KafkaLog(kafka[0])
        quarantine = Quarantine.on(log)
        opened.append(quarantine)
        return quarantine

    yield make
    for quarantine in opened:
        quarantine.close()


def track(i: int, **properties: object) -> dict[str, object]:
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": f"msg-{i}",
        "originalTimestamp": "2026-11-26T11:59:50Z",
        "properties": properties,
    }


def quarantine_batch(
    quarantine: Quarantine, messages: list[object], endpoint: str = "batch", **batch: object
) -> list[str]:
    """Normalize a request the way the collector does and quarantine what it rejects; returns
    the ids of the accepted events."""
    if endpoint == "batch":
        parsed = decode_batch(msgspec.json.encode({"batch": messages, **batch}))
    else:
        parsed = decode_single(msgspec.json.encode(messages[0]), endpoint)
    records, rejections = normalize_segment(parsed, RECEIVED, "web", EventRules())
    quarantine.log().append(records_for(rejections, parsed, "web", endpoint, RECEIVED))
    return [decode_event(r.value).event_id for r in records]


def events_in(log: Log) -> list[NormalizedEvent]:
    return [decode_event(e.value) for p in range(log.partitions) for e in LogReader(log, p, 0)]


def test_rejected_messages_become_entries_with_their_reason(make_quarantine):
    quarantine = make_quarantine()
    accepted = quarantine_batch(
        quarantine,
        [track(0, merchant_id="m_1"), track(1, shop="s_1"), 7, track(3, merchant_id="m" * 300)],
    )
    assert accepted == ["msg-0"]
    entries = quarantine.state().entries()
    assert [(e.index, e.reason, e.event_id) for e in entries] == [
        (1, "merchant_id", "msg-1"),
        (2, "schema", entries[1].event_id),
        (3, "merchant_id", "msg-3"),
    ]
    assert [e.id for e in entries] == [0, 1, 2]
    assert entries[0].error.startswith("event 1: properties.merchant_id: no merchant id")
    assert quarantine.messages([1]) == {1: b"7"}
    assert msgspec.json.decode(quarantine.messages([0])[0]) == track(1, shop="s_1")


def test_replay_after_fixing_the_configuration_brings_each_event_in_once(make_quarantine):
    quarantine = make_quarantine()
    quarantine_batch(
        quarantine,
        [track(0, shop="s_1"), track(1, merchant_id="m_1")],
        sentAt="2026-11-26T12:00:00Z",
    )
    log = MemoryLog(4)

    report = quarantine.replay(None, log, EventRules(), clock=lambda: LATER)  # not fixed yet
    assert (report.replayed, [e.id for e in report.still_invalid]) == ([], [0])
    assert events_in(log) == []
    (entry,) = quarantine.state().entries()
    assert (entry.attempts, entry.last_attempt_at, entry.reason) == (1, LATER, "merchant_id")

    report = quarantine.replay(None, log, FIXED, clock=lambda: LATER)
    assert (report.replayed, report.still_invalid) == ([0], [])
    (event,) = events_in(log)
    assert (event.event_id, event.merchant_id, event.source) == ("msg-0", "s_1", "web")
    # the receipt time and the batch's sentAt of the original request
    assert event.received_at == RECEIVED
    assert event.event_time == RECEIVED - timedelta(seconds=10)
    assert quarantine.state().entries() == []

    with pytest.raises(QuarantineError, match="no open quarantine entry 0"):
        quarantine.replay([0], log, FIXED)
    assert quarantine.replay(None, log, FIXED).replayed == []
    assert len(events_in(log)) == 1


def test_replay_can_set_the_merchant(make_quarantine):
    quarantine = make_quarantine()
    quarantine_batch(quarantine, [track(0), track(1), track(2)])
    log = MemoryLog(2)
    report = quarantine.replay([0, 2], log, EventRules(), merchant_id="m_9")
    assert report.replayed == [0, 2]
    assert sorted((e.event_id, e.merchant_id) for e in events_in(log)) == [
        ("msg-0", "m_9"),
        ("msg-2", "m_9"),
    ]
    assert [e.id for e in quarantine.state().entries()] == [1]
    with pytest.raises(QuarantineError):
        quarantine.replay([1], log, EventRules(), merchant_id="m" * 257)


def test_a_message_still_invalid_for_another_reason_keeps_the_new_one(make_quarantine):
    quarantine = make_quarantine()
    quarantine_batch(quarantine, [track(0, shop="s_1", blob="x" * 40_000)])
    (entry,) = quarantine.state().entries()
    assert entry.reason == "merchant_id"  # found first
    report = quarantine.replay(None, MemoryLog(1), FIXED)
    (still,) = report.still_invalid
    assert (still.reason, still.field, still.attempts) == ("too_large", None, 1)
    (entry,) = quarantine.state().entries()
    assert (entry.reason, entry.code, entry.attempts) == ("too_large", "event_too_large", 1)


def test_a_single_call_replays_with_the_endpoints_type(make_quarantine):
    quarantine = make_quarantine()
    quarantine_batch(quarantine, [{"userId": "u1", "traits": {"shop": "s_2"}}], "identify")
    log = MemoryLog(1)
    assert quarantine.replay(None, log, EventRules(merchant_id_paths=("traits.shop",))).replayed
    (event,) = events_in(log)
    assert (event.type, event.merchant_id, event.context["userId"]) == ("identify", "s_2", "u1")


def test_purge_closes_entries_and_never_replays_them(make_quarantine):
    quarantine = make_quarantine()
    quarantine_batch(quarantine, [track(0), track(1), track(2)])
    quarantine.purge([1])
    assert [e.id for e in quarantine.state().entries()] == [0, 2]
    with pytest.raises(QuarantineError, match="no open quarantine entry 1, 7"):
        quarantine.purge([1, 7, 0])
    assert len(quarantine.state()) == 2  # nothing done when an id is not open
    quarantine.purge(None)
    assert quarantine.state().entries() == []
    records = [decode(e.value)[0] for e in LogReader(quarantine.log(), 0, 0)]
    assert [type(r) for r in records] == [Quarantined] * 3 + [Resolved] * 3  # append-only


def test_the_state_reads_only_new_records(make_quarantine):
    quarantine = make_quarantine()
    state = quarantine.state()
    assert len(state) == 0
    quarantine_batch(quarantine, [track(0), track(1)])
    state.refresh(quarantine)
    assert len(state) == 2
    quarantine.purge([0])
    quarantine_batch(quarantine, [track(2, merchant_id="x", blob="y" * 40_000)])
    state.refresh(quarantine)
    assert [(e.id, e.reason) for e in state.entries()] == [(1, "merchant_id"), (3, "too_large")]
    assert state.by_reason() == {"merchant_id": 1, "too_large": 1}
    assert state.position == 4


def test_summary_is_bounded_and_newest_first(make_quarantine):
    quarantine = make_quarantine()
    quarantine_batch(quarantine, [track(i) for i in range(5)] + [3])
    body = summary(quarantine, quarantine.state(), limit=3)
    assert body["total"] == 6
    assert body["by_reason"] == {"merchant_id": 5, "schema": 1}
    assert [e["id"] for e in body["latest"]] == [5, 4, 3]
    assert body["latest"][0]["message"] == "3"
    assert body["latest"][1]["message"].startswith('{"type":"track"')


def test_a_file_quarantine_lives_in_the_data_dir_with_one_partition(tmp_path):
    config = Config(data_dir=str(tmp_path), log=LogConfig(partitions=8))
    assert open_quarantine_log(config, create=False) is None
    log = open_quarantine_log(config)
    assert isinstance(log, FileLog)
    assert (log.partitions, log.path) == (1, tmp_path / "quarantine")
    quarantine_batch(Quarantine.on(log), [track(0)])
    log.close()
    reopened = open_quarantine_log(config, create=False)
    assert reopened is not None
    assert len(Quarantine.on(reopened).state()) == 1
    reopened.close()


def test_a_kafka_quarantine_is_a_topic_of_its_own(tmp_path):
    from mercato.log.kafka_mock import MockKafkaCluster

    with MockKafkaCluster(brokers=1) as cluster:
        settings = LogConfig(
            backend="kafka", partitions=4, kafka_bootstrap_servers=cluster.bootstraps,
            kafka_topic="events", kafka_linger_ms=1,
        )  # fmt: skip
        config = Config(data_dir=str(tmp_path), log=settings)
        with pytest.raises(LogError, match="run `mercato quarantine create-topic`"):
            open_quarantine_log(config)
        cluster.create_topic("events-quarantine", 1)
        log = open_quarantine_log(config)
        assert log is not None
        try:
            quarantine_batch(Quarantine.on(log), [track(0)])
            assert len(Quarantine.on(log).state()) == 1
        finally:
            log.close()


def test_a_collector_on_kafka_quarantines_into_the_topic_and_503s_without_it(tmp_path):
    import base64

    from mercato.collector.app import CollectorApp
    from mercato.collector.keys import KeyStore
    from mercato.config import CollectorConfig
    from mercato.log.kafka import KafkaLog
    from mercato.log.kafka_mock import MockKafkaCluster
    from tests.inprocess import call

    keys = KeyStore(tmp_path / "keys.json", reload_interval=0)
    _, secret = keys.create("web")
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(f"{secret}:".encode()).decode(),
    }
    body = msgspec.json.encode({"batch": [track(0, merchant_id="m_1"), track(1)]})
    with MockKafkaCluster(brokers=1) as cluster:
        settings = kafka_config(cluster, 2)
        config = Config(data_dir=str(tmp_path), log=settings)
        log = KafkaLog(settings)
        quarantine = Quarantine(
            lambda: open_quarantine_log(config) or MemoryLog(0), retry_seconds=0
        )
        app = CollectorApp(CollectorConfig(), log, keys, quarantine=quarantine)
        try:
            response = call(app, "POST", "/v1/batch", body, headers)
            assert (response.status, response.json()["code"]) == (503, "quarantine_unavailable")
            assert "mercato quarantine create-topic" in response.json()["message"]
            cluster.create_topic(f"{settings.kafka_topic}-quarantine", 1)
            response = call(app, "POST", "/v1/batch", body, headers)
            assert response.status == 200, response.body
            assert response.json()["accepted"] == 1
            (entry,) = quarantine.state().entries()
            assert (entry.event_id, entry.reason) == ("msg-1", "merchant_id")
            # the quarantine is opened before anything is written: the 503 stored nothing
            assert [e.event_id for e in events_in(log)] == ["msg-0"]
        finally:
            app.close()
            quarantine.close()
            log.close()
