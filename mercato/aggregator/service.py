"""Running the aggregator as a process: ``mercato run aggregator``."""

from __future__ import annotations

import logging
import signal
import threading
import time

from mercato.aggregator.aggregator import Aggregator
from mercato.config import Config
from mercato.log import open_log
from mercato.metrics.definitions import load_definitions
from mercato.store import open_store

logger = logging.getLogger("mercato.aggregator")

REPORT_SECONDS = 10.0


def serve(config: Config, *, announce: bool = True) -> None:
    """Aggregate until SIGINT or SIGTERM; the batch in progress is finished first."""
    settings = config.aggregator
    definitions = load_definitions(settings.definitions or None)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log = open_log(config)
    try:
        with open_store(config) as store:
            aggregator = Aggregator(
                log,
                store,
                definitions,
                partitions=settings.partitions or None,
                max_batch_records=settings.max_batch_records,
                dedup_window=settings.dedup_window,
            )
            if announce:
                print(
                    f"mercato aggregator: partitions {aggregator.partitions} of {log.partitions}, "
                    f"definitions {definitions.version} (version {aggregator.version}), "
                    f"store {config.store_path}",
                    flush=True,
                )
            _run(aggregator, stop, settings.idle_sleep_ms / 1000)
    finally:
        log.close()


def _run(aggregator: Aggregator, stop: threading.Event, idle_sleep: float) -> None:
    reported = time.monotonic()
    while not stop.is_set():
        if aggregator.poll() == 0 and not any(aggregator.lag().values()):
            stop.wait(idle_sleep)
        if time.monotonic() - reported >= REPORT_SECONDS:
            reported = time.monotonic()
            stats = aggregator.stats
            logger.info(
                "events %d, duplicates %d, invalid %d, lag %s, dedup window %d ids (%d MB)",
                stats.events,
                stats.duplicates,
                stats.invalid,
                aggregator.lag(),
                stats.dedup_ids,
                stats.dedup_bytes // 1_000_000,
            )
