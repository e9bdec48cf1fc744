"""What the console's buttons do: run a job now, promote a version, roll back.

Each is the library call the ``mercato`` command of the same name makes (``mercato jobs run
NAME``, ``mercato promote N``, ``mercato rollback``), made in a child process by
:class:`~mercato.console.launcher.SpawnRunner` with the API's configuration. The functions
below run in that child: they open what the command opens, make the call, and return what
the command prints with ``--format json``; the library's logging is their output.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import timedelta

from mercato.batch.engine import Engine, configured_engine
from mercato.batch.versions import promote, rollback
from mercato.config import Config
from mercato.console.launcher import Action, Ending
from mercato.log import Log, open_log
from mercato.scheduler.jobs import SubprocessRunner, configured_jobs, find_job
from mercato.scheduler.scheduler import Scheduler
from mercato.store import open_store
from mercato.store.base import Store

PROGRESS_SECONDS = 10.0  # at most one progress line this often


def run_job_action(name: str, config_path: str | None) -> Action:
    """Run job ``name`` now with its retries, recorded in the history (jobs run as
    ``mercato`` subprocesses with ``config_path``, as the scheduler runs them)."""
    return Action(("jobs", "run", name), run_job, (name, config_path))


def promote_action(version: int) -> Action:
    """Make ``version`` serve."""
    return Action(("promote", str(version)), promote_version, (version,))


def rollback_action() -> Action:
    """Make the version that served before the last promote serve again."""
    return Action(("rollback",), roll_back)


# -- in the child process ------------------------------------------------------------------------


def run_job(config: Config, name: str, config_path: str | None) -> Ending:
    """``mercato jobs run NAME``: its output, and its exit status as the operation's."""
    job = find_job(configured_jobs(config), name)
    with open_store(config) as store:
        scheduler = Scheduler(config, store, runner=SubprocessRunner(config_path))
        result = scheduler.run_job(job, {"trigger": "manual"})
    sys.stdout.write(result.outcome.output)
    run = {"job": result.job, "run_id": result.run_id, "attempt": result.attempt,
           "status": result.status}  # fmt: skip
    return Ending(run, result.outcome.exit_status)


def promote_version(config: Config, version: int) -> Ending:
    """``mercato promote VERSION``: the promote report."""
    with _opened(config) as (store, log, engine):
        report = promote(
            store, log, config.archive_path, version, engine,
            grace=_grace(config), progress=_progress("promoting"),
        )  # fmt: skip
    return Ending(report)


def roll_back(config: Config) -> Ending:
    """``mercato rollback``: the promote report of the version serving again."""
    with _opened(config) as (store, log, engine):
        report = rollback(
            store, log, config.archive_path, engine,
            grace=_grace(config), progress=_progress("rolling back"),
        )  # fmt: skip
    return Ending(report)


@contextmanager
def _opened(config: Config) -> Iterator[tuple[Store, Log, Engine]]:
    with (
        open_store(config) as store,
        closing(open_log(config)) as log,
        closing(configured_engine(config.batch)) as engine,
    ):
        yield store, log, engine


def _grace(config: Config) -> timedelta:
    return timedelta(minutes=config.batch.grace_minutes)


def _progress(doing: str) -> Callable[[int, int], None]:
    """Prints ``doing: done/total`` now and then (the console shows the output's tail)."""
    last = 0.0

    def advance(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_SECONDS or done == total:
            last = now
            print(f"{doing}: {done:,} of {total:,}", flush=True)

    return advance
