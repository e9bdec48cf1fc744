"""Admission of requests to the app: a bounded number at a time, the others waiting a bounded
time.

Every request the app works on adds to each event-loop iteration (a collector decodes its
batch on the loop), and a new connection is accepted, read and answered only between
iterations. With hundreds of requests running, an iteration took seconds and a fresh request
waited minutes. Admitting at most ``max_requests_in_flight`` keeps iterations short; the
others wait, their connections' reading paused (which also holds back a client that sends
again the moment it is answered), first come first served, and one that has waited
``max_queue_seconds`` is answered 503 with Retry-After at once (its body is then read and
dropped, and the connection kept).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from mercato.asgi import refusals
from mercato.asgi.limits import OnRefusal, ServerLimits


class Connection(Protocol):
    """What admission needs of a connection's protocol."""

    flow: FlowControl

    def start_admitted(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None: ...

    def refuse_waiting(self, cycle: RequestResponseCycle, refusal: refusals.Refusal) -> None: ...


@dataclass(slots=True)
class _Waiting:
    deadline: float
    connection: Connection
    cycle: RequestResponseCycle
    app: ASGI3Application


class Admission:
    """The server's requests in flight; one instance shared by all its connections."""

    def __init__(self, limits: ServerLimits, on_refusal: OnRefusal) -> None:
        self._limit = limits.max_requests_in_flight
        self._max_wait = limits.max_queue_seconds
        self._on_refusal = on_refusal
        self._refusal = refusals.over_requests_in_flight(
            limits.max_requests_in_flight, limits.retry_after_seconds
        )
        self._running = 0
        self._waiting: deque[_Waiting] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def admit(
        self, connection: Connection, cycle: RequestResponseCycle, app: ASGI3Application
    ) -> None:
        """Start the request now if there is room and nobody is waiting, else queue it."""
        if self._running < self._limit and not self._waiting:
            self._start(connection, cycle, app)
            return
        connection.flow.pause_reading()
        deadline = self._loop.time() + self._max_wait
        self._waiting.append(_Waiting(deadline, connection, cycle, app))
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._expire)

    def _start(
        self, connection: Connection, cycle: RequestResponseCycle, app: ASGI3Application
    ) -> None:
        self._running += 1
        connection.start_admitted(cycle, functools.partial(self._run, app))

    async def _run(
        self,
        app: ASGI3Application,
        scope: Scope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
    ) -> None:
        try:
            await app(scope, receive, send)
        finally:
            self._running -= 1
            self._start_waiting()

    def _start_waiting(self) -> None:
        while self._waiting and self._running < self._limit:
            waiting = self._waiting.popleft()
            if not waiting.cycle.disconnected:
                self._start(waiting.connection, waiting.cycle, waiting.app)

    def _expire(self) -> None:
        self._timer = None
        now = self._loop.time()
        while self._waiting and self._waiting[0].deadline <= now:
            waiting = self._waiting.popleft()
            if not waiting.cycle.disconnected:
                self._on_refusal("max_requests_in_flight")
                waiting.connection.refuse_waiting(waiting.cycle, self._refusal)
        if self._waiting:
            self._timer = self._loop.call_at(self._waiting[0].deadline, self._expire)
