"""Which log partitions a consumer process owns: fixed by configuration, or shared by a group.

A consumer (the aggregator) asks its :class:`Assignment` between batches which partitions
are its own now, and tells it the offsets it has stored. Ownership only says where to read;
the offsets that count live in the Mercato store, and a store write is fenced on them
(``Store.write(expect=...)``), so two processes that both believe they own a partition for a
moment (a stalled one whose session expired, during a rebalance) never both count a record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mercato.config import LogConfig
    from mercato.log.base import Log


class Assignment(Protocol):
    """The partitions this process consumes."""

    def owned(self) -> list[int]:
        """The partitions owned now, in order. Serves the group's pending rebalance
        callbacks, so it is called between batches, at least every few seconds."""
        ...

    def stored(self, offsets: Mapping[int, int]) -> None:
        """The consumer stored these next offsets (shown to Kafka's lag tools)."""
        ...

    def close(self) -> None:
        """Leave the group (its partitions move to the others at once)."""
        ...

    @property
    def description(self) -> str:
        """For logs and the start-up line."""
        ...


class StaticAssignment:
    """The configured partitions, or all of them; never changes."""

    def __init__(self, partitions: Sequence[int], total: int) -> None:
        # the consumer checks the range (Aggregator.assign), as it does for any assignment
        self._partitions = sorted(set(partitions)) if partitions else list(range(total))
        self.description = f"partitions {self._partitions} of {total}"

    def owned(self) -> list[int]:
        return list(self._partitions)

    def stored(self, offsets: Mapping[int, int]) -> None:
        pass

    def close(self) -> None:
        pass


def open_assignment(
    log: Log,
    config: LogConfig,
    partitions: Sequence[int],
    group: str,
    session_timeout_ms: int,
) -> Assignment:
    """Static when ``partitions`` are given, the log is not Kafka, or ``group`` is empty;
    otherwise membership of the Kafka consumer group ``group``."""
    if partitions or config.backend != "kafka" or not group:
        return StaticAssignment(partitions, log.partitions)
    from mercato.log.kafka_group import KafkaGroupAssignment  # noqa: PLC0415 (extra [kafka])

    return KafkaGroupAssignment(config, group, session_timeout_ms)
