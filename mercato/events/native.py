"""Mercato's native event format, posted to ``POST /v1/events`` as a JSON array or NDJSON::

    {"event_id": "…", "type": "order_completed", "merchant_id": "m_42",
     "timestamp": "2026-11-26T10:00:00.123Z", "sent_at": "2026-11-26T10:00:01Z",
     "properties": {"amount": 1999, "currency": "EUR"}, "context": {"channel": "web"}}

``event_id``, ``sent_at``, ``properties`` and ``context`` are optional; timestamps are RFC 3339
with an offset. This is the collector's hot path: decoding and validation happen in msgspec's C
code and the payload objects are passed through as the raw JSON the client sent.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from mercato.events.model import AwareTime, OutgoingEvent, Text
from mercato.events.rules import (
    EventRules,
    id_prefix,
    invalid_from_msgspec,
    too_far_in_future,
    too_large,
)
from mercato.log.base import Record


class NativeEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    type: Text
    merchant_id: Text
    timestamp: AwareTime
    event_id: Text | None = None
    sent_at: AwareTime | None = None
    # objects are checked in C; their values pass through as the raw JSON the client sent
    properties: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)
    context: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)


_array = msgspec.json.Decoder(list[NativeEvent])
_line = msgspec.json.Decoder(NativeEvent)
_encode = msgspec.json.Encoder().encode


def decode_native(body: bytes, *, ndjson: bool) -> list[NativeEvent]:
    """Decode and validate a request body; errors name the event index and field."""
    try:
        return _line.decode_lines(body) if ndjson else _array.decode(body)
    except msgspec.MsgspecError as exc:
        raise invalid_from_msgspec(exc) from None


def normalize_native(
    events: list[NativeEvent], received_at: datetime, source: str, rules: EventRules
) -> list[Record]:
    """The log records for ``events``, or an error for the first unacceptable one."""
    latest = received_at + rules.max_future
    max_bytes = rules.max_event_bytes
    prefix = id_prefix()
    records: list[Record] = []
    append = records.append
    for i, event in enumerate(events):
        original = event.timestamp
        sent_at = event.sent_at
        if sent_at is None:
            event_time = original if original.tzinfo is UTC else original.astimezone(UTC)
        else:
            event_time = received_at - (sent_at - original)
        if event_time > latest:
            raise too_far_in_future(i, "timestamp")
        value = _encode(
            OutgoingEvent(
                event.event_id or f"{prefix}{i:04x}",
                event.merchant_id,
                event.type,
                event_time,
                original,
                sent_at,
                received_at,
                event.properties,
                event.context,
                source,
            )
        )
        if len(value) > max_bytes:
            raise too_large(i, len(value), max_bytes)
        append(Record(event.merchant_id, value))
    return records
