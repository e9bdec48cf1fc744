"""Segment HTTP Tracking API compatibility, so Segment and RudderStack SDKs work unchanged.

``POST /v1/batch`` takes ``{"batch": [message, …], "sentAt": …, "context": {…}}`` and
``POST /v1/{track,identify,page,screen,group,alias}`` take one message. A message becomes a
normalized event this way:

* ``event_id`` is ``messageId`` (generated when absent);
* ``type`` is the track call's ``event`` name, or the call type (``page``, ``identify``, …);
* ``properties`` are the message's properties (``traits`` for identify and group; a page or
  screen ``name`` is added as ``properties.name``);
* ``context`` is the batch context overlaid by the message context, plus the message's
  ``userId``, ``anonymousId``, ``groupId`` and ``previousId`` when present;
* ``merchant_id`` is the first of the configured paths that is present (default
  ``properties.merchant_id``, then ``context.groupId``);
* time follows Segment: a client-set ``timestamp`` is used as is; otherwise
  ``receivedAt - (sentAt - originalTimestamp)``; otherwise ``originalTimestamp``; otherwise
  the time of receipt.

Segment's SDKs treat a 400 as final and drop the whole batch, so a batch is judged message by
message: :func:`decode_batch` only takes the request apart (an error there is the request's),
and :func:`normalize_segment` turns each message into a record or a :class:`Rejection` that
the collector quarantines. A message that cannot even be decoded (too deeply nested for the
decoder, say) is rejected alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

import msgspec

from mercato.events.errors import EventError, InvalidEventError
from mercato.events.model import EMPTY_OBJECT, AwareTime, OutgoingEvent, Record
from mercato.events.nesting import split
from mercato.events.rules import (
    EventRules,
    check_depth,
    check_merchant_id,
    event_time,
    id_prefix,
    invalid_from_msgspec,
    nested_too_deeply,
    too_large,
)

Call = Literal["track", "identify", "page", "screen", "group", "alias"]
CALLS: tuple[str, ...] = ("track", "identify", "page", "screen", "group", "alias")


class SegmentMessage(msgspec.Struct):
    type: Call | None = None
    messageId: str | None = None
    timestamp: AwareTime | None = None
    originalTimestamp: AwareTime | None = None
    sentAt: AwareTime | None = None
    userId: str | int | None = None
    anonymousId: str | int | None = None
    groupId: str | int | None = None
    previousId: str | int | None = None
    event: str | None = None
    name: str | None = None
    properties: dict[str, Any] = msgspec.field(default_factory=dict)
    traits: dict[str, Any] = msgspec.field(default_factory=dict)
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    writeKey: str | None = None


class _Envelope(msgspec.Struct):
    batch: list[msgspec.Raw]
    sentAt: AwareTime | None = None
    context: msgspec.Raw = EMPTY_OBJECT
    writeKey: str | None = None


class _Identity(msgspec.Struct):
    """What is read of a message that does not decode: its id and write key, if they do."""

    messageId: Any = None
    writeKey: Any = None


class SegmentBatch(msgspec.Struct):
    """A request taken apart: its messages still as JSON text, and what they share.

    ``call`` is the type a single-call endpoint (``/v1/track``…) gives its message; None for
    ``/v1/batch``. ``context`` is the batch context as JSON text (an object).
    """

    messages: list[msgspec.Raw]
    sent_at: datetime | None = None
    context: bytes = b"{}"
    write_key: str | None = None
    call: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message of a batch that cannot be accepted, with its text as the client sent it and
    the event id it gets if it is ever replayed."""

    index: int
    error: EventError
    message: bytes
    event_id: str


class Normalized(NamedTuple):
    records: list[Record]
    rejections: list[Rejection]


_envelope = msgspec.json.Decoder(_Envelope)
_message = msgspec.json.Decoder(SegmentMessage)
_identity = msgspec.json.Decoder(_Identity)
_context = msgspec.json.Decoder(dict[str, Any])
_sent_at = msgspec.json.Decoder(AwareTime | None)
_write_key = msgspec.json.Decoder(str | None)
_raw = msgspec.json.Decoder(msgspec.Raw)
_encode = msgspec.json.Encoder().encode


