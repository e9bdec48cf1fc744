"""Mercato's native event format, posted to ``POST /v1/events`` as a JSON array or NDJSON::

    {"event_id": "…", "type": "order_completed", "merchant_id": "m_42",
     "timestamp": "2026-11-26T10:00:00.123Z", "sent_at": "2026-11-26T10:00:01Z",
     "properties": {"amount": 1999, "currency": "EUR"}, "context": {"channel": "web"}}

``event_id``, ``sent_at``, ``properties`` and ``context`` are optional; timestamps are RFC 3339
with an offset. This is the collector's hot path: decoding and validation happen in msgspec's C
code and the payload objects are passed through as the raw JSON the client sent.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import msgspec

from mercato.events.errors import InvalidEventError
from mercato.events.model import EMPTY_OBJECT, AwareTime, OutgoingEvent, Record, Text
from mercato.events.nesting import deeper_than, split
from mercato.events.rules import (
    EventRules,
    event_time,
    id_prefix,
    invalid_from_msgspec,
    nested_too_deeply,
    too_deep,
    too_large,
)


class NativeEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    type: Text
    merchant_id: Text
    timestamp: AwareTime
    event_id: Text | None = None
    sent_at: AwareTime | None = None
    # kept as the raw JSON the client sent: never parsed, never re-encoded (see _CLOSE)
    properties: msgspec.Raw = EMPTY_OBJECT
    context: msgspec.Raw = EMPTY_OBJECT


_array = msgspec.json.Decoder(list[NativeEvent])
_line = msgspec.json.Decoder(NativeEvent)
_encode = msgspec.json.Encoder().encode
# Payloads stay msgspec.Raw (valid JSON, not yet known to be objects). A JSON value whose last
# byte is "}" is an object (strings end in '"', arrays in "]", the rest in a digit or a
# letter), so the encoded record is checked at the two places where the payloads end:
# ...,<properties>,<context>,"<source>"] . Two byte lookups instead of parsing every payload
# into a dict, which costs a fifth of the collector's time in allocation and GC.
_CLOSE = ord("}")


# A number only a 64-bit float's overflow holds (1e400) needs an exponent of 3 digits or 309
# digits in a row: one scan of the body finds the requests that might have one.
_MAYBE_HUGE = re.compile(rb"[0-9][eE]\+?[0-9]{3}|[0-9]{309}")
_any = msgspec.json.Decoder()


def decode_native(body: bytes, *, ndjson: bool, max_depth: int = 64) -> list[NativeEvent]:
    """Decode and validate a request body; errors name the event index and field."""
    try:
        events = _line.decode_lines(body) if ndjson else _array.decode(body)
    except msgspec.MsgspecError as exc:
        raise invalid_from_msgspec(exc) from None
    except RecursionError:
        raise _too_deep(body, ndjson, max_depth) from None
    if _MAYBE_HUGE.search(body):
        _check_numbers(events)
    return events


def _check_numbers(events: list[NativeEvent]) -> None:
    """Refuse a payload holding a number beyond a 64-bit float (1e400): valid JSON, but no
    reader of the log could decode the event, so it would be acknowledged and then lost."""
    for i, event in enumerate(events):
        for field in ("properties", "context"):
            try:
                _any.decode(getattr(event, field))
            except msgspec.ValidationError as exc:
                raise InvalidEventError(
                    f"event {i}: {field}: {str(exc).split(' - at ')[0]} (numbers must fit a "
                    "64-bit float)",
                    index=i,
                    field=field,
                ) from None
            except RecursionError:  # measured and refused later, with its own message
                pass


def _too_deep(body: bytes, ndjson: bool, max_depth: int) -> InvalidEventError:
    """The error for a body too deep to decode, naming the first event that is (the decoder
    stopped there, so the events before it are fine)."""
    if ndjson:
        items: list[bytes] = [line for line in body.splitlines() if line.strip()]
    else:
        parts = split(body)
        items = parts.items if parts is not None and body.lstrip()[:1] == b"[" else []
    for index, item in enumerate(items):
        try:
            _line.decode(item)
        except RecursionError:
            return nested_too_deeply(index, max_depth)
        except msgspec.MsgspecError as exc:
            error = invalid_from_msgspec(exc)
            error.index = index
            return error
    return nested_too_deeply(None, max_depth)


def normalize_native(
    events: list[NativeEvent], received_at: datetime, source: str, rules: EventRules
) -> list[Record]:
    """The log records for ``events``, or an error for the first unacceptable one."""
    window = rules.window(received_at)
    earliest, latest = window
    max_bytes, max_depth = rules.max_event_bytes, rules.max_depth
    # A payload nests at most half its length deep: only long ones need measuring.
    short = 2 * max_depth
    prefix = id_prefix()
    context_end = len(_encode(source)) + 3  # from the end: "}" of the context
    records: list[Record] = []
    append = records.append
    for i, event in enumerate(events):
        original = event.timestamp
        sent_at = event.sent_at
        # the usual cases inline; event_time() for the rest, and for the error
        time: datetime | None = None
        if sent_at is None:
            if original.tzinfo is UTC:
                time = original
        else:
            try:
                time = received_at - (sent_at - original)
            except OverflowError:  # a contextlib.suppress costs a fifth of the loop
                time = None
        if time is None or not earliest <= time <= latest:
            time = event_time(original, sent_at, received_at, window, i, "timestamp")
        properties, context = event.properties, event.context
        if (len(properties) >= short or len(context) >= short) and (
            deeper_than(bytes(properties), max_depth - 1)
            or deeper_than(bytes(context), max_depth - 1)
        ):
            raise too_deep(i, max_depth)
        value = _encode(
            OutgoingEvent(
                event.event_id or f"{prefix}{i:04x}",
                event.merchant_id,
                event.type,
                time,
                original,
                sent_at,
                received_at,
                properties,
                context,
                source,
            )
        )
        if value[-context_end] != _CLOSE:
            raise _not_an_object(i, "context")
        if value[-context_end - len(context) - 1] != _CLOSE:
            raise _not_an_object(i, "properties")
        if len(value) > max_bytes:
            raise too_large(i, len(value), max_bytes)
        append(Record(event.merchant_id, value))
    return records


def _not_an_object(index: int, field: str) -> InvalidEventError:
    return InvalidEventError(f"event {index}: {field}: Expected `object`", index, field)
