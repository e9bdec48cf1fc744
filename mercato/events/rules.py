"""What the collector enforces on every event, and how errors name the offending event."""

from __future__ import annotations

import itertools
import os
import re
from datetime import timedelta

import msgspec

from mercato.events.errors import EventTooLargeError, InvalidEventError


class EventRules(msgspec.Struct, frozen=True):
    """Limits and mappings applied while normalizing events."""

    max_event_bytes: int = 32 * 1024
    max_future: timedelta = timedelta(days=1)
    merchant_id_paths: tuple[str, ...] = ("properties.merchant_id", "context.groupId")


_PATH = re.compile(
    r"^(?P<head>.*) - at `\$(?:\.batch)?(?:\[(?P<index>\d+)\])?\.?(?P<field>[^`]*)`$"
)


def invalid_from_msgspec(exc: msgspec.MsgspecError) -> InvalidEventError:
    """Turn msgspec's ``Expected `str`, got `int` - at `$[3].type``` into an error that names
    event 3 and field ``type``."""
    message = str(exc)
    match = _PATH.match(message)
    if not isinstance(exc, msgspec.ValidationError):
        return InvalidEventError(f"request body is not valid JSON: {message}")
    if match is None:
        return InvalidEventError(f"request: {message}")
    index = int(match["index"]) if match["index"] is not None else None
    field = match["field"] or None
    head = match["head"]
    if head.startswith("Object missing required field"):
        field = ".".join(filter(None, [field, head.split("`")[1]]))
        head = "required field is missing"
    elif head.startswith("Object contains unknown field"):
        field = ".".join(filter(None, [field, head.split("`")[1]]))
        head = "unknown field"
    where = f"event {index}" if index is not None else "request"
    return InvalidEventError(
        f"{where}: {field + ': ' if field else ''}{head}", index=index, field=field
    )


def too_large(index: int, size: int, limit: int) -> EventTooLargeError:
    return EventTooLargeError(
        f"event {index} is {size} bytes, over the limit of {limit} bytes", index=index
    )


def too_far_in_future(index: int, field: str) -> InvalidEventError:
    return InvalidEventError(
        f"event {index}: {field}: timestamp is too far in the future", index=index, field=field
    )


_PROCESS_PREFIX = os.urandom(8).hex()
_requests = itertools.count()


def id_prefix() -> str:
    """A unique prefix for the ids of one request's events that came without one: random
    per process, then a per-process request counter (no system call on the hot path)."""
    return f"{_PROCESS_PREFIX}{next(_requests):x}-"
