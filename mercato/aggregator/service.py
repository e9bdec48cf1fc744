"""Running the aggregator as a process: ``mercato run aggregator``."""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import UTC, datetime

from mercato.aggregator.aggregator import Aggregator, AggregatorStore
from mercato.aggregator.replay import REPLAY_MARGIN, replay_start
from mercato.config import Config
from mercato.errors import retry_pause
from mercato.log import open_log
from mercato.log.assignment import Assignment, open_assignment
from mercato.log.base import Log
from mercato.log.errors import PERMANENT, LogError
from mercato.metrics.definitions import Definitions, load_definitions
from mercato.names import SEALED_THROUGH, aggregator_consumer
from mercato.store import describe_store, open_store
from mercato.store.base import VersionStore
from mercato.store.errors import StoreUnavailableError, StoreWriteError
from mercato.store.versions import definitions_of, serving

logger = logging.getLogger("mercato.aggregator")

REPORT_SECONDS = 10.0
SERVING_CHECK_SECONDS = 1.0


def serve(config: Config, *, announce: bool = True) -> None:
    """Aggregate until SIGINT or SIGTERM; the batch in progress is finished first.

    The aggregator runs the *serving* definitions version (the configured definitions start
    serving when none does yet), and switches when a promote or rollback changes it. A store
    that cannot be opened or written when starting (its disk full, say) is tried again after
    a growing pause, as the running loop does.
    """
    settings = config.aggregator
    configured = load_definitions(settings.definitions or None)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log = open_log(config)
    assignment: Assignment | None = None
    failures = 0
    try:
        assignment = open_assignment(
            log,
            config.log,
            settings.partitions,
            settings.kafka_group,
            settings.kafka_session_timeout_ms,
        )
        while not stop.is_set():
            try:
                with open_store(config) as store:
                    version = _serving(store, configured)
                    while not stop.is_set():
                        aggregator = _aggregator(config, log, store, version, assignment.owned())
                        if announce:
                            print(
                                f"mercato aggregator: {assignment.description}, definitions "
                                f"{aggregator.definitions.version} (version "
                                f"{aggregator.version}), store {describe_store(config)}",
                                flush=True,
                            )
                            announce = False
                        if failures:
                            logger.info("started after %d failures", failures)
                            failures = 0
                        version = _run(aggregator, assignment, stop, settings.idle_sleep_ms / 1000)
            except (LogError, StoreWriteError, StoreUnavailableError) as exc:
                if isinstance(exc, PERMANENT):
                    raise
                failures += 1
                wait = retry_pause(failures)
                logger.warning("cannot start: %s; trying again in %.1f s (failure %d)",
                               exc, wait, failures)  # fmt: skip
                stop.wait(wait)
    finally:
        if assignment is not None:
            assignment.close()
        log.close()


def _serving(store: VersionStore, configured: Definitions) -> int:
    version, definitions = serving(store, configured)
    if definitions.version != configured.version:
        logger.warning(
            "the configured definitions (%s) are not the serving version %d (%s): "
            "serving wins; change definitions with `mercato reprocess` and `mercato promote`",
            configured.version,
            version,
            definitions.version,
        )
    return version


def _aggregator(
    config: Config, log: Log, store: AggregatorStore, version: int, partitions: list[int]
) -> Aggregator:
    """An aggregator for ``version``; a consumer new to the store replays the log from a
    little before the version's seal watermark (everything before it is served final)."""
    definitions = definitions_of(store, version)
    through = store.watermark(SEALED_THROUGH, version)
    starts = None
    if through is not None and not store.offsets(aggregator_consumer(definitions.version)):
        since = datetime.fromtimestamp(through, UTC) - REPLAY_MARGIN
        starts = {p: replay_start(log, p, since) for p in range(log.partitions)}
    return Aggregator(
        log,
        store,
        definitions,
        partitions=partitions,
        max_batch_records=config.aggregator.max_batch_records,
        dedup_window=config.aggregator.dedup_window,
        start_offsets=starts,
    )


def _run(
    aggregator: Aggregator, assignment: Assignment, stop: threading.Event, idle_sleep: float
) -> int:
    """Poll until stopped or the serving version changes; return the serving version.
    Between batches, take on and give up partitions as ``assignment`` says. While the brokers
    or the database are away, try again with a growing pause: a failed batch counted nothing,
    and its ids were not learnt by the dedup window."""
    reported = checked = time.monotonic()
    failures = 0
    while not stop.is_set():
        try:
            _step(aggregator, assignment, stop, idle_sleep)
            now = time.monotonic()
            if now - checked >= SERVING_CHECK_SECONDS:
                checked = now
                serving_now = aggregator.store.serving_version()
                if serving_now is not None and serving_now != aggregator.version:
                    logger.info(
                        "version %d serves now: switching from %d", serving_now, aggregator.version
                    )
                    return serving_now
            if now - reported >= REPORT_SECONDS:
                reported = now
                _report(aggregator)
        except (LogError, StoreWriteError, StoreUnavailableError) as exc:
            if isinstance(exc, PERMANENT):
                raise
            failures += 1
            wait = retry_pause(failures)
            logger.warning("%s; trying again in %.1f s (failure %d)", exc, wait, failures)
            stop.wait(wait)
            continue
        if failures:
            logger.info("going again after %d failures", failures)
            failures = 0
    return aggregator.version


def _step(
    aggregator: Aggregator, assignment: Assignment, stop: threading.Event, idle_sleep: float
) -> None:
    owned = assignment.owned()
    if owned != aggregator.partitions:
        aggregator.revoke(set(aggregator.partitions) - set(owned))
        aggregator.assign(owned)
        logger.info("partitions now %s", aggregator.partitions)
    if aggregator.poll():
        assignment.stored(aggregator.positions)
    elif not any(aggregator.lag().values()):
        stop.wait(idle_sleep)


def _report(aggregator: Aggregator) -> None:
    stats = aggregator.stats
    logger.info(
        "events %d, duplicates %d, invalid %d, fenced %d, lag %s, dedup window %d ids (%d MB)",
        stats.events,
        stats.duplicates,
        stats.invalid,
        stats.fenced,
        aggregator.lag(),
        stats.dedup_ids,
        stats.dedup_bytes // 1_000_000,
    )
