"""The quarantine: Segment messages the collector acknowledged but could not accept.

Segment's SDKs drop a whole batch answered 400, so the collector answers 200 for a Segment
batch of which some messages are invalid: the valid ones go to the log, each invalid one to
the quarantine with the reason, and both are durable before the 200. Operators list the
quarantine, fix what made the messages invalid (say ``[collector]
segment_merchant_id_paths``), and replay: each message is validated again with the current
configuration, and appended to the log if it now passes.

The quarantine is itself a :class:`~mercato.log.base.Log` of one partition, so it is as
durable as the log and works on every backend: ``<data_dir>/quarantine/`` with the file log,
the topic ``<kafka_topic>-quarantine`` with Kafka. It is append-only. A record is a JSON
header, a newline, and the message exactly as the client sent it (kept as bytes: a message
too deep to decode, or not even JSON, must still be kept)::

    {"kind":"quarantined","received_at":…,"source":"web","endpoint":"batch","index":6,
     "event_id":"…","reason":"merchant_id","error":"event 6: …",…}\\n{"type":"track",…}

An entry's id is its offset. Replaying or purging an entry appends a ``resolved`` record
naming it (action ``replayed`` or ``purged``), and a replay that finds a message still
invalid appends one with action ``retried`` and the new reason; the open entries are what a
fold over the records leaves (:class:`QuarantineState`).

A replayed event keeps its event id (the message's ``messageId``, else the id it was given
on receipt), its receipt time and its source. Should a replay die between appending to the
log and recording that it did, replaying again appends the same events again, and consumers
drop them as duplicates by event id, as they do a client's retry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from mercato.collector.errors import QuarantineError
from mercato.events.errors import Reason
from mercato.events.model import TEXT_LENGTH
from mercato.events.rules import EventRules
from mercato.events.segment import Rejection, SegmentBatch, normalize_segment
from mercato.log.base import Log, Position, Record
from mercato.log.errors import LogError
from mercato.log.file import FileLog

if TYPE_CHECKING:
    from mercato.config import Config, LogConfig

logger = logging.getLogger("mercato.collector")

KEY = "quarantine"
PARTITION = 0
READ_CHUNK = 1000
REPLAY_CHUNK = 500
PREVIEW_CHARS = 300
RETRY_OPEN_SECONDS = 5.0


def utc_now() -> datetime:
    return datetime.now(UTC)


class Quarantined(msgspec.Struct, frozen=True, kw_only=True, tag="quarantined", tag_field="kind"):
    """The header of a quarantined message: why, and everything a replay needs."""

    received_at: datetime
    source: str  # the name of the write key's source
    endpoint: str  # "batch", or the single call ("track", …) that also sets the type
    index: int  # the message's place in its request
    event_id: str  # the id its event gets: messageId, else the one generated on receipt
    reason: Reason
    code: str
    error: str
    field: str | None = None
    sent_at: datetime | None = None  # the batch's sentAt
    context: str = ""  # the batch's context, JSON text ("" for none)


class Resolved(msgspec.Struct, frozen=True, kw_only=True, tag="resolved", tag_field="kind"):
    """What became of an entry: replayed or purged (it is closed), or replayed and still
    invalid (``retried``: it stays, with the new reason)."""

    entry: int
    action: Literal["replayed", "purged", "retried"]
    at: datetime
    reason: Reason | None = None
    code: str | None = None
    error: str | None = None
    field: str | None = None
    merchant_id: str | None = None  # set by hand for the replay


_header = msgspec.json.Decoder(Quarantined | Resolved)
_encode = msgspec.json.Encoder().encode


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """An open entry, as listed: its header as it stands after any retries."""

    id: int
    received_at: datetime
    source: str
    endpoint: str
    index: int
    event_id: str
    reason: Reason
    code: str
    error: str
    field: str | None
    attempts: int = 0  # replays that found it still invalid
    last_attempt_at: datetime | None = None


def _entry(id: int, header: Quarantined, attempts: int, last: datetime | None) -> Entry:
    return Entry(
        id=id, received_at=header.received_at, source=header.source, endpoint=header.endpoint,
        index=header.index, event_id=header.event_id, reason=header.reason, code=header.code,
        error=header.error, field=header.field, attempts=attempts, last_attempt_at=last,
    )  # fmt: skip


def encode(header: Quarantined | Resolved, message: bytes = b"") -> bytes:
    """A quarantine record's value: the header's JSON (never a raw newline in it), a
    newline, the message."""
    return _encode(header) + b"\n" + message


def decode(value: bytes) -> tuple[Quarantined | Resolved, bytes]:
    """The header and message of a record's value; ``msgspec`` errors on a bad one."""
    head, _, message = value.partition(b"\n")
    return _header.decode(head), message


