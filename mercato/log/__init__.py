"""The durable, partitioned event log between collectors and every consumer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mercato.log.base import Log, LogEntry, LogReader, Position, Record, partition_for
from mercato.log.errors import LogError

if TYPE_CHECKING:
    from mercato.config import Config

__all__ = ["Log", "LogEntry", "LogReader", "Position", "Record", "open_log", "partition_for"]


def open_log(config: Config) -> Log:
    """The log the configuration names (``[log] backend``), opened and recovered."""
    if config.log.backend == "kafka":
        try:
            from mercato.log.kafka import KafkaLog
        except ImportError as exc:
            raise LogError(
                f"log.backend kafka needs confluent-kafka (mercato's kafka extra): {exc}"
            ) from None
        return KafkaLog(config.log)
    from mercato.log.file import FileLog

    return FileLog(config.log_path, config.log)
