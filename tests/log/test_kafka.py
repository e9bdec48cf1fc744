"""KafkaLog beyond the shared contract: the partitioner, the topic check, and failures
injected into librdkafka's mock cluster (brokers down, produce errors, a full queue)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import KafkaError, Message, Producer

from mercato.config import Config, LogConfig
from mercato.events.model import decode_event
from mercato.log import open_log
from mercato.log.base import LogReader, Record, partition_for
from mercato.log.errors import LogError, LogLayoutError, LogWriteError, OffsetOutOfRangeError
from mercato.log.kafka import KafkaLog
from mercato.log.kafka_admin import check_topic, client_settings
from mercato.log.kafka_mock import MockKafkaCluster
from mercato.query.server import LogOpener

from .conftest import kafka_config

PRODUCE = 0  # the Kafka protocol's ApiKey of Produce requests


@pytest.fixture
def cluster() -> Iterator[MockKafkaCluster]:
    """A cluster of its own, for tests that break it."""
    with MockKafkaCluster(brokers=3) as c:
        yield c


@pytest.fixture
def kafka_log(cluster: MockKafkaCluster) -> Iterator[KafkaLog]:
    log = KafkaLog(kafka_config(cluster, 4, kafka_delivery_timeout_ms=1500))
    yield log
    log.close()


def everything(log: KafkaLog) -> list[tuple[str, bytes]]:
    return [(e.key, e.value) for p in range(log.partitions) for e in LogReader(log, p, 0)]


KEYS = ["123456789", "merchant-1", "m_8f3a2c", "ünïcødé-shop", ""] + [f"m_{i}" for i in range(300)]


@pytest.mark.parametrize("partitions", [1, 7, 12])
def test_librdkafka_consistent_partitioner_agrees_with_partition_for(
    kafka_cluster: MockKafkaCluster, partitions: int
) -> None:
    # A producer writing straight to the topic with librdkafka's own partitioner must route
    # every merchant to the partition the collector and the aggregators expect.
    config = kafka_config(kafka_cluster, partitions)
    producer = Producer(
        {"bootstrap.servers": kafka_cluster.bootstraps, "partitioner": "consistent"}
    )
    routed: dict[str, int] = {}

    def delivered(err: KafkaError | None, msg: Message) -> None:
        assert err is None
        key, partition = msg.key(), msg.partition()
        assert key is not None
        assert partition is not None
        routed[key.decode()] = partition

    for key in KEYS:
        producer.produce(config.kafka_topic, b"v", key.encode(), on_delivery=delivered)
    assert producer.flush(30) == 0
    assert routed == {key: partition_for(key, partitions) for key in KEYS}
    assert len(set(routed.values())) == partitions


def test_a_missing_topic_or_another_partition_count_is_refused(
    kafka_cluster: MockKafkaCluster,
) -> None:
    config = kafka_config(kafka_cluster, 3)
    with pytest.raises(LogLayoutError, match="has 3 partitions, the configuration says 5"):
        KafkaLog(msgspec.structs.replace(config, partitions=5))


def test_open_log_picks_kafka(kafka_cluster: MockKafkaCluster) -> None:
    log = open_log(Config(log=kafka_config(kafka_cluster, 2)))
    try:
        assert isinstance(log, KafkaLog)
        assert log.partitions == 2
    finally:
        log.close()


def test_another_client_reads_what_one_wrote(kafka_cluster: MockKafkaCluster) -> None:
    config = kafka_config(kafka_cluster, 3)
    with_writer, with_reader = KafkaLog(config), KafkaLog(config)
    try:
        batch = [Record(f"m{i % 5}", f"v{i}".encode()) for i in range(100)]
        positions = with_writer.append(batch)
        for record, position in zip(batch, positions, strict=True):
            [entry] = with_reader.read(position.partition, position.offset, 1)
            assert (entry.key, entry.value) == (record.key, record.value)
        assert sorted(everything(with_reader)) == sorted((r.key, r.value) for r in batch)
    finally:
        with_writer.close()
        with_reader.close()


def test_all_brokers_down_fails_the_batch_and_up_again_accepts(
    cluster: MockKafkaCluster, kafka_log: KafkaLog
) -> None:
    kafka_log.append([Record("m1", b"before")])
    cluster.all_brokers_down()
    started = time.monotonic()
    with pytest.raises(LogWriteError, match="did not acknowledge"):
        kafka_log.append([Record("m1", b"while down"), Record("m2", b"while down")])
    assert time.monotonic() - started < 20
    cluster.all_brokers_up()
    # The producer reconnects within a second or so (reconnect.backoff.max.ms); on a busy
    # machine a batch may still time out before it has, and a client retries on the 503.
    for attempt in range(10):
        after = f"after {attempt}".encode()
        try:
            kafka_log.append([Record("m1", after), Record("m2", after)])
            break
        except LogWriteError:
            continue
    else:
        pytest.fail("the log accepted nothing within 10 attempts after the brokers came back")
    stored = everything(kafka_log)
    # The idempotent producer never stores an acknowledged record twice, nor loses one.
    assert stored.count(("m1", b"before")) == 1
    assert stored.count(("m1", after)) == 1
    assert stored.count(("m2", after)) == 1


@pytest.mark.parametrize(
    "errors",
    [
        [KafkaError.NOT_LEADER_FOR_PARTITION] * 3,
        [KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_ENOUGH_REPLICAS],
    ],
)
def test_retriable_produce_errors_are_retried_without_duplicates(
    cluster: MockKafkaCluster, kafka_log: KafkaLog, errors: list[int]
) -> None:
    cluster.push_request_errors(PRODUCE, errors)
    batch = [Record(f"m{i % 3}", f"v{i}".encode()) for i in range(30)]
    positions = kafka_log.append(batch)
    assert len(positions) == 30
    assert sorted(everything(kafka_log)) == sorted((r.key, r.value) for r in batch)


def test_a_permanent_produce_error_fails_the_batch(
    cluster: MockKafkaCluster, kafka_log: KafkaLog
) -> None:
    cluster.push_request_errors(PRODUCE, [KafkaError.MSG_SIZE_TOO_LARGE])
    with pytest.raises(LogWriteError):
        kafka_log.append([Record("m1", b"refused")])
    kafka_log.append([Record("m1", b"accepted")])
    assert everything(kafka_log) == [("m1", b"accepted")]


def test_a_full_producer_queue_fails_at_once(cluster: MockKafkaCluster) -> None:
    log = KafkaLog(kafka_config(cluster, 2, kafka_queue_max_messages=10))
    try:
        cluster.all_brokers_down()
        future = log.submit([Record(f"m{i}", b"x") for i in range(50)])
        with pytest.raises(LogWriteError, match="queue is full"):
            future.result(timeout=5)
    finally:
        cluster.all_brokers_up()
        log.close()


def test_close_waits_for_batches_in_flight(kafka_cluster: MockKafkaCluster) -> None:
    config = kafka_config(kafka_cluster, 2, kafka_linger_ms=200)
    log = KafkaLog(config)
    futures = [log.submit([Record(f"m{i}", b"x")]) for i in range(20)]
    log.close()
    assert all(f.done() and f.exception() is None for f in futures)
    reopened = KafkaLog(config)
    try:
        assert sum(reopened.end_offset(p) for p in range(2)) == 20
    finally:
        reopened.close()


def test_the_documented_message_of_a_direct_producer_is_read_back(
    kafka_cluster: MockKafkaCluster,
) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("Producers may write to the topic directly") :]
    example = section[section.index("```json") + len("```json") : section.index("```\n", 8)]
    config = kafka_config(kafka_cluster, 5)
    producer = Producer(
        {
            "bootstrap.servers": kafka_cluster.bootstraps,
            "partitioner": "consistent",
            "acks": "all",
            "enable.idempotence": True,
        }
    )
    producer.produce(config.kafka_topic, example.strip().encode(), b"m_42")
    assert producer.flush(30) == 0
    with KafkaLog(config) as log:
        [entry] = log.read(partition_for("m_42", 5), 0)
    event = decode_event(entry.value)
    assert (entry.key, event.merchant_id, event.properties) == (
        "m_42",
        "m_42",
        {"amount": 1250, "currency": "EUR"},
    )


def test_a_fatal_producer_error_fails_the_batch_and_a_new_producer_takes_over(
    cluster: MockKafkaCluster, kafka_log: KafkaLog
) -> None:
    kafka_log.append([Record("m1", b"first")])
    # The idempotent producer cannot recover from a lost sequence: librdkafka makes it fatal.
    cluster.push_request_errors(PRODUCE, [KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER])
    with pytest.raises(LogWriteError):
        kafka_log.append([Record("m1", b"lost")])
    for i in range(3):
        kafka_log.append([Record("m1", f"after-{i}".encode())])
    stored = [v for _, v in everything(kafka_log)]
    assert stored[0] == b"first"
    assert stored[-3:] == [b"after-0", b"after-1", b"after-2"]


def test_close_fails_what_kafka_never_acknowledged_instead_of_hanging(
    cluster: MockKafkaCluster,
) -> None:
    log = KafkaLog(kafka_config(cluster, 2, kafka_delivery_timeout_ms=60_000))
    log.append([Record("m1", b"x")])
    cluster.all_brokers_down()
    try:
        pending = log.submit([Record("m1", b"y")])
        log.config = msgspec.structs.replace(log.config, kafka_delivery_timeout_ms=500)
        started = time.monotonic()
        log.close()
        assert time.monotonic() - started < 10
        with pytest.raises(LogWriteError):
            pending.result(timeout=1)
        with pytest.raises(LogWriteError, match="closed"):
            log.submit([Record("m1", b"z")]).result(timeout=1)
    finally:
        cluster.all_brokers_up()


def test_the_query_api_opens_the_kafka_log_once_it_exists(kafka_cluster: MockKafkaCluster) -> None:
    config = kafka_config(kafka_cluster, 2)
    missing = LogOpener(Config(log=msgspec.structs.replace(config, kafka_topic="not-yet")))
    assert missing() is None
    opener = LogOpener(Config(log=config))
    try:
        log = opener()
        assert isinstance(log, KafkaLog)
        assert opener() is log
    finally:
        opener.close()


def test_records_the_brokers_deleted_are_out_of_range(kafka_cluster: MockKafkaCluster) -> None:
    # The mock keeps a bounded tail of each partition (a few MB), as retention would.
    with KafkaLog(kafka_config(kafka_cluster, 1)) as log:
        for i in range(12):
            log.append([Record("m", bytes([i]) * 100_000) for _ in range(10)])
        start = log.start_offset(0)
        assert 0 < start < log.end_offset(0) == 120
        with pytest.raises(OffsetOutOfRangeError, match=f"oldest kept offset is {start}"):
            log.read(0, 0)
        assert [e.offset for e in log.read(0, start, 3)] == [start, start + 1, start + 2]
        assert log.stats()[0].start_offset == start


def test_every_client_takes_the_configured_tls_and_sasl_settings() -> None:
    config = LogConfig(
        backend="kafka",
        kafka_bootstrap_servers="broker-1:9093",
        kafka_security_protocol="sasl_ssl",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="mercato",
        kafka_sasl_password="s3cret",
        kafka_ssl_ca_location="/etc/ssl/kafka-ca.pem",
    )
    settings = client_settings(config, **{"group.id": "g"})
    assert settings["security.protocol"] == "sasl_ssl"
    assert settings["sasl.mechanisms"] == "SCRAM-SHA-512"
    assert (settings["sasl.username"], settings["sasl.password"]) == ("mercato", "s3cret")
    assert settings["ssl.ca.location"] == "/etc/ssl/kafka-ca.pem"
    assert settings["group.id"] == "g"
    plain = client_settings(LogConfig(backend="kafka"))
    assert plain["security.protocol"] == "plaintext"
    assert not any(key.startswith(("sasl.", "ssl.")) for key in plain)


def test_a_client_speaking_sasl_to_a_plaintext_broker_fails_with_one_clear_error(
    cluster: MockKafkaCluster,
) -> None:
    # librdkafka's mock cluster speaks plaintext only, so SASL itself cannot be tried here;
    # a misconfigured protocol must still end in a LogError, not a hang or a traceback
    incomplete = kafka_config(cluster, 2, kafka_security_protocol="sasl_plaintext")
    with pytest.raises(LogError, match=r"kafka client settings: .*sasl\.username"):
        KafkaLog(incomplete)
    with pytest.raises(LogError, match=r"kafka client settings: .*sasl\.username"):
        check_topic(incomplete)
    refused = msgspec.structs.replace(incomplete, kafka_sasl_username="u", kafka_sasl_password="p")
    with pytest.raises(LogError, match="kafka at"):
        KafkaLog(refused)
