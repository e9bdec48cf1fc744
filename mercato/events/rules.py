"""What the collector enforces on every event, and how errors name the offending event."""

from __future__ import annotations

import itertools
import os
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from mercato.events.errors import EventTooLargeError, InvalidEventError, Reason
from mercato.events.model import TEXT_LENGTH
from mercato.events.nesting import deeper_than

if TYPE_CHECKING:
    from mercato.config import CollectorConfig

_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


class EventRules(msgspec.Struct, frozen=True):
    """Limits and mappings applied while normalizing events."""

    max_event_bytes: int = 32 * 1024
    max_future: timedelta = timedelta(days=1)
    merchant_id_paths: tuple[str, ...] = ("properties.merchant_id", "context.groupId")
    max_past: timedelta = timedelta(days=5 * 365)
    max_depth: int = 64

    @classmethod
    def of(cls, config: CollectorConfig) -> EventRules:
        """The rules of a collector configured by ``[collector]``."""
        return cls(
            max_event_bytes=config.max_event_bytes,
            max_future=timedelta(seconds=config.max_future_seconds),
            merchant_id_paths=tuple(config.segment_merchant_id_paths),
            max_past=timedelta(seconds=config.max_past_seconds),
            max_depth=config.max_nesting_depth,
        )

    def window(self, received_at: datetime) -> tuple[datetime, datetime]:
        """The earliest and latest event times acceptable for a request received then."""
        try:
            earliest = received_at - self.max_past
        except OverflowError:
            earliest = _EARLIEST
        try:
            latest = received_at + self.max_future
        except OverflowError:
            latest = _LATEST
        return earliest, latest


def event_time(
    original: datetime,
    sent_at: datetime | None,
    received_at: datetime,
    window: tuple[datetime, datetime],
    index: int,
    field: str,
) -> datetime:
    """The event time in UTC: ``original`` corrected by the client's clock skew
    (``received_at - (sent_at - original)``) when ``sent_at`` is known; an error naming the
    event and ``field`` when it falls outside ``window`` (or outside what a date can hold)."""
    try:
        if sent_at is None:
            time = original if original.tzinfo is UTC else original.astimezone(UTC)
        else:
            time = received_at - (sent_at - original)
    except OverflowError:  # before year 1 or after 9999 once moved to UTC or corrected
        late = original.year > 5000 if sent_at is None else sent_at < original
        raise (too_far_in_future if late else too_far_in_past)(index, field) from None
    if time > window[1]:
        raise too_far_in_future(index, field)
    if time < window[0]:
        raise too_far_in_past(index, field)
    return time


def check_merchant_id(value: str, index: int, field: str) -> str:
    """``value`` if it is a merchant id the native endpoint would accept (:data:`Text`: 1 to
    :data:`TEXT_LENGTH` characters), else an error naming the event and ``field``."""
    if 0 < len(value) <= TEXT_LENGTH:  # Text's rule; msgspec.convert would cost 3x
        return value
    raise InvalidEventError(
        f"event {index}: {field}: a merchant id has 1 to {TEXT_LENGTH} characters, "
        f"not {len(value)}",
        index,
        field,
        reason="merchant_id",
    )


def too_deep(index: int, limit: int, field: str | None = None) -> InvalidEventError:
    where = f"event {index}: {field + ': ' if field else ''}"
    return InvalidEventError(
        f"{where}nested more than {limit} levels deep", index, field, reason="too_deep"
    )


def check_depth(value: bytes, limit: int, index: int) -> None:
    """An error unless the encoded event ``value`` nests at most ``limit`` levels."""
    if deeper_than(value, limit):
        raise too_deep(index, limit)


_PATH = re.compile(r"^(?P<head>.*) - at `\$(?:\[(?P<index>\d+)\])?\.?(?P<field>[^`]*)`$")


def invalid_from_msgspec(
    exc: msgspec.MsgspecError, index: int | None = None, within: str | None = None
) -> InvalidEventError:
    """Turn msgspec's ``Expected `str`, got `int` - at `$[3].type``` into an error that names
    event 3 and field ``type``.

    ``index``: the event whose text alone was decoded (its errors have no index of their own);
    ``within``: the field whose value alone was decoded, to put before the error's field.
    """
    message = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        where = "request body" if index is None else f"event {index}"
        return InvalidEventError(f"{where} is not valid JSON: {message}", index, reason="malformed")
    match = _PATH.match(message)
    field: str | None = None
    head = message
    if match is not None:
        if match["index"] is not None:
            index = int(match["index"])
        field = match["field"] or None
        head = match["head"]
    if head.startswith("Object missing required field"):
        field = ".".join(filter(None, [field, head.split("`")[1]]))
        head = "required field is missing"
    elif head.startswith("Object contains unknown field"):
        field = ".".join(filter(None, [field, head.split("`")[1]]))
        head = "unknown field"
    field = ".".join(filter(None, [within, field])) or None
    where = f"event {index}" if index is not None else "request"
    reason: Reason = "merchant_id" if field == "merchant_id" else "schema"
    return InvalidEventError(
        f"{where}: {field + ': ' if field else ''}{head}", index=index, field=field, reason=reason
    )


def nested_too_deeply(index: int | None, limit: int) -> InvalidEventError:
    """The error for JSON the decoder gave up on (``RecursionError``)."""
    where = f"event {index}" if index is not None else "request body"
    return InvalidEventError(
        f"{where}: JSON nested too deeply to decode (events may nest {limit} levels)",
        index,
        reason="malformed",
    )


def too_large(index: int, size: int, limit: int) -> EventTooLargeError:
    return EventTooLargeError(
        f"event {index} is {size} bytes, over the limit of {limit} bytes", index=index
    )


def too_far_in_future(index: int, field: str) -> InvalidEventError:
    return InvalidEventError(
        f"event {index}: {field}: timestamp is too far in the future",
        index=index,
        field=field,
        reason="timestamp",
    )


def too_far_in_past(index: int, field: str) -> InvalidEventError:
    return InvalidEventError(
        f"event {index}: {field}: timestamp is too far in the past",
        index=index,
        field=field,
        reason="timestamp",
    )


_PROCESS_PREFIX = os.urandom(8).hex()
_requests = itertools.count()


def id_prefix() -> str:
    """A unique prefix for the ids of one request's events that came without one: random
    per process, then a per-process request counter (no system call on the hot path)."""
    return f"{_PROCESS_PREFIX}{next(_requests):x}-"