def records_for(
    rejections: Iterable[Rejection],
    batch: SegmentBatch,
    source: str,
    endpoint: str,
    received_at: datetime,
) -> list[Record]:
    """The quarantine records of a request's rejected messages."""
    context = "" if batch.context == b"{}" else batch.context.decode()
    records = []
    for r in rejections:
        header = Quarantined(
            received_at=received_at, source=source, endpoint=endpoint, index=r.index,
            event_id=r.event_id, reason=r.error.reason, code=r.error.code, error=r.error.message,
            field=r.error.field, sent_at=batch.sent_at, context=context,
        )  # fmt: skip
        records.append(Record(KEY, encode(header, r.message)))
    return records


# -- where it lives -----------------------------------------------------------------------------


def quarantine_log_config(log: LogConfig) -> LogConfig:
    """``[log]`` for the quarantine: one partition; with Kafka, the topic
    ``<kafka_topic>-quarantine``."""
    return msgspec.structs.replace(log, partitions=1, kafka_topic=f"{log.kafka_topic}-quarantine")


def quarantine_path(config: Config) -> Path:
    return config.data_path / "quarantine"


def open_quarantine_log(config: Config, *, create: bool = True) -> Log | None:
    """The quarantine's log; None when it does not exist and ``create`` is false (a file
    quarantine that was never written)."""
    settings = quarantine_log_config(config.log)
    if config.log.backend == "kafka":
        try:
            from mercato.log.kafka import KafkaLog  # noqa: PLC0415 (the extra [kafka])
        except ImportError as exc:
            raise LogError(f"log.backend kafka needs confluent-kafka: {exc}") from None
        try:
            return KafkaLog(settings, client_id="mercato-quarantine")
        except LogError as exc:
            if "does not exist" in str(exc):
                raise LogError(
                    f"kafka topic {settings.kafka_topic!r} does not exist; run "
                    "`mercato quarantine create-topic`"
                ) from None
            raise
    path = quarantine_path(config)
    if not create and not (path / "meta.json").exists():
        return None
    return FileLog(path, settings)


