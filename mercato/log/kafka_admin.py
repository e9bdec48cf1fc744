"""Topic administration for the Kafka log: what ``mercato kafka create-topics|check`` call."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from mercato.log.errors import LogError, LogLayoutError

if TYPE_CHECKING:
    from mercato.config import LogConfig

TIMEOUT_SECONDS = 10.0


class PartitionHealth(msgspec.Struct, frozen=True):
    """One partition of the topic as the brokers describe it."""

    partition: int
    leader: int
    replicas: list[int]
    in_sync: list[int]
    start_offset: int
    end_offset: int


def client_settings(config: LogConfig, **extra: Any) -> dict[str, Any]:
    """The librdkafka settings every Mercato client of the topic starts from: the brokers,
    TLS and SASL as configured, and a reconnect backoff of at most a second (librdkafka's
    default grows to 10 s, long enough to time out batches waiting for a broker that is back).
    """
    settings: dict[str, Any] = {
        "bootstrap.servers": config.kafka_bootstrap_servers,
        "security.protocol": config.kafka_security_protocol,
        "reconnect.backoff.max.ms": 1000,
    }
    if config.kafka_security_protocol.startswith("sasl"):
        settings |= {
            "sasl.mechanisms": config.kafka_sasl_mechanism,
            "sasl.username": config.kafka_sasl_username,
            "sasl.password": config.kafka_sasl_password,
        }
    if config.kafka_ssl_ca_location and config.kafka_security_protocol.endswith("ssl"):
        settings["ssl.ca.location"] = config.kafka_ssl_ca_location
    return settings | extra


def _client(kind: Any, settings: dict[str, Any]) -> Any:
    try:
        return kind(settings)
    except KafkaException as exc:  # settings librdkafka refuses
        raise LogError(f"kafka client settings: {describe(exc)}") from None


def describe(exc: KafkaException) -> str:
    """A Kafka exception as one line."""
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


def topic_partitions(client: Any, config: LogConfig) -> dict[int, Any]:
    """The partitions' metadata of ``[log] kafka_topic``; fails unless it has
    ``[log] partitions`` partitions. ``client`` is any confluent-kafka client.

    The metadata asked for is every topic's: a broker that creates topics on demand (Apache
    Kafka's default ``auto.create.topics.enable``) answers a request naming a missing topic
    by creating it with its default partition count, which a request for all never does.
    """
    try:
        metadata = client.list_topics(timeout=TIMEOUT_SECONDS)
    except KafkaException as exc:
        raise LogError(f"kafka at {config.kafka_bootstrap_servers}: {describe(exc)}") from None
    topic = metadata.topics.get(config.kafka_topic)
    if topic is None or topic.error is not None or not topic.partitions:
        raise LogLayoutError(
            f"kafka topic {config.kafka_topic!r} does not exist; run `mercato kafka create-topics`"
        )
    if len(topic.partitions) != config.partitions:
        raise LogLayoutError(
            f"kafka topic {config.kafka_topic!r} has {len(topic.partitions)} partitions, "
            f"the configuration says {config.partitions} (log.partitions)"
        )
    partitions: dict[int, Any] = topic.partitions
    return partitions


def create_topic(
    config: LogConfig, replication_factor: int | None = None, admin: AdminClient | None = None
) -> bool:
    """Create the topic with ``[log] partitions`` partitions; False if it exists already
    (with the right partition count, or this fails). ``admin``: the client to ask (default:
    one on the configured brokers)."""
    if admin is None:  # a producer-type client, which librdkafka lets ask for auto-creation
        settings = client_settings(config, **{"allow.auto.create.topics": False})
        admin = _client(AdminClient, settings)
    try:
        topic_partitions(admin, config)
        return False
    except LogLayoutError as exc:
        if "does not exist" not in str(exc):
            raise
    replicas = replication_factor or config.kafka_replication_factor
    new = NewTopic(config.kafka_topic, config.partitions, replicas)
    futures = admin.create_topics([new], request_timeout=TIMEOUT_SECONDS)
    try:
        futures[config.kafka_topic].result(timeout=TIMEOUT_SECONDS * 2)
    except KafkaException as exc:
        message = f"cannot create kafka topic {config.kafka_topic!r}: {describe(exc)}"
        raise LogError(message) from None
    except TimeoutError:
        raise LogError(f"cannot create kafka topic {config.kafka_topic!r}: timed out") from None
    return True


def check_topic(config: LogConfig) -> list[PartitionHealth]:
    """Every partition of the topic with its leader, replicas and offsets; fails on a
    missing topic, another partition count or a partition without a leader."""
    settings = client_settings(config, **{"group.id": "mercato-check", "enable.auto.commit": False})
    consumer = _client(Consumer, settings)
    try:
        health = []
        for p, meta in sorted(topic_partitions(consumer, config).items()):
            if meta.leader < 0:
                raise LogError(f"kafka topic {config.kafka_topic!r}: partition {p} has no leader")
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(config.kafka_topic, p), timeout=TIMEOUT_SECONDS
                )
            except KafkaException as exc:
                raise LogError(f"kafka partition {p}: {describe(exc)}") from None
            health.append(
                PartitionHealth(p, meta.leader, list(meta.replicas), list(meta.isrs), low, high)
            )
        return health
    finally:
        consumer.close()
