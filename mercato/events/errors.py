"""Errors of the event model.

::

    MercatoError
    └── EventError              a request's events are unacceptable; the batch is rejected whole
        ├── InvalidEventError   bad JSON, schema, or timestamp; names the event index and field
        └── EventTooLargeError  one event is over the size limit
"""

from __future__ import annotations

from mercato.errors import MercatoError


class EventError(MercatoError):
    """An event in a request is unacceptable, so the whole request is rejected."""

    code = "invalid_event"

    def __init__(self, message: str, index: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.index = index
        self.field = field

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