class Quarantine:
    """The quarantine's log, opened on first use: the collector starts even when the Kafka
    topic is missing (it answers 503 to the requests that need the quarantine until the
    topic is there, and tries again at most every few seconds)."""

    def __init__(
        self,
        opener: Callable[[], Log],
        *,
        clock: Callable[[], float] = time.monotonic,
        retry_seconds: float = RETRY_OPEN_SECONDS,
    ) -> None:
        self._opener = opener
        self._clock = clock
        self._retry_seconds = retry_seconds
        self._log: Log | None = None
        self._failure: tuple[float, LogError] | None = None
        self._lock = threading.Lock()

    @classmethod
    def on(cls, log: Log) -> Quarantine:
        """A quarantine in ``log``, open already."""
        quarantine = cls(lambda: log)
        quarantine._log = log
        return quarantine

    @property
    def ready(self) -> bool:
        """Whether the log is open (else :meth:`log` may block while it opens)."""
        return self._log is not None

    def log(self) -> Log:
        """The log, opened now if need be; :class:`LogError` if it cannot be."""
        with self._lock:
            if self._log is not None:
                return self._log
            if self._failure is not None and self._clock() - self._failure[0] < self._retry_seconds:
                raise LogError(str(self._failure[1]))
            try:
                self._log = self._opener()
            except LogError as exc:
                self._failure = (self._clock(), exc)
                raise
            self._failure = None
            return self._log

    def submit(self, records: Sequence[Record]) -> Future[Sequence[Position]]:
        """Start appending quarantine records; the future resolves once they are durable."""
        return self.log().submit(records)

    def close(self) -> None:
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None

    # -- reading ------------------------------------------------------------------------------

    def scan(self, start: int = 0) -> Iterator[tuple[int, Quarantined | Resolved, bytes]]:
        """Every readable record from offset ``start`` to the end: (offset, header, message).
        A record that does not decode is logged and skipped."""
        log = self.log()
        position = max(start, log.start_offset(PARTITION))
        end = log.end_offset(PARTITION)
        while position < end:
            entries = log.read(PARTITION, position, READ_CHUNK)
            if not entries:
                break
            for entry in entries:
                try:
                    header, message = decode(entry.value)
                except msgspec.MsgspecError as exc:
                    logger.warning("quarantine offset %d is unreadable: %s", entry.offset, exc)
                    continue
                yield entry.offset, header, message
            position = entries[-1].offset + 1

    def messages(self, ids: Iterable[int]) -> dict[int, bytes]:
        """The messages of the entries ``ids`` (one pass from the first of them)."""
        wanted = set(ids)
        found: dict[int, bytes] = {}
        if not wanted:
            return found
        last = max(wanted)
        for offset, header, message in self.scan(min(wanted)):
            if offset in wanted and isinstance(header, Quarantined):
                found[offset] = message
            if offset >= last:
                break
        return found

    def state(self) -> QuarantineState:
        """The open entries, as of now."""
        state = QuarantineState()
        state.refresh(self)
        return state

    # -- acting on entries --------------------------------------------------------------------

    def purge(self, ids: Sequence[int] | None, *, clock: Callable[[], datetime] = utc_now) -> None:
        """Close the open entries ``ids`` (all if None) without replaying them."""
        ids = self.state().open_ids(ids)
        at = clock()
        for chunk in _chunks(list(ids), REPLAY_CHUNK):
            records = [
                Record(KEY, encode(Resolved(entry=i, action="purged", at=at))) for i in chunk
            ]
            self.log().append(records)

    def replay(
        self,
        ids: Sequence[int] | None,
        log: Log,
        rules: EventRules,
        *,
        merchant_id: str | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> ReplayReport:
        """Validate the open entries ``ids`` (all if None) again with ``rules``; append the
        events that now pass to ``log`` (durably), then close their entries; record the new
        reason of the others.

        ``merchant_id`` sets the merchant of every replayed event, whatever its message says.
        """
        if merchant_id is not None and not 0 < len(merchant_id) <= TEXT_LENGTH:
            raise QuarantineError(
                f"a merchant id has 1 to {TEXT_LENGTH} characters, not {len(merchant_id)}"
            )
        state = self.state()
        report = ReplayReport()
        for chunk in _chunks(state.open_ids(ids), REPLAY_CHUNK):
            texts = self.messages(chunk)
            if len(texts) < len(chunk):
                unread = sorted(set(chunk) - texts.keys())
                raise QuarantineError(f"cannot read quarantine entries {unread} from the log")
            events: list[Record] = []
            outcomes: list[Record] = []
            at = clock()
            for entry_id in chunk:
                header = state.headers[entry_id]
                batch = SegmentBatch(
                    [msgspec.Raw(texts[entry_id])],
                    header.sent_at,
                    header.context.encode() or b"{}",
                    call=None if header.endpoint == "batch" else header.endpoint,
                )
                result = normalize_segment(
                    batch, header.received_at, header.source, rules, first_index=header.index,
                    event_ids=[header.event_id], merchant_id=merchant_id,
                )  # fmt: skip
                if result.records:
                    events.extend(result.records)
                    resolved = Resolved(
                        entry=entry_id, action="replayed", at=at, merchant_id=merchant_id
                    )
                    report.replayed.append(entry_id)
                else:
                    error = result.rejections[0].error
                    resolved = Resolved(
                        entry=entry_id, action="retried", at=at, reason=error.reason,
                        code=error.code, error=error.message, field=error.field,
                    )  # fmt: skip
                    tries = state.attempts.get(entry_id, (0, at))[0] + 1
                    report.still_invalid.append(
                        _entry(entry_id, _retried(header, resolved), tries, at)
                    )
                outcomes.append(Record(KEY, encode(resolved)))
            if events:
                log.append(events)  # durable before the entries close
            self.log().append(outcomes)
        return report


def _retried(header: Quarantined, resolved: Resolved) -> Quarantined:
    return msgspec.structs.replace(
        header,
        reason=resolved.reason or header.reason,
        code=resolved.code or header.code,
        error=resolved.error or header.error,
        field=resolved.field,
    )


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class ReplayReport(msgspec.Struct):
    """What a replay did: the entries replayed, and those still invalid (with the reason)."""

    replayed: list[int] = msgspec.field(default_factory=list)
    still_invalid: list[Entry] = msgspec.field(default_factory=list)


class QuarantineState:
    """The open entries of a quarantine, folded from its records; :meth:`refresh` reads only
    what was appended since the last one (the console polls it)."""

    def __init__(self) -> None:
        self.position = 0
        self.headers: dict[int, Quarantined] = {}  # open entries, oldest first
        self.attempts: dict[int, tuple[int, datetime]] = {}
        self._lock = threading.Lock()

    def refresh(self, quarantine: Quarantine) -> None:
        with self._lock:
            for offset, header, _ in quarantine.scan(self.position):
                if isinstance(header, Quarantined):
                    self.headers[offset] = header
                elif header.entry in self.headers:
                    if header.action == "retried":
                        self.headers[header.entry] = _retried(self.headers[header.entry], header)
                        count = self.attempts.get(header.entry, (0, header.at))[0]
                        self.attempts[header.entry] = (count + 1, header.at)
                    else:
                        del self.headers[header.entry]
                        self.attempts.pop(header.entry, None)
                self.position = offset + 1

    def open_ids(self, ids: Iterable[int] | None) -> list[int]:
        """``ids`` (every open entry if None) in order, checked to be open entries."""
        if ids is None:
            return sorted(self.headers)
        missing = sorted(set(ids) - self.headers.keys())
        if missing:
            raise QuarantineError(
                f"no open quarantine entry {', '.join(map(str, missing))} (replayed or purged "
                "already, or never quarantined; see `mercato quarantine list`)"
            )
        return sorted(set(ids))

    def entries(self, ids: Iterable[int] | None = None) -> list[Entry]:
        """The open entries (or those of ``ids`` that are open), oldest first."""
        chosen = self.headers if ids is None else [i for i in ids if i in self.headers]
        return [
            _entry(i, self.headers[i], *self.attempts.get(i, (0, None))) for i in sorted(chosen)
        ]

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(h.reason for h in self.headers.values()).most_common())

    def __len__(self) -> int:
        return len(self.headers)


