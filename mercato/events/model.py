"""The normalized event: what the collector writes to the log and every consumer reads.

A log record's key is the event's ``merchant_id``; its value is the event in JSON with these
fields, either as an array of the field values in this order (what the collector writes: the
field names would be 40% of every record) or as an object with these names (convenient for
producers that write to Kafka directly). :func:`decode_event` reads both.

===================== ========================================================================
``event_id``          string; the client's id (Segment ``messageId``) or one generated on receipt
``merchant_id``       string; whose business the event belongs to
``type``              string; e.g. ``order_completed``, or a Segment track call's event name
``event_time``        RFC 3339 UTC; the corrected client time, see :func:`correct_time`
``original_timestamp`` RFC 3339 or null; the client's own clock reading, as sent
``sent_at``           RFC 3339 or null; when the client sent the request, by its own clock
``received_at``       RFC 3339 UTC; when the collector received the request
``properties``        object; the event's payload (Segment traits for identify and group)
``context``           object; where the event came from (device, page, Segment user ids)
``source``            string; the name of the source whose write key sent the event
===================== ========================================================================
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

TEXT_LENGTH = 256  # the most characters of an id, a merchant id or an event type
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=TEXT_LENGTH)]
AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]
EMPTY_OBJECT = msgspec.Raw(b"{}")


class NormalizedEvent(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One event as read back from the log."""

    event_id: Text
    merchant_id: Text
    type: Text
    event_time: AwareTime
    original_timestamp: AwareTime | None = None
    sent_at: AwareTime | None = None
    received_at: AwareTime
    properties: dict[str, Any] = msgspec.field(default_factory=dict)
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    source: str = ""


class ObjectEvent(NormalizedEvent, frozen=True, kw_only=True, array_like=False):
    """The object form of :class:`NormalizedEvent`, as direct producers may write it."""


class OutgoingEvent(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The writer's view of :class:`NormalizedEvent`: same fields and order, payloads kept as
    the raw JSON the client sent so the hot path never re-encodes them."""

    event_id: str
    merchant_id: str
    type: str
    event_time: datetime
    original_timestamp: datetime | None
    sent_at: datetime | None
    received_at: datetime
    properties: msgspec.Raw | dict[str, Any]
    context: msgspec.Raw | dict[str, Any]
    source: str


class Record(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One log record: ``key`` (the merchant id) routes it, ``value`` is the event's bytes (to
    the log, opaque).

    It serializes as ``[key, value]``, which is how the file log stores it.
    """

    key: str
    value: bytes


_decoder = msgspec.json.Decoder(NormalizedEvent)
_object_decoder = msgspec.json.Decoder(ObjectEvent)
_encoder = msgspec.json.Encoder()


def decode_event(value: bytes) -> NormalizedEvent:
    """Decode a log record's value, array or object form.

    Raises ``msgspec.ValidationError`` (or ``msgspec.DecodeError``) on a bad one.
    """
    if value.lstrip()[:1] != b"{":  # JSON may open with whitespace
        return _decoder.decode(value)
    event = _object_decoder.decode(value)
    return NormalizedEvent(**msgspec.structs.asdict(event))


def encode_event(event: NormalizedEvent | OutgoingEvent) -> bytes:
    """Encode an event as a log record's value."""
    return _encoder.encode(event)


def correct_time(original: datetime, sent_at: datetime | None, received_at: datetime) -> datetime:
    """Segment's clock-skew correction: ``received_at - (sent_at - original)``, in UTC.

    Without ``sent_at`` there is nothing to correct by and the original time stands.
    """
    if sent_at is None:
        return original if original.tzinfo is UTC else original.astimezone(UTC)
    return received_at - (sent_at - original)
