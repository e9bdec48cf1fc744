"""The scheduler: one leader runs the jobs on time while other processes wait as standbys.

**Leader election.** A lease named ``scheduler`` in the store. On every tick each scheduler
process calls ``acquire_lease("scheduler", holder, lease_seconds)``: the leader renews its
lease, a standby is refused until the leader releases it (a clean shutdown: the standby
takes over on its next tick) or stops renewing it for ``lease_seconds`` (a crash, kill -9, a
lost machine). A leader that finds the lease taken, or cannot reach the store for
``lease_seconds``, ends its running jobs at once, so two leaders never run a job side by side.

**Concurrency.** Each due job runs in a thread of its own, so an hour-long compaction does not
hold back the five-minute seal. A job never overlaps itself: while one of its runs is in
progress (its retry waits included), its due times pass unrun and coalesce into one run
after it ends.

**Retries.** A failed attempt (non-zero exit, killed, timed out) is retried after
``backoff_seconds * 2 ** (attempt - 1)`` seconds, up to ``retries`` more attempts; every
attempt is a row of the run history. After the last failed attempt the error hook runs once.

**Missed runs.** A run records the due time it stands for (``scheduled_for``: the latest
one that had passed when it started). On becoming leader, a job that has never run on
schedule, whose last scheduled run was cut short (its scheduler died or stopped: the run is
marked ``abandoned``), or whose next due time after its last scheduled run has passed, runs
at once and then follows its schedule: missed due times are not replayed one by one (every
job is idempotent and catches up by itself). Manual runs and backfills do not count as
scheduled runs.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mercato.config import Config
from mercato.names import RUNNING
from mercato.scheduler.clock import Clock, SystemClock
from mercato.scheduler.hooks import ErrorHook, Failure
from mercato.scheduler.jobs import (
    ABANDONED,
    FAILED,
    SUCCEEDED,
    Job,
    Outcome,
    Runner,
    SubprocessRunner,
    configured_jobs,
)
from mercato.store.base import JobStore
from mercato.store.errors import StoreError

logger = logging.getLogger("mercato.scheduler")

LEASE = "scheduler"
HISTORY_LOOKBACK = 50  # rows of a job's history searched for its last scheduled run
STOP_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class RunResult:
    """How a run ended: its last attempt's id, number, status and outcome."""

    job: str
    run_id: int
    attempt: int
    status: str
    outcome: Outcome


