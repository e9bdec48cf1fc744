"""Serving an ASGI app the way every Mercato role does: uvicorn, graceful shutdown, exit 0."""

from __future__ import annotations

import signal
from typing import Any, Literal

import uvicorn


def serve_asgi(app: Any, host: str, port: int, *, lifespan: Literal["on", "off"] = "off") -> None:
    """Serve ``app`` until SIGINT or SIGTERM; requests in flight finish (up to 30 s) first."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="uvloop",
            http="httptools",
            lifespan=lifespan,
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=30,
        )
    )
    # uvicorn handles SIGINT/SIGTERM while serving, then re-raises the signal into the handler
    # that was installed before; make that one a no-op so callers clean up and exit 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server.run()
