"""The Kafka log (extra ``[kafka]``): the Log protocol over one topic, with confluent-kafka.

Records are produced to ``[log] kafka_topic`` with the merchant id as key, to the partition
``partition_for`` names (the same one librdkafka's ``consistent`` partitioner picks, so
producers writing straight to the topic agree with the collector). The producer runs with
``acks=all`` and idempotence, so a retried request is never stored twice and a partition
keeps its order. A batch is acknowledged as a whole: one future per batch, completed when
the last of its delivery reports arrives; a full local queue or a delivery timeout fails it
with :class:`~mercato.log.errors.LogWriteError` (the collector answers 503 + Retry-After).

Reads use consumers assigned to a partition and seeked to the wanted offset: no consumer
group offsets, no auto-commit. Consumers keep their offsets in the Mercato store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from mercato.log.base import (
    LogEntry,
    PartitionStats,
    Position,
    Positions,
    Record,
    partition_for,
)
from mercato.log.errors import LogError, LogWriteError, OffsetOutOfRangeError
from mercato.log.kafka_admin import client_settings, describe, topic_partitions

if TYPE_CHECKING:
    from mercato.config import LogConfig

logger = logging.getLogger(__name__)

READ_TIMEOUT_SECONDS = 30.0
METADATA_TIMEOUT_SECONDS = 10.0


class _Batch:
    """One submitted batch: counts its delivery reports and completes its future once."""

    __slots__ = ("future", "offsets", "remaining", "routes")

    def __init__(self, routes: list[int]) -> None:
        self.routes = routes
        self.remaining = len(routes)
        self.offsets: dict[int, list[int]] = {p: [] for p in set(routes)}
        self.future: Future[Sequence[Position]] = Future()

    def delivered(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.fail(LogWriteError(f"kafka did not acknowledge the batch: {err.str()}"))
            return
        self.offsets[msg.partition()].append(msg.offset())
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            # Delivery reports of one partition come in offset order, like the routes.
            self.future.set_result(Positions(self.routes, self.offsets))

    def fail(self, exc: LogError) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class KafkaLog:
    """A log on a Kafka topic of ``config.partitions`` partitions (it must exist)."""

    def __init__(self, config: LogConfig, client_id: str = "mercato") -> None:
        self.config = config
        self.topic = config.kafka_topic
        self._partitions = config.partitions
        self._common = client_settings(config, **{"client.id": client_id, "logger": logger})
        self._fatal: KafkaError | None = None
        self._produce_lock = threading.Lock()
        try:
            self._producer = self._new_producer()
            self._meta = self._consumer()
        except KafkaException as exc:  # settings librdkafka refuses
            raise LogError(f"kafka client settings: {describe(exc)}") from None
        self._meta_lock = threading.Lock()
        self._readers: dict[int, tuple[Consumer, list[int]]] = {}
        self._read_lock = threading.Lock()
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-log-poll", daemon=True)
        self._poller.start()
        self._check_topic()

    def _new_producer(self) -> Producer:
        return Producer(
            {
                **self._common,
                "acks": "all",
                "enable.idempotence": True,
                "partitioner": "consistent",
                "linger.ms": self.config.kafka_linger_ms,
                "delivery.timeout.ms": self.config.kafka_delivery_timeout_ms,
                "queue.buffering.max.messages": self.config.kafka_queue_max_messages,
                "error_cb": self._on_error,
            }
        )

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err
        else:
            logger.warning("kafka producer: %s", err.str())

    def _consumer(self) -> Consumer:
        return Consumer(
            {
                **self._common,
                "group.id": "mercato-log-reader",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
            }
        )

    def _check_topic(self) -> None:
        try:
            topic_partitions(self._meta, self.config)
        except LogError:
            self.close()
            raise

    def _poll(self) -> None:
        # The only thread that serves delivery reports while the log is open, so a batch's
        # counters are never touched by two threads at once.
        while not self._closed.is_set():
            try:
                self._producer.poll(0.05)
            except KafkaException as exc:
                self._fatal = exc.args[0] if exc.args else self._fatal
            if self._fatal is not None:
                self._replace_producer()

    def _replace_producer(self) -> None:
        """After a fatal error (the idempotent producer lost its sequence) the producer
        accepts nothing more: fail what it holds and continue with a new one."""
        logger.error("kafka producer failed, starting a new one: %s", self._fatal)
        with self._produce_lock:
            old, self._producer = self._producer, self._new_producer()
            self._fatal = None
        old.purge()
        old.flush(1.0)

    @property
    def partitions(self) -> int:
        return self._partitions

    # -- writing ------------------------------------------------------------------------------

    def submit(self, records: Sequence[Record]) -> Future[Sequence[Position]]:
        if not records:
            done: Future[Sequence[Position]] = Future()
            done.set_result([])
            return done
        n = self._partitions
        batch = _Batch([partition_for(r.key, n) for r in records])
        if self._closed.is_set():
            batch.fail(LogWriteError("the kafka log is closed"))
            return batch.future
        topic, delivered = self.topic, batch.delivered
        try:
            with self._produce_lock:
                produce = self._producer.produce
                for record, p in zip(records, batch.routes, strict=True):
                    produce(topic, record.value, record.key, p, on_delivery=delivered)
        except BufferError:
            batch.fail(LogWriteError("the kafka producer queue is full"))
        except KafkaException as exc:
            batch.fail(LogWriteError(f"kafka refused the batch: {describe(exc)}"))
        return batch.future

    def append(self, records: Sequence[Record]) -> Sequence[Position]:
        return self.submit(records).result()

    # -- reading ------------------------------------------------------------------------------

    def _watermarks(self, partition: int) -> tuple[int, int]:
        if not 0 <= partition < self._partitions:
            raise ValueError(f"no partition {partition}; the log has {self._partitions}")
        with self._meta_lock:
            try:
                low, high = self._meta.get_watermark_offsets(
                    TopicPartition(self.topic, partition), timeout=METADATA_TIMEOUT_SECONDS
                )
            except KafkaException as exc:
                raise LogError(f"kafka: offsets of {self.topic}: {describe(exc)}") from None
        return int(low), int(high)

    def start_offset(self, partition: int) -> int:
        return self._watermarks(partition)[0]

    def end_offset(self, partition: int) -> int:
        return self._watermarks(partition)[1]

    def read(self, partition: int, offset: int, max_records: int = 1000) -> list[LogEntry]:
        low, high = self._watermarks(partition)
        if offset < low:
            raise OffsetOutOfRangeError(partition, offset, low)
        want = min(max_records, high - offset)
        if want <= 0:
            return []
        with self._read_lock:
            consumer, position = self._reader(partition)
            if position[0] != offset:
                # (Re)assigning starts the fetch at ``offset``; unlike seek it is valid in any
                # state of the partition's fetcher.
                consumer.assign([TopicPartition(self.topic, partition, offset)])
            position[0] = -1  # unknown until this read succeeds
            entries = self._consume(consumer, partition, offset, want)
            position[0] = offset + len(entries)
        return entries

    def _reader(self, partition: int) -> tuple[Consumer, list[int]]:
        reader = self._readers.get(partition)
        if reader is None:
            reader = self._readers[partition] = (self._consumer(), [-1])
        return reader

    def _consume(
        self, consumer: Consumer, partition: int, offset: int, want: int
    ) -> list[LogEntry]:
        entries: list[LogEntry] = []
        deadline = time.monotonic() + READ_TIMEOUT_SECONDS
        expected = offset
        while len(entries) < want:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LogError(f"kafka: timed out reading {self.topic}/{partition} at {expected}")
            for msg in consumer.consume(want - len(entries), timeout=min(remaining, 1.0)):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise LogError(f"kafka: reading {self.topic}/{partition}: {err.str()}")
                at = msg.offset()
                if at is None or at < expected:
                    continue  # a fetch from before the seek
                if at > expected and not entries:
                    raise OffsetOutOfRangeError(partition, expected, at)
                expected = at + 1
                key = msg.key()
                entries.append(
                    LogEntry(
                        partition,
                        at,
                        msg.timestamp()[1],
                        key.decode("utf-8") if isinstance(key, bytes) else str(key or ""),
                        msg.value() or b"",
                    )
                )
        return entries

    def stats(self) -> list[PartitionStats]:
        return [
            PartitionStats(partition=p, start_offset=low, end_offset=high)
            for p in range(self._partitions)
            for low, high in [self._watermarks(p)]
        ]

    def __enter__(self) -> KafkaLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed.is_set():
            return
        deadline = time.monotonic() + self.config.kafka_delivery_timeout_ms / 1000
        while len(self._producer) and time.monotonic() < deadline and self._poller.is_alive():
            time.sleep(0.01)  # the poll thread serves the last delivery reports
        self._closed.set()
        self._poller.join()
        self._producer.purge()  # what is left fails its batch instead of waiting forever
        self._producer.flush(1.0)
        with self._read_lock:
            for consumer, _ in self._readers.values():
                consumer.close()
            self._readers.clear()
        with self._meta_lock:
            self._meta.close()
