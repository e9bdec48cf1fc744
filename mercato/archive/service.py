"""Running the archiver as a process: ``mercato run archiver``."""

from __future__ import annotations

import logging
import signal
import threading
import time

from mercato.archive.archiver import Archiver
from mercato.archive.errors import ArchiveUnavailableError
from mercato.config import Config
from mercato.errors import retry_pause
from mercato.log import open_log
from mercato.log.errors import PERMANENT, LogError

logger = logging.getLogger("mercato.archive")

REPORT_SECONDS = 10.0


def serve(config: Config, *, announce: bool = True) -> None:
    """Archive until SIGINT or SIGTERM; what was read by then is written and committed first.

    Once it has reached the archive, while the log's brokers or the object store are away it
    starts over from its committed state after a growing pause, exactly as after a crash (the
    replay deletes a failed batch's leftovers); a corrupt log or a wrong layout stops it, and
    so does an archive it cannot reach at start (most likely the configuration).
    """
    settings = config.archive
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log = open_log(config)
    failures = 0
    started = False  # until the archive was reached once, an error is the configuration's
    try:
        while not stop.is_set():
            try:
                with Archiver(log, config.archive_path, settings) as archiver:
                    started = True
                    if announce:
                        print(
                            f"mercato archiver: partitions {archiver.partitions} of "
                            f"{log.partitions}, archive {config.archive_path}",
                            flush=True,
                        )
                        announce = False
                    if failures:
                        logger.info("going again after %d failures", failures)
                        failures = 0
                    _run(archiver, stop, settings.idle_sleep_ms / 1000)
                    archiver.flush()
            except (LogError, ArchiveUnavailableError) as exc:
                if isinstance(exc, PERMANENT) or not started:
                    raise
                failures += 1
                wait = retry_pause(failures)
                logger.warning("%s; starting over in %.1f s (failure %d)", exc, wait, failures)
                stop.wait(wait)
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
