"""Errors of the event model.

::

    MercatoError
    └── EventError              an event is unacceptable: a native request is rejected whole,
        │                       a Segment message is quarantined alone
        ├── InvalidEventError   bad JSON, schema, or timestamp; names the event index and field
        └── EventTooLargeError  one event is over the size limit

Every error has a ``reason``, one of :data:`REASONS`: a short, bounded name of what is wrong,
for metrics and the quarantine (``code`` stays what the HTTP error body has always said).
"""

from __future__ import annotations

from typing import Literal

from mercato.errors import MercatoError

Reason = Literal["malformed", "schema", "merchant_id", "timestamp", "too_large", "too_deep"]
REASONS: tuple[Reason, ...] = (
    "malformed",  # not decodable: invalid JSON, or nested too deeply for the decoder
    "schema",  # a field is missing, of the wrong type, or unknown
    "merchant_id",  # no merchant id, or not 1 to 256 characters
    "timestamp",  # too far in the past or the future
    "too_large",  # over [collector] max_event_bytes
    "too_deep",  # nested deeper than [collector] max_nesting_depth
)


class EventError(MercatoError):
    """An event is unacceptable (the request's, or in a Segment batch the message's)."""

    code = "invalid_event"
    reason: Reason = "schema"

    def __init__(
        self,
        message: str,
        index: int | None = None,
        field: str | None = None,
        *,
        reason: Reason | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.index = index
        self.field = field
        if reason is not None:
            self.reason = reason

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.index is not None:
            body["index"] = self.index
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidEventError(EventError):
    """Bad JSON, a schema violation, or an unacceptable timestamp."""


class EventTooLargeError(EventError):
    """One event is larger than the configured maximum."""

    code = "event_too_large"
    reason: Reason = "too_large"
