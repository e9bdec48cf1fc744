"""Running the collector: uvicorn in front of :class:`CollectorApp`, with graceful shutdown."""

from __future__ import annotations

import logging
import signal
import threading

import uvicorn

from mercato.collector.app import CollectorApp
from mercato.collector.keys import KeyStore
from mercato.config import Config
from mercato.log import open_log

logger = logging.getLogger("mercato.collector")

RETENTION_INTERVAL_SECONDS = 60.0


def serve(config: Config, *, announce: bool = True) -> None:
    """Serve until SIGINT or SIGTERM; requests in flight finish, then the log is closed."""
    log = open_log(config)
    app = CollectorApp(config.collector, log, KeyStore(config.keys_path))
    stop = threading.Event()
    retention = threading.Thread(
        target=_enforce_retention, args=(log, stop), name="mercato-retention", daemon=True
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.collector.host,
            port=config.collector.port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=30,
        )
    )
    if announce:
        print(
            f"mercato collector on http://{config.collector.host}:{config.collector.port} "
            f"(log {config.log_path}, {log.partitions} partitions)",
            flush=True,
        )
    # uvicorn handles SIGINT/SIGTERM while serving, then re-raises the signal into the handler
    # that was installed before; make that one a no-op so the log is closed and we exit 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    retention.start()
    try:
        server.run()
    finally:
        stop.set()
        app.close()
        log.close()


def _enforce_retention(log: object, stop: threading.Event) -> None:
    enforce = getattr(log, "enforce_retention", None)
    if enforce is None:
        return
    while not stop.wait(RETENTION_INTERVAL_SECONDS):
        try:
            deleted = enforce()
            if deleted:
                logger.info("retention deleted %d log segments", deleted)
        except Exception:
            logger.exception("log retention failed")
