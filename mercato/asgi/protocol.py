"""uvicorn's httptools protocol with the request head bounded in bytes, headers and time, and
requests handed to the app through :class:`Admission`."""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn._types import ASGI3Application
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from mercato.asgi import refusals
from mercato.asgi.admission import Admission
from mercato.asgi.limits import OnRefusal, ServerLimits
from mercato.asgi.refusals import Refusal

# A refused connection is half-closed after its answer and read (and dropped) this long before
# it is closed: closing a socket with unread data resets the connection, and a client still
# sending would then lose the answer.
LINGER_SECONDS = 2.0


class _Refused(Exception):
    """Raised in a parser callback to stop the parser; the refusal is on the protocol."""


class BoundedHttpProtocol(HttpToolsProtocol):
    """One connection. The bytes of a request's line and headers are counted as they arrive,
    before httptools sees them: httptools builds a header value up in memory before its
    ``on_header`` callback, so a count there comes after the memory is spent (a 256 MB header
    once took 86 s and 510 MB). Bytes past ``max_header_bytes`` never reach the parser. Once
    the head is complete, data goes to the parser untouched (the fast path for bodies).

    A refused request is answered (431, 408, 400) and the connection half-closed; what the
    client still sends is read and dropped for :data:`LINGER_SECONDS`, then it is closed."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ServerLimits,
        admission: Admission,
        on_refusal: OnRefusal,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = limits
        self._admission = admission
        self._on_refusal = on_refusal
        self._in_head = True  # the next bytes belong to a request line or headers
        self._head_bytes = 0
        self._heads = 0  # heads completed on this connection
        self._head_started = 0.0
        self._head_timer: asyncio.TimerHandle | None = None
        self._violation: Refusal | None = None  # found by a parser callback
        self._refusal: Refusal | None = None  # answered; the connection lingers, then closes
        self._linger: asyncio.TimerHandle | None = None
        self._unadmitted: tuple[RequestResponseCycle, ASGI3Application] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # the first request's head is timed from the connection's opening
        self._head_timer = self.loop.call_later(
            self._limits.header_timeout_seconds, self._head_timed_out
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes | memoryview) -> None:
        if self._refusal is not None:
            return
        self._unset_keepalive_if_required()
        if not self._in_head:
            self._feed(data)
            return
        if self._head_bytes == 0:
            self._head_started = self.loop.time()
        room = self._limits.max_header_bytes - self._head_bytes
        if len(data) > room:
            self._feed_past_room(data, room)
            return
        self._head_bytes += len(data)
        self._feed(data)
        if self._in_head and self._head_bytes and self._head_timer is None:
            # A head still incomplete (most arrive whole: they need no timer).
            self._head_timer = self.loop.call_at(
                self._head_started + self._limits.header_timeout_seconds, self._head_timed_out
            )

    def _feed_past_room(self, data: bytes | memoryview, room: int) -> None:
        """Feed what fits; the rest only if the head ended within it."""
        view = memoryview(data)
        heads = self._heads
        self._feed(view[:room])
        if self._refusal is not None or self.transport.is_closing():
            return
        if self._heads == heads:
            self._refuse(refusals.headers_too_large(self._limits.max_header_bytes))
            return
        self.data_received(view[room:])

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no protocol upgrades here: the request was answered as plain HTTP
        except httptools.HttpParserError:
            self._refuse(self._violation or refusals.bad_request())

    # -- parser callbacks ---------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._heads += 1
        self._in_head = False
        self._cancel_head_timer()
        if len(self.headers) > self._limits.max_headers:
            # Counted here, not as each arrives: max_header_bytes already bounds their memory.
            self._violation = refusals.too_many_headers(self._limits.max_headers)
            raise _Refused
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        unadmitted = self._unadmitted
        if unadmitted is not None and unadmitted[0] is self.cycle:
            if len(self.cycle.body) + len(body) <= self._limits.buffered_body_bytes:
                self.cycle.body += body  # read on, unlike uvicorn, which pauses past 64 KiB
                return
            self._admit()  # a body too long to hold: the app reads (and refuses) it
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0
        if self._unadmitted is not None and self._unadmitted[0] is self.cycle:
            self._admit()

    # -- admission ----------------------------------------------------------------------------

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        """Ask for a slot once the request's body is in: a client sending its body slowly must
        not hold one of the few slots while the server has nothing to do for it."""
        self._unadmitted = (cycle, app)
        if not cycle.more_body:
            self._admit()
        elif cycle.waiting_for_100_continue:
            # The app would ask for the body by reading it; here it is read before the app runs.
            cycle.waiting_for_100_continue = False
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _admit(self) -> None:
        if self._unadmitted is not None:
            cycle, app = self._unadmitted
            self._unadmitted = None
            self._admission.admit(self, cycle, app)

    def start_admitted(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        """Run ``app`` for ``cycle`` now (called by :class:`Admission`)."""
        super()._start_asgi_task(cycle, app)

    def refuse_waiting(self, cycle: RequestResponseCycle, refusal: Refusal) -> None:
        """Answer a request that was never started (called by :class:`Admission`) without a
        task: the answer is written, the body is then read and dropped, and the connection is
        kept (for a client that sends again at once, that is the cheapest refusal)."""
        if cycle.disconnected or self.transport.is_closing():
            return
        cycle.response_started = cycle.response_complete = True
        self.transport.write(refusal.response(keep_alive=cycle.keep_alive))
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()

    # -- refusals -----------------------------------------------------------------------------

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self._refusal is not None or self.transport.is_closing():
            return
        if self._answering():
            # a pipelined head: its time runs once this answer is sent
            self._head_timer = self.loop.call_later(
                self._limits.header_timeout_seconds, self._head_timed_out
            )
        elif self._head_bytes == 0:
            self.transport.close()  # nothing sent at all: close quietly, as an idle keep-alive
        else:
            self._refuse(refusals.header_timeout(self._limits.header_timeout_seconds))

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse(self, refusal: Refusal) -> None:
        self._refusal = refusal
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        self._on_refusal(refusal.reason)
        if self._answering():
            # The refused head was pipelined behind a request still being answered, and there is
            # no room for a second answer: close (no client pipelines in practice).
            self.transport.close()
            return
        self.transport.write(refusal.response())
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self._linger = self.loop.call_later(LINGER_SECONDS, self.transport.close)