def default_holder() -> str:
    """A name for this process in the lease: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Scheduler:
    """Runs ``config``'s jobs on their schedules while it holds the lease; see the module.

    :meth:`tick` does one round (the service calls it every ``tick_seconds``),
    :meth:`run_job` runs one job now with its retries (``mercato jobs run`` and ``backfill``),
    :meth:`shutdown` ends running jobs and releases the lease.
    """

    def __init__(
        self,
        config: Config,
        store: JobStore,
        *,
        runner: Runner | None = None,
        clock: Clock | None = None,
        holder: str | None = None,
    ) -> None:
        settings = config.scheduler
        self.jobs = configured_jobs(config)
        self.holder = holder or default_holder()
        self.lease_seconds = settings.lease_seconds
        self.leading = False
        self._store = store
        self._runner: Runner = runner if runner is not None else SubprocessRunner()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._hook = ErrorHook(settings.on_error_command, settings.on_error_webhook)
        self._halt = threading.Event()  # set: end running attempts, start no retries
        self._workers: dict[str, threading.Thread] = {}
        self._next_due: dict[str, datetime] = {}
        self._renewed_at: datetime | None = None
        self._said_standby = False

    @property
    def scheduled(self) -> list[Job]:
        """The enabled jobs, the ones the schedule runs."""
        return [job for job in self.jobs.values() if job.enabled]

    def next_due(self, name: str) -> datetime | None:
        """When the leader next starts job ``name`` (None when not leading or disabled)."""
        return self._next_due.get(name) if self.leading else None

    def running(self) -> list[str]:
        """The jobs with a run in progress in this process."""
        return [name for name, thread in self._workers.items() if thread.is_alive()]

    # -- the schedule -----------------------------------------------------------------------

    def tick(self) -> list[str]:
        """One round: renew or try to take the lease and, as the leader, start every due job
        that is not running. Returns the names of the jobs started."""
        now = self._clock.now()
        if not self._hold_lease(now):
            return []
        self._workers = {n: t for n, t in self._workers.items() if t.is_alive()}
        started = []
        for job in self.scheduled:
            due = self._next_due[job.name]
            if job.name in self._workers or now < due:
                continue
            due = _latest_due(job, due, now)
            self._next_due[job.name] = job.schedule.next_after(due)
            params = {"scheduled_for": _iso(due), "scheduler": self.holder}
            thread = threading.Thread(
                target=self._work, args=(job, params), name=f"job-{job.name}", daemon=True
            )
            self._workers[job.name] = thread
            thread.start()
            started.append(job.name)
        return started

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the runs in progress to end; True if they all did within ``timeout``."""
        for thread in list(self._workers.values()):
            thread.join(timeout)
        return not self.running()

    def shutdown(self) -> None:
        """End the runs in progress (recorded ``abandoned``) and release the lease."""
        if self.running():
            logger.info("stopping running jobs: %s", ", ".join(self.running()))
        self._end_runs()
        if self.leading:
            self.leading = False
            try:
                self._store.release_lease(LEASE, self.holder)
            except StoreError as exc:
                logger.error("could not release the lease (it expires by itself): %s", exc)

    def _hold_lease(self, now: datetime) -> bool:
        try:
            held = self._store.acquire_lease(LEASE, self.holder, self.lease_seconds)
        except StoreError as exc:
            logger.error("cannot renew the scheduler lease: %s", exc)
            lapsed = self._renewed_at is None or (
                (now - self._renewed_at).total_seconds() >= self.lease_seconds
            )
            if self.leading and lapsed:
                self._step_down("its lease lapsed while the store could not be reached")
            return False
        if held:
            self._renewed_at = now
            if not self.leading:
                self._lead(now)
            return True
        if self.leading:
            self._step_down("another scheduler holds the lease")
        elif not self._said_standby:
            logger.info("%s is standby: another scheduler holds the lease", self.holder)
        self._said_standby = True
        return False

    def _lead(self, now: datetime) -> None:
        self._next_due = {job.name: self._first_due(job, now) for job in self.scheduled}
        self._halt.clear()
        self.leading = True
        self._said_standby = False
        logger.info(
            "%s leads (lease %g s); jobs: %s",
            self.holder,
            self.lease_seconds,
            ", ".join(f"{j.name} [{j.schedule.text}]" for j in self.scheduled) or "none",
        )

    def _first_due(self, job: Job, now: datetime) -> datetime:
        """When ``job`` is first due under a new leader (``now`` if it missed a run)."""
        history = self._store.job_runs(job.name, HISTORY_LOOKBACK)
        scheduled = [run for run in history if "scheduler" in run.params]
        for run in scheduled:
            if run.status == RUNNING and run.params["scheduler"] != self.holder:
                error = f"scheduler {run.params['scheduler']} stopped while this ran"
                self._store.finish_job_run(run.id, ABANDONED, error, run.output)
        if not scheduled or scheduled[0].status in (RUNNING, ABANDONED):
            return now
        try:
            last_due = datetime.fromisoformat(scheduled[0].params["scheduled_for"])
        except (KeyError, TypeError, ValueError):
            return now
        return job.schedule.next_after(last_due)

    def _step_down(self, reason: str) -> None:
        logger.warning("%s stops leading: %s; ending its running jobs", self.holder, reason)
        self.leading = False
        self._end_runs()

    def _end_runs(self) -> None:
        self._halt.set()
        # Again until every run has ended: an attempt may start just after a stop.
        while self.running():
            self._runner.stop()
            self.join(STOP_POLL_SECONDS)

    def _work(self, job: Job, params: Mapping[str, Any]) -> None:
        try:
            self.run_job(job, params)
        except Exception:
            logger.exception("%s: the run failed inside the scheduler", job.name)

    # -- one run ----------------------------------------------------------------------------

    def run_job(
        self, job: Job, params: Mapping[str, Any], extra_args: Sequence[str] = ()
    ) -> RunResult:
        """Run ``job`` now, retrying as configured, every attempt recorded with ``params``;
        the error hook runs if the last attempt fails."""
        command = [*job.command, *extra_args]
        for attempt in range(1, job.attempts + 1):
            run_id = self._store.start_job_run(job.name, params, attempt)
            logger.info(
                "%s: attempt %d of %d started (run %d)", job.name, attempt, job.attempts, run_id
            )
            try:
                outcome = self._runner.run(command, job.timeout_seconds)
            except BaseException:
                self._store.finish_job_run(run_id, ABANDONED, "interrupted")
                raise
            if self._halt.is_set() and not outcome.ok:
                reason = "stopped: the scheduler shut down or lost its lease"
                self._store.finish_job_run(run_id, ABANDONED, reason, outcome.output)
                logger.warning("%s: run %d %s", job.name, run_id, reason)
                return RunResult(job.name, run_id, attempt, ABANDONED, outcome)
            error = outcome.error(job.timeout_seconds)
            status = SUCCEEDED if outcome.ok else FAILED
            self._store.finish_job_run(run_id, status, error, outcome.output)
            if error is None:
                logger.info("%s: run %d succeeded", job.name, run_id)
                return RunResult(job.name, run_id, attempt, status, outcome)
            if attempt == job.attempts:
                logger.error(
                    "%s: run %d failed, attempt %d of %d: %s",
                    job.name,
                    run_id,
                    attempt,
                    job.attempts,
                    error,
                )
                self._hook(Failure(job.name, run_id, attempt, error, dict(params)))
                return RunResult(job.name, run_id, attempt, status, outcome)
            delay = job.backoff(attempt)
            logger.warning(
                "%s: run %d failed (%s); attempt %d in %g s",
                job.name,
                run_id,
                error,
                attempt + 1,
                delay,
            )
            if self._clock.wait(delay, self._halt):
                logger.warning("%s: retries given up, the scheduler is stopping", job.name)
                return RunResult(job.name, run_id, attempt, status, outcome)
        raise AssertionError("a job makes at least one attempt")


def _latest_due(job: Job, due: datetime, now: datetime) -> datetime:
    """The last of ``job``'s due times from ``due`` up to ``now``: the one a run started now
    stands for (the ones before it are caught up by the same run)."""
    while (following := job.schedule.next_after(due)) <= now:
        due = following
    return due


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