def preview(message: bytes, limit: int = PREVIEW_CHARS) -> str:
    """The start of a message as text, for listings."""
    text = message[: limit * 4].decode("utf-8", "replace")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary(quarantine: Quarantine, state: QuarantineState, limit: int) -> dict[str, Any]:
    """What the console shows: counts by reason and the newest ``limit`` open entries, each
    with the start of its message."""
    state.refresh(quarantine)
    newest = sorted(state.headers, reverse=True)[:limit]
    messages = quarantine.messages(newest)
    return {
        "total": len(state),
        "by_reason": state.by_reason(),
        "latest": [
            {**msgspec.to_builtins(entry), "message": preview(messages.get(entry.id, b""))}
            for entry in reversed(state.entries(newest))
        ],
    }


class QuarantineView:
    """The quarantine as the operator console reads it: opened on first use if it exists
    (the API never creates one), folded incrementally between polls."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._quarantine = Quarantine(self._open)
        self._state = QuarantineState()

    def _open(self) -> Log:
        log = open_quarantine_log(self._config, create=False)
        if log is None:
            raise LogError(f"no quarantine at {quarantine_path(self._config)} yet")
        return log

    def summary(self, limit: int) -> dict[str, Any]:
        """:func:`summary`, plus whether there is a quarantine (and if not, why)."""
        try:
            return {"exists": True, **summary(self._quarantine, self._state, limit)}
        except LogError as exc:
            return {"exists": False, "error": str(exc), "total": 0, "by_reason": {}, "latest": []}

    def close(self) -> None:
        self._quarantine.close()