def decode_batch(body: bytes, max_depth: int = 64) -> SegmentBatch:
    """Take a ``/v1/batch`` body apart; an error is the whole request's (not JSON, not an
    object with a ``batch`` array, a bad ``sentAt``, ``context`` or ``writeKey``)."""
    try:
        envelope = _envelope.decode(body)
    except msgspec.MsgspecError as exc:
        raise invalid_from_msgspec(exc) from None
    except RecursionError:
        return _decode_deep_batch(body, max_depth)
    _member(_context, envelope.context, "context")
    return SegmentBatch(envelope.batch, envelope.sentAt, bytes(envelope.context), envelope.writeKey)


def _member(decoder: msgspec.json.Decoder[Any], text: bytes | msgspec.Raw, name: str) -> Any:
    """One member of the request's object, decoded alone."""
    try:
        return decoder.decode(text)
    except msgspec.MsgspecError as exc:
        raise invalid_from_msgspec(exc, within=name) from None
    except RecursionError:
        raise InvalidEventError(
            f"request: {name}: nested too deeply to decode", field=name, reason="malformed"
        ) from None


def _decode_deep_batch(body: bytes, max_depth: int) -> SegmentBatch:
    """:func:`decode_batch` for a body the decoder gave up on: decoded member by member and
    message by message, so that only what is too deep fails."""
    parts = split(body)
    if parts is None or body.lstrip()[:1] != b"{":
        raise nested_too_deeply(None, max_depth)
    try:
        _raw.decode(parts.frame)
        keys = [msgspec.json.decode(key, type=str) for key in parts.keys]
    except msgspec.MsgspecError as exc:
        raise invalid_from_msgspec(exc) from None
    members = dict(zip(keys, parts.items, strict=False))
    if "batch" not in members:
        raise InvalidEventError("request: batch: required field is missing", field="batch")
    for name, text in members.items():
        if name not in ("batch", "sentAt", "writeKey", "context"):
            try:  # ignored, as the decoder ignores unknown fields, but it must be JSON
                _raw.decode(text)
            except msgspec.MsgspecError as exc:
                raise invalid_from_msgspec(exc) from None
            except RecursionError:
                pass
    sent_at = _member(_sent_at, members.get("sentAt", b"null"), "sentAt")
    write_key = _member(_write_key, members.get("writeKey", b"null"), "writeKey")
    context = members.get("context", b"{}")
    _member(_context, context, "context")
    messages = split(members["batch"])
    if messages is None or members["batch"][:1] != b"[":
        raise InvalidEventError("request: batch: Expected `array`", field="batch")
    try:
        _raw.decode(messages.frame)
    except msgspec.MsgspecError as exc:
        raise invalid_from_msgspec(exc) from None
    for item in messages.items:
        try:
            _raw.decode(item)
        except msgspec.MsgspecError as exc:
            raise invalid_from_msgspec(exc) from None  # not JSON: nor is the request
        except RecursionError:
            pass  # valid or not, it is rejected alone when its turn comes
    return SegmentBatch([msgspec.Raw(m) for m in messages.items], sent_at, context, write_key)


def decode_single(body: bytes, call: str, max_depth: int = 64) -> SegmentBatch:
    """A single-call body as a batch of one, its type to be set by the endpoint. The body must
    be JSON; whether it is an acceptable message is for :func:`normalize_segment`."""
    try:
        message = _raw.decode(body)
    except msgspec.MsgspecError as exc:
        raise invalid_from_msgspec(exc) from None
    except RecursionError:
        raise nested_too_deeply(None, max_depth) from None
    write_key = _identity_of(message).writeKey
    return SegmentBatch(
        [message], write_key=write_key if isinstance(write_key, str) else None, call=call
    )


def _identity_of(message: bytes | msgspec.Raw) -> _Identity:
    try:
        return _identity.decode(message)
    except (msgspec.MsgspecError, RecursionError):
        return _Identity()


