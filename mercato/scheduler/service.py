"""Running the scheduler as a process: ``mercato run scheduler``."""

from __future__ import annotations

import logging
import signal
import threading

from mercato.config import Config
from mercato.scheduler.jobs import SubprocessRunner
from mercato.scheduler.scheduler import Scheduler
from mercato.store import describe_store, open_store
from mercato.store.errors import StoreError

logger = logging.getLogger("mercato.scheduler")


def serve(config: Config, *, config_path: str | None = None, announce: bool = True) -> None:
    """Lead or stand by until SIGINT or SIGTERM; then end the running jobs (they are
    idempotent, and the next leader runs them again), release the lease and return.

    Jobs run with ``config_path`` as their ``--config`` and this process's environment.
    """
    settings = config.scheduler
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with open_store(config) as store:
        scheduler = Scheduler(config, store, runner=SubprocessRunner(config_path))
        if announce:
            print(
                f"mercato scheduler: {scheduler.holder}, "
                f"{len(scheduler.scheduled)} of {len(scheduler.jobs)} jobs enabled, "
                f"lease {settings.lease_seconds:g} s, store {describe_store(config)}",
                flush=True,
            )
        try:
            while not stop.is_set():
                try:
                    scheduler.tick()
                except StoreError as exc:  # a busy or briefly unreachable store: next tick
                    logger.error("scheduler tick failed: %s", exc)
                stop.wait(settings.tick_seconds)
        finally:
            scheduler.shutdown()
            logger.info("%s stopped", scheduler.holder)
