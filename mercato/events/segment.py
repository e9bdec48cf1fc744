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
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from mercato.events.errors import InvalidEventError
from mercato.events.model import AwareTime, OutgoingEvent, correct_time
from mercato.events.rules import (
    EventRules,
    id_prefix,
    invalid_from_msgspec,
    too_far_in_future,
    too_large,
)
from mercato.log.base import Record

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


class SegmentBatch(msgspec.Struct):
    batch: list[SegmentMessage]
    sentAt: AwareTime | None = None
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    writeKey: str | None = None


_batch = msgspec.json.Decoder(SegmentBatch)
_single = msgspec.json.Decoder(SegmentMessage)
_encode = msgspec.json.Encoder().encode


def decode_batch(body: bytes) -> SegmentBatch:
    try:
        return _batch.decode(body)
    except msgspec.MsgspecError as exc:
        raise invalid_from_msgspec(exc) from None


def decode_single(body: bytes, call: str) -> SegmentBatch:
    """A single-call body as a batch of one, its type set by the endpoint."""
    try:
        message = _single.decode(body)
    except msgspec.MsgspecError as exc:
        error = invalid_from_msgspec(exc)
        error.index = 0
        raise error from None
    message.type = call  # type: ignore[assignment]
    return SegmentBatch(batch=[message], writeKey=message.writeKey)


def normalize_segment(
    batch: SegmentBatch, received_at: datetime, source: str, rules: EventRules
) -> list[Record]:
    """The log records for a Segment batch, or an error naming the first bad message."""
    latest = received_at + rules.max_future
    prefix = id_prefix()
    records: list[Record] = []
    for i, message in enumerate(batch.batch):
        event_type = _event_type(message, i)
        sent_at = message.sentAt or batch.sentAt
        original = message.originalTimestamp or message.timestamp
        if message.timestamp is not None:
            event_time = message.timestamp.astimezone(UTC)
        elif original is not None:
            event_time = correct_time(original, sent_at, received_at)
        else:
            event_time = received_at
        if event_time > latest:
            raise too_far_in_future(
                i, "timestamp" if message.timestamp is not None else "originalTimestamp"
            )
        context = {**batch.context, **message.context} if batch.context else message.context
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
        merchant_id = _merchant_id(message, properties, context, rules.merchant_id_paths, i)
        value = _encode(
            OutgoingEvent(
                message.messageId or f"{prefix}{i:04x}",
                merchant_id,
                event_type,
                event_time,
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
        records.append(Record(merchant_id, value))
    return records


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


def _merchant_id(
    message: SegmentMessage,
    properties: dict[str, Any],
    context: dict[str, Any],
    paths: tuple[str, ...],
    index: int,
) -> str:
    roots: dict[str, Any] = {
        "properties": properties,
        "traits": message.traits,
        "context": context,
        "userId": message.userId,
        "anonymousId": message.anonymousId,
        "groupId": message.groupId,
    }
    for path in paths:
        head, *rest = path.split(".")
        value = roots.get(head)
        for part in rest:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    raise InvalidEventError(
        f"event {index}: {paths[0]}: no merchant id; set one of {', '.join(paths)}",
        index=index,
        field=paths[0],
    )