def normalize_segment(
    batch: SegmentBatch,
    received_at: datetime,
    source: str,
    rules: EventRules,
    *,
    first_index: int = 0,
    event_ids: list[str] | None = None,
    merchant_id: str | None = None,
) -> Normalized:
    """The log records of a batch's acceptable messages, and a rejection for each other one.

    ``first_index`` numbers the messages (errors name them); ``event_ids`` are the ids of
    messages without a ``messageId`` (default: generated); ``merchant_id`` overrides the
    configured paths (a replay that sets the merchant by hand).
    """
    window = rules.window(received_at)
    context = _context.decode(batch.context) if batch.context != b"{}" else {}
    prefix = id_prefix()
    records: list[Record] = []
    rejections: list[Rejection] = []
    for n, text in enumerate(batch.messages):
        i = first_index + n
        default_id = event_ids[n] if event_ids is not None else None
        try:
            message = _decode_message(text, i, rules.max_depth)
            if batch.call is not None:
                message.type = batch.call  # type: ignore[assignment]
            record = _normalize(
                message, i, batch, context, received_at, window, source, rules, merchant_id,
                message.messageId or default_id or f"{prefix}{i:04x}",
            )  # fmt: skip
        except EventError as exc:
            given = _identity_of(text).messageId
            event_id = given if isinstance(given, str) and given else None
            event_id = event_id or default_id or f"{prefix}{i:04x}"
            rejections.append(Rejection(i, exc, bytes(text), event_id))
            continue
        records.append(record)
    return Normalized(records, rejections)


def _decode_message(text: msgspec.Raw, index: int, max_depth: int) -> SegmentMessage:
    try:
        return _message.decode(text)
    except msgspec.MsgspecError as exc:
        raise invalid_from_msgspec(exc, index) from None
    except RecursionError:
        raise nested_too_deeply(index, max_depth) from None


def _normalize(
    message: SegmentMessage,
    i: int,
    batch: SegmentBatch,
    batch_context: dict[str, Any],
    received_at: datetime,
    window: tuple[datetime, datetime],
    source: str,
    rules: EventRules,
    merchant_id: str | None,
    event_id: str,
) -> Record:
    event_type = _event_type(message, i)
    sent_at = message.sentAt or batch.sent_at
    original = message.originalTimestamp or message.timestamp
    if message.timestamp is not None:
        time = event_time(message.timestamp, None, received_at, window, i, "timestamp")
    elif original is not None:
        time = event_time(original, sent_at, received_at, window, i, "originalTimestamp")
    else:
        time = received_at
    context = {**batch_context, **message.context} if batch_context else message.context
    for key in ("userId", "anonymousId", "groupId", "previousId"):
        value = getattr(message, key)
        if value is not None:
            context[key] = value
    if message.type in ("identify", "group"):
        properties = message.traits
    else:
        properties = message.properties
        if message.name is not None and "name" not in properties:
            properties["name"] = message.name
    if merchant_id is None:
        merchant_id = _merchant_id(message, properties, context, rules.merchant_id_paths, i)
    else:
        merchant_id = check_merchant_id(merchant_id, i, "merchant_id")
    value = _encode(
        OutgoingEvent(
            event_id,
            merchant_id,
            event_type,
            time,
            original,
            sent_at,
            received_at,
            properties,
            context,
            source,
        )
    )
    if len(value) > rules.max_event_bytes:
        raise too_large(i, len(value), rules.max_event_bytes)
    check_depth(value, rules.max_depth, i)
    return Record(merchant_id, value)


def _event_type(message: SegmentMessage, index: int) -> str:
    if message.type is None:
        raise InvalidEventError(
            f"event {index}: type: required field is missing", index=index, field="type"
        )
    if message.type != "track":
        return message.type
    if not message.event:
        raise InvalidEventError(
            f"event {index}: event: a track call needs an event name", index=index, field="event"
        )
    return message.event


_ID_ROOTS = frozenset({"userId", "anonymousId", "groupId"})


def _merchant_id(
    message: SegmentMessage,
    properties: dict[str, Any],
    context: dict[str, Any],
    paths: tuple[str, ...],
    index: int,
) -> str:
    for path in paths:
        head, _, rest = path.partition(".")
        value: Any
        if head == "properties":
            value = properties
        elif head == "context":
            value = context
        elif head == "traits":
            value = message.traits
        else:
            value = getattr(message, head) if head in _ID_ROOTS else None
        if rest:
            for part in rest.split("."):
                value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return check_merchant_id(str(value), index, path)
    raise InvalidEventError(
        f"event {index}: {paths[0]}: no merchant id; set one of {', '.join(paths)}",
        index=index,
        field=paths[0],
        reason="merchant_id",
    )
