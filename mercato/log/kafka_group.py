"""Partition ownership by Kafka consumer group membership (the aggregators' scale-out).

The group only decides who owns which partition. The member's consumer subscribes to the
topic with the ``cooperative-sticky`` assignor, so a rebalance moves only the partitions that
must move, and pauses every partition it is given: it never fetches a record. Records are
read by the log (:class:`~mercato.log.kafka.KafkaLog`) at the offsets kept in the Mercato
store; the offsets committed to the group after each stored batch are informational, for
standard lag tools (``kafka-consumer-groups --describe``), and never read back.

Rebalance callbacks run inside :meth:`KafkaGroupAssignment.owned`, which the consumer calls
between batches: a partition is given up only once the batch holding it has been stored.
A member that stops calling (killed, stalled) loses its partitions after
``session_timeout_ms``; if it wakes up and writes, the store's offset fence refuses it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from mercato.log.errors import LogError
from mercato.log.kafka_admin import client_settings, describe, topic_partitions

if TYPE_CHECKING:
    from mercato.config import LogConfig

logger = logging.getLogger(__name__)


class KafkaGroupAssignment:
    """This process's share of ``config.kafka_topic`` in the consumer group ``group``."""

    def __init__(self, config: LogConfig, group: str, session_timeout_ms: int) -> None:
        self.topic = config.kafka_topic
        self.description = f"partitions by kafka consumer group {group!r}"
        self._owned: set[int] = set()
        try:
            self._consumer = self._join(config, group, session_timeout_ms)
        except KafkaException as exc:
            raise LogError(f"kafka: joining group {group!r}: {describe(exc)}") from None

    def _join(self, config: LogConfig, group: str, session_timeout_ms: int) -> Any:
        consumer = Consumer(
            client_settings(
                config,
                **{
                    "client.id": f"mercato-{group}",
                    "group.id": group,
                    "partition.assignment.strategy": "cooperative-sticky",
                    "session.timeout.ms": session_timeout_ms,
                    "heartbeat.interval.ms": max(100, session_timeout_ms // 5),
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "logger": logger,
                    "error_cb": self._on_error,
                },
            )
        )
        try:
            topic_partitions(consumer, config)
            consumer.subscribe(
                [self.topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
        except (LogError, KafkaException):
            consumer.close()
            raise
        return consumer

    def _on_error(self, err: KafkaError) -> None:
        logger.warning("kafka group member: %s", err.str())

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        consumer.incremental_assign(partitions)
        consumer.pause(partitions)  # ownership only: the log reads the records
        added = {tp.partition for tp in partitions}
        self._owned |= added
        if added:
            logger.info("kafka group: assigned partitions %s", sorted(added))

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        removed = {tp.partition for tp in partitions}
        self._owned -= removed
        consumer.incremental_unassign(partitions)
        if removed:
            logger.info("kafka group: revoked partitions %s", sorted(removed))

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        logger.warning("kafka group: lost partitions %s (session expired)", partitions)
        self._on_revoke(consumer, partitions)

    def owned(self) -> list[int]:
        try:
            message = self._consumer.poll(0)  # serves rebalance callbacks; fetches nothing
        except KafkaException as exc:  # the group is unreachable: keep what is owned; the
            # session expires if this lasts, and the store's fence covers the overlap
            logger.warning("kafka group member: %s", describe(exc))
            return sorted(self._owned)
        error = message.error() if message is not None else None
        if error is not None:
            logger.warning("kafka group member: %s", error.str())
        return sorted(self._owned)

    def stored(self, offsets: Mapping[int, int]) -> None:
        mine = [TopicPartition(self.topic, p, o) for p, o in offsets.items() if p in self._owned]
        if not mine:
            return
        try:
            self._consumer.commit(offsets=mine, asynchronous=True)
        except KafkaException as exc:  # informational only: lag tools show older offsets
            logger.debug("kafka group: offset commit failed: %s", describe(exc))

    def close(self) -> None:
        self._consumer.close()
        self._owned.clear()
