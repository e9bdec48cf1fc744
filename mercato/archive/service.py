"""Running the archiver as a process: ``mercato run archiver``."""

from __future__ import annotations

import logging
import signal
import threading
import time

from mercato.archive.archiver import Archiver
from mercato.config import Config
from mercato.log import open_log

logger = logging.getLogger("mercato.archive")

REPORT_SECONDS = 10.0


def serve(config: Config, *, announce: bool = True) -> None:
    """Archive until SIGINT or SIGTERM; what was read by then is written and committed first."""
    settings = config.archive
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log = open_log(config)
    try:
        with Archiver(log, config.archive_path, settings) as archiver:
            if announce:
                print(
                    f"mercato archiver: partitions {archiver.partitions} of {log.partitions}, "
                    f"archive {config.archive_path}",
                    flush=True,
                )
            _run(archiver, stop, settings.idle_sleep_ms / 1000)
            archiver.flush()
    finally:
        log.close()


def _run(archiver: Archiver, stop: threading.Event, idle_sleep: float) -> None:
    reported = time.monotonic()
    while not stop.is_set():
        if archiver.poll() == 0:
            stop.wait(idle_sleep)
        if time.monotonic() - reported >= REPORT_SECONDS:
            reported = time.monotonic()
            stats = archiver.stats
            watermark = archiver.watermark()
            logger.info(
                "events %d, invalid %d, files %d (%d MB), replaced %d, lag %s, watermark %s",
                stats.events,
                stats.invalid,
                stats.files,
                stats.bytes // 1_000_000,
                stats.replaced,
                archiver.lag(),
                watermark.isoformat(timespec="seconds") if watermark else "none",
            )
