"""Errors of the log role.

::

    MercatoError
    └── LogError
        ├── LogCorruptionError      a stored frame fails its checksum: refuse, never skip
        ├── LogWriteError           an append could not be made durable (disk full, I/O error)
        ├── LogLayoutError          the log on disk does not match the configuration
        └── OffsetOutOfRangeError   the offset was deleted by retention

    BadFrame                    an invalid frame (inside the log; callers turn it into the above)
"""

from mercato.errors import MercatoError


class LogError(MercatoError):
    """Base class of the log's errors."""


class LogCorruptionError(LogError):
    """Stored data failed its checksum or framing; the log refuses to go past it."""


class LogWriteError(LogError):
    """An append was not made durable; none of its records were acknowledged."""


class LogLayoutError(LogError):
    """The log directory does not match the configuration (e.g. a different partition count)."""


class OffsetOutOfRangeError(LogError):
    """The requested offset is older than the oldest record still kept."""

    def __init__(self, partition: int, offset: int, start: int) -> None:
        super().__init__(
            f"partition {partition}: offset {offset} was deleted by retention; "
            f"the oldest kept offset is {start}"
        )
        self.partition = partition
        self.offset = offset
        self.start = start


class BadFrame(Exception):
    """An invalid frame at byte ``pos``; callers turn it into an error or a truncation."""

    def __init__(self, pos: int, reason: str) -> None:
        super().__init__(f"byte {pos}: {reason}")
        self.pos = pos
        self.reason = reason


# Log errors no retry mends (the log's data or layout is wrong, or records were deleted):
# a consumer stops on them, and rides out any other LogError (brokers away) by trying again.
PERMANENT = (LogCorruptionError, LogLayoutError, OffsetOutOfRangeError)
