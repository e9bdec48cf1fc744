"""Serving an ASGI app the way every Mercato role does: uvicorn with httptools and uvloop, its
connections accepted by :class:`Acceptor` and spoken to by :class:`BoundedHttpProtocol`,
graceful shutdown, exit 0."""

from __future__ import annotations

import functools
import logging
import signal
import socket
import sys
from typing import Any, Literal

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from mercato.asgi.acceptor import Acceptor, bind, reserve_descriptors
from mercato.asgi.admission import Admission
from mercato.asgi.limits import OnRefusal, ServerLimits, ignore
from mercato.asgi.protocol import BoundedHttpProtocol

logger = logging.getLogger("uvicorn.error")


class BoundedServer(uvicorn.Server):
    """uvicorn's server (lifespan, graceful shutdown, signals) with Mercato's listeners in
    place of uvloop's."""

    def __init__(self, config: uvicorn.Config, limits: ServerLimits, on_refusal: OnRefusal) -> None:
        super().__init__(config)
        self._limits = limits
        self._on_refusal = on_refusal
        self._acceptors: list[Acceptor] = []

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the lifespan, and no listener of uvicorn's own
        try:
            listeners = bind(self.config.host, self.config.port)
        except OSError as exc:
            logger.error("cannot listen on %s:%d: %s", self.config.host, self.config.port, exc)
            await self.lifespan.shutdown()
            sys.exit(STARTUP_FAILURE)
        self._admission = Admission(self._limits, self._on_refusal)
        factory = functools.partial(
            BoundedHttpProtocol,
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
            limits=self._limits,
            admission=self._admission,
            on_refusal=self._on_refusal,
        )
        for sock in listeners:
            acceptor = Acceptor(
                sock, factory, self.server_state.connections, self._limits, self._on_refusal
            )
            acceptor.start()
            self._acceptors.append(acceptor)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for acceptor in self._acceptors:
            acceptor.close()
        await super().shutdown(sockets)


def serve_asgi(
    app: Any,
    host: str,
    port: int,
    *,
    lifespan: Literal["on", "off"] = "off",
    limits: ServerLimits | None = None,
    on_refusal: OnRefusal = ignore,
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM; requests in flight finish (up to 30 s) first.
    ``on_refusal`` is called with the reason of each connection or request the server answers
    itself for a limit."""
    limits = limits or ServerLimits()
    reserve_descriptors(limits.max_connections)
    server = BoundedServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="uvloop",
            http="httptools",
            ws="none",
            lifespan=lifespan,
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=30,
        ),
        limits,
        on_refusal,
    )
    # uvicorn handles SIGINT/SIGTERM while serving, then re-raises the signal into the handler
    # that was installed before; make that one a no-op so callers clean up and exit 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server.run()
