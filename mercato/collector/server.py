"""Running the collector: uvicorn in front of :class:`CollectorApp`, with graceful shutdown."""

from __future__ import annotations

import logging
import threading

from mercato.archive.retention import enforce_retention
from mercato.asgi import ServerLimits, serve_asgi
from mercato.collector.app import CollectorApp
from mercato.collector.keys import KeyStore
from mercato.collector.quarantine import Quarantine, open_quarantine_log
from mercato.config import Config
from mercato.log import Log, open_log
from mercato.log.errors import LogError

logger = logging.getLogger("mercato.collector")

RETENTION_INTERVAL_SECONDS = 60.0


def serve(config: Config, *, announce: bool = True) -> None:
    """Serve until SIGINT or SIGTERM; requests in flight finish, then the log is closed."""
    log = open_log(config)
    quarantine = Quarantine(lambda: _quarantine_log(config))
    try:
        quarantine.log()
    except LogError as exc:
        logger.warning(
            "the quarantine is unavailable (%s): Segment requests with an invalid message are "
            "answered 503 until it is",
            exc,
        )
    app = CollectorApp(config.collector, log, KeyStore(config.keys_path), quarantine=quarantine)
    stop = threading.Event()
    retention = threading.Thread(
        target=_enforce_retention, args=(config, log, stop), name="mercato-retention", daemon=True
    )
    if announce:
        print(
            f"mercato collector on http://{config.collector.host}:{config.collector.port} "
            f"(log {_where(config)}, {log.partitions} partitions)",
            flush=True,
        )
    retention.start()
    try:
        serve_asgi(
            app,
            config.collector.host,
            config.collector.port,
            lifespan="on",
            limits=ServerLimits.of(
                config.collector,
                retry_after_seconds=config.collector.retry_after_seconds,
                buffered_body_bytes=config.collector.max_body_bytes,
            ),
            on_refusal=app.metrics.refuse,
        )
    finally:
        stop.set()
        app.close()
        log.close()
        quarantine.close()


def _quarantine_log(config: Config) -> Log:
    log = open_quarantine_log(config)
    assert log is not None  # created when missing
    return log


def _where(config: Config) -> str:
    if config.log.backend == "kafka":
        return f"kafka topic {config.log.kafka_topic} on {config.log.kafka_bootstrap_servers}"
    return str(config.log_path)


def _enforce_retention(config: Config, log: Log, stop: threading.Event) -> None:
    while not stop.wait(RETENTION_INTERVAL_SECONDS):
        try:
            deleted = enforce_retention(config, log)
            if deleted:
                logger.info("retention deleted %d log segments", deleted)
        except Exception:
            logger.exception("log retention failed")
