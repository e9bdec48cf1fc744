"""The collector as an ASGI application.

Endpoints:

* ``POST /v1/events``: native events, a JSON array (``application/json``) or NDJSON
  (``application/x-ndjson``);
* ``POST /v1/batch`` and ``POST /v1/{track,identify,page,screen,group,alias}``: the Segment
  HTTP Tracking API (``application/json`` or ``text/plain``, as analytics.js sends);
* ``GET /livez``, ``GET /readyz``, ``GET /metrics`` (Prometheus).

A request is answered 200 only after everything it brought is durable. A native request is
accepted whole or rejected whole. A Segment request is judged message by message, because
Segment's SDKs drop a whole batch answered 400: the valid messages go to the log, each invalid
one to the quarantine (:mod:`mercato.collector.quarantine`) with its reason, and the answer is
200 ``{"success": true, "accepted": n, "quarantined": [{"index", "reason", …}]}``; only what
is wrong with the request as a whole (not JSON, too large, content type, write key) is a 4xx.

Failures are JSON ``{"error": {"code", "message", "index"?, "field"?}}``: 400 bad JSON or
schema, 401 missing or unknown write key, 403 revoked key, 413 too large, 415 content type,
429 overloaded and 503 log unavailable (both with Retry-After). On the Segment endpoints the
body also has ``code`` and ``message`` at the top, which is what Segment's SDKs log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

import msgspec

from mercato.collector.errors import HttpError
from mercato.collector.keys import KeyStore
from mercato.collector.metrics import CollectorMetrics
from mercato.collector.quarantine import Quarantine, records_for
from mercato.config import CollectorConfig
from mercato.events.errors import EventError, EventTooLargeError
from mercato.events.native import decode_native, normalize_native
from mercato.events.rules import EventRules
from mercato.events.segment import (
    CALLS,
    SegmentBatch,
    decode_batch,
    decode_single,
    normalize_segment,
)
from mercato.log.base import Log, Position, Record
from mercato.log.errors import LogError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("mercato.collector")

NDJSON_TYPES = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)
SEGMENT_TYPES = frozenset({"application/json", "text/plain"})
UNHEALTHY_SECONDS = 5.0


def utc_now() -> datetime:
    return datetime.now(UTC)


async def _durable(
    submit: Callable[[Sequence[Record]], Future[Sequence[Position]]] | None,
    records: Sequence[Record],
) -> LogError | None:
    """Append ``records`` with ``submit`` and wait until they are durable; the log's error
    if they could not be made so."""
    if not records:
        return None
    assert submit is not None
    try:
        await asyncio.wrap_future(submit(records))
    except LogError as exc:
        return exc
    return None


class CollectorApp:
    """Receives events over HTTP and appends them durably to the log.

    Without a ``quarantine`` a Segment request with an invalid message is rejected whole, as
    a native one is (for embeddings that keep no quarantine; ``mercato run collector`` does).
    """

    def __init__(
        self,
        config: CollectorConfig,
        log: Log,
        keys: KeyStore,
        *,
        quarantine: Quarantine | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.config = config
        self.log = log
        self.keys = keys
        self.quarantine = quarantine
        self.metrics = CollectorMetrics()
        self._clock = clock
        self._rules = EventRules.of(config)
        self._pending = 0
        self._failed_at: float | None = None
        self._draining = False
        self._allow_any_origin = "*" in config.cors_origins
        self._origins = {o.encode() for o in config.cors_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        path: str = scope["path"]
        if method == "OPTIONS":
            await self._respond(scope, send, 204, b"", extra=self._preflight_headers())
        elif path.startswith("/v1/"):
            if method != "POST":
                await self._error(scope, send, HttpError(405, "method_not_allowed", "use POST"))
                return
            await self._ingest(scope, receive, send, path[4:])
        elif method != "GET":
            await self._error(scope, send, HttpError(405, "method_not_allowed", "use GET"))
        elif path == "/livez":
            await self._json(scope, send, 200, {"status": "ok"})
        elif path == "/readyz":
            problem = self._unready_reason()
            if problem is None:
                await self._json(scope, send, 200, {"status": "ready"})
            else:
                await self._json(scope, send, 503, {"status": "unavailable", "reason": problem})
        elif path == "/metrics":
            self.metrics.pending.set(self._pending)
            await self._respond(
                scope, send, 200, self.metrics.render(), b"text/plain; version=0.0.4"
            )
        else:
            await self._error(scope, send, HttpError(404, "not_found", f"no endpoint {path}"))

    def close(self) -> None:
        """Refuse new requests; appends already submitted complete in the log's close."""
        self._draining = True

    # -- ingest -------------------------------------------------------------------------------

    async def _ingest(self, scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
        started = time.perf_counter()
        status = 200
        try:
            if endpoint not in {"events", "batch"} and endpoint not in CALLS:
                raise HttpError(404, "not_found", f"no endpoint /v1/{endpoint}")
            if self._draining:
                raise HttpError(503, "shutting_down", "collector is shutting down", retry_after=1)
            await self._json(scope, send, 200, await self._accept(scope, receive, endpoint))
        except HttpError as exc:
            status = exc.status
            await self._error(scope, send, exc)
        except Exception:
            status = 500
            logger.exception("unexpected error while ingesting")
            await self._error(scope, send, HttpError(500, "internal_error", "internal error"))
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.duration.labels(endpoint).observe(time.perf_counter() - started)

    async def _accept(self, scope: Scope, receive: Receive, endpoint: str) -> dict[str, object]:
        """Read, check and store one request; the body of its 200."""
        headers = dict(scope["headers"])
        source = self._source_from_header(headers.get(b"authorization"))
        if source is None and endpoint == "events":
            raise HttpError(401, "unauthorized", "a write key is required (HTTP Basic auth)")
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        content_type = media_type.decode("latin-1")
        ndjson = content_type in NDJSON_TYPES
        allowed = SEGMENT_TYPES if endpoint != "events" else {"application/json"} | NDJSON_TYPES
        if content_type not in allowed:
            raise HttpError(
                415,
                "unsupported_media_type",
                f"content type {content_type or '(none)'!r} is not one of {sorted(allowed)}",
            )
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.config.max_body_bytes:
            raise HttpError(413, "body_too_large", self._too_large_message(int(declared)))
        body = await self._read_body(receive)
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding == b"gzip":
            body = self._gunzip(body)
        elif encoding not in (b"identity", b""):
            raise HttpError(415, "unsupported_encoding", "content encoding must be gzip")
        received_at = self._clock()
        if source is not None and endpoint == "events":
            return await self._accept_native(body, ndjson, source, received_at)
        return await self._accept_segment(body, endpoint, source, received_at)

    async def _accept_native(
        self, body: bytes, ndjson: bool, source: str, received_at: datetime
    ) -> dict[str, object]:
        decoded = 0
        try:
            events = decode_native(body, ndjson=ndjson, max_depth=self._rules.max_depth)
            decoded = len(events)
            records = normalize_native(events, received_at, source, self._rules)
        except EventError as exc:
            raise self._refused(exc, decoded) from None
        await self._append(records, ())
        self._count_accepted(len(records))
        return {"accepted": len(records)}

    async def _accept_segment(
        self, body: bytes, endpoint: str, source: str | None, received_at: datetime
    ) -> dict[str, object]:
        depth = self._rules.max_depth
        try:
            if endpoint == "batch":
                batch = decode_batch(body, depth)
            else:
                batch = decode_single(body, endpoint, depth)
        except EventError as exc:
            raise self._refused(exc, 0) from None
        try:
            source = source or self._source_from_body(batch)
        except HttpError:
            self.metrics.events.labels("unauthorized").inc(len(batch.messages))
            raise
        limit = self.config.segment_max_messages
        if len(batch.messages) > limit:
            self.metrics.events.labels("too_large").inc(len(batch.messages))
            message = f"batch has {len(batch.messages)} messages, over the limit of {limit}"
            raise HttpError(413, "too_many_messages", message)
        records, rejections = normalize_segment(batch, received_at, source, self._rules)
        if rejections and self.quarantine is None:
            raise self._refused(rejections[0].error, len(batch.messages))
        await self._append(records, records_for(rejections, batch, source, endpoint, received_at))
        self._count_accepted(len(records))
        for rejection in rejections:
            self.metrics.quarantined.labels(rejection.error.reason).inc()
        self.metrics.events.labels("quarantined").inc(len(rejections))
        quarantined = [
            {
                **rejection.error.to_dict(),
                "index": rejection.index,
                "reason": rejection.error.reason,
            }
            for rejection in rejections
        ]
        return {"success": True, "accepted": len(records), "quarantined": quarantined}

    def _refused(self, exc: EventError, decoded: int) -> HttpError:
        result = "too_large" if isinstance(exc, EventTooLargeError) else "invalid"
        self.metrics.events.labels(result).inc(decoded)
        status = 413 if result == "too_large" else 400
        return HttpError(status, exc.code, exc.message, detail=exc.to_dict())

    def _count_accepted(self, count: int) -> None:
        self.metrics.accepted.inc(count)
        self.metrics.batch_events.observe(count)

    async def _append(self, records: Sequence[Record], quarantined: Sequence[Record]) -> None:
        """Make ``records`` durable in the log and ``quarantined`` in the quarantine, or fail
        with 429 or 503 (and then nothing of the request is acknowledged)."""
        count = len(records) + len(quarantined)
        if count == 0:
            return
        if self._pending + count > self.config.max_pending_events:
            self.metrics.events.labels("overloaded").inc(count)
            raise HttpError(
                429,
                "overloaded",
                "too many events waiting to be written; retry later",
                retry_after=self.config.retry_after_seconds,
            )
        self._pending += count
        try:
            if quarantined:
                await self._open_quarantine(count)
            log_error, quarantine_error = await asyncio.gather(
                _durable(self.log.submit, records),
                _durable(self.quarantine.submit if self.quarantine else None, quarantined),
            )
        finally:
            self._pending -= count
        if log_error is not None:
            self._failed_at = time.monotonic()
        elif records:
            self._failed_at = None
        error = log_error or quarantine_error
        if error is None:
            return
        self.metrics.events.labels("unavailable").inc(count)
        where = "log" if log_error is not None else "quarantine"
        logger.error("%s append failed: %s", where, error)
        raise HttpError(
            503,
            f"{where}_unavailable",
            f"events were not stored: {error}",
            retry_after=self.config.retry_after_seconds,
        )

    async def _open_quarantine(self, count: int) -> None:
        assert self.quarantine is not None
        if self.quarantine.ready:
            return
        try:
            await asyncio.to_thread(self.quarantine.log)
        except LogError as exc:
            self.metrics.events.labels("unavailable").inc(count)
            logger.error("the quarantine is unavailable: %s", exc)
            raise HttpError(
                503,
                "quarantine_unavailable",
                f"events were not stored: the quarantine is unavailable: {exc}",
                retry_after=self.config.retry_after_seconds,
            ) from None

    async def _read_body(self, receive: Receive) -> bytes:
        limit = self.config.max_body_bytes
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HttpError(400, "client_disconnected", "client went away")
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HttpError(413, "body_too_large", self._too_large_message(size))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _gunzip(self, body: bytes) -> bytes:
        limit = self.config.max_body_bytes
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            data = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise HttpError(400, "invalid_gzip", f"body is not valid gzip: {exc}") from None
        if len(data) > limit or inflater.unconsumed_tail:
            raise HttpError(413, "body_too_large", self._too_large_message(len(data), "inflated"))
        if not inflater.eof:
            raise HttpError(400, "invalid_gzip", "gzip body is truncated")
        return data

    def _too_large_message(self, size: int, what: str = "request body") -> str:
        limit = self.config.max_body_bytes
        return f"{what} is {size}+ bytes, over the limit of {limit} bytes"

    # -- auth ---------------------------------------------------------------------------------

    def _source_from_header(self, header: bytes | None) -> str | None:
        if header is None:
            return None
        scheme, _, credentials = header.decode("latin-1").partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise HttpError(401, "unauthorized", "malformed Basic credentials") from None
            secret = decoded.partition(":")[0]
        elif scheme.lower() == "bearer":
            secret = credentials.strip()
        else:
            raise HttpError(401, "unauthorized", "use HTTP Basic auth with the write key")
        return self._source_for(secret)

    def _source_from_body(self, batch: SegmentBatch) -> str:
        if not batch.write_key:
            raise HttpError(401, "unauthorized", "a write key is required (Basic auth or writeKey)")
        return self._source_for(batch.write_key)

    def _source_for(self, secret: str) -> str:
        check = self.keys.check(secret)
        if check.revoked:
            raise HttpError(403, "forbidden", "this write key was revoked")
        if check.source is None:
            raise HttpError(401, "unauthorized", "unknown write key")
        return check.source

    # -- responses ----------------------------------------------------------------------------

    def _unready_reason(self) -> str | None:
        if self._draining:
            return "shutting down"
        if self._failed_at is not None and time.monotonic() - self._failed_at < UNHEALTHY_SECONDS:
            return "the log failed to write recently"
        return None

    def _preflight_headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"access-control-allow-methods", b"POST, OPTIONS"),
            (b"access-control-allow-headers", b"authorization, content-type, content-encoding"),
            (b"access-control-max-age", b"86400"),
        ]

    async def _error(self, scope: Scope, send: Send, exc: HttpError) -> None:
        extra = []
        if exc.retry_after is not None:
            extra.append((b"retry-after", str(exc.retry_after).encode()))
        if exc.status == 401:
            extra.append((b"www-authenticate", b'Basic realm="mercato"'))
        body: dict[str, object] = {"error": exc.body}
        endpoint = scope["path"].removeprefix("/v1/")
        if endpoint == "batch" or endpoint in CALLS:
            # Segment's SDKs log the top-level "code" and "message" of a failed request
            body = {"code": exc.body["code"], "message": exc.body["message"], **body}
        await self._json(scope, send, exc.status, body, extra)

    async def _json(
        self,
        scope: Scope,
        send: Send,
        status: int,
        body: object,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        await self._respond(scope, send, status, msgspec.json.encode(body), extra=extra)

    async def _respond(
        self,
        scope: Scope,
        send: Send,
        status: int,
        body: bytes,
        content_type: bytes = b"application/json",
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        headers.extend(extra or ())
        origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
        if origin is not None and (self._allow_any_origin or origin in self._origins):
            headers.append((b"access-control-allow-origin", origin))
            headers.append((b"vary", b"origin"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._draining = True
                await send({"type": "lifespan.shutdown.complete"})
                return
