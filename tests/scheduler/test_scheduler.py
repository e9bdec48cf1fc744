"""The scheduler with a fake runner and a manual clock: what runs when, retries, leadership."""

from __future__ import annotations

import time
from collections.abc import Callable

from mercato.scheduler.clock import ManualClock, SystemClock
from mercato.scheduler.jobs import Outcome
from mercato.scheduler.scheduler import LEASE, Scheduler
from mercato.store.base import JobStore
from mercato.store.sqlite import SqliteStore

from .conftest import START, FakeRunner, job, make_config

OK = Outcome(0, "done\n")


def failing(*outcomes: Outcome) -> FakeRunner:
    """A runner answering with ``outcomes`` in turn, then success."""
    queue = list(outcomes)
    return FakeRunner(lambda command: queue.pop(0) if queue else OK)


def wait_for(predicate: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def attempts(store: JobStore, name: str) -> list[tuple[int, str]]:
    return [(run.attempt, run.status) for run in reversed(store.job_runs(name))]


# -- retries -------------------------------------------------------------------------------------


def test_a_failure_is_retried_with_exponential_backoff_attempt_by_attempt(
    store: JobStore, clock: ManualClock
) -> None:
    config = make_config({"flaky": job(command=["flaky", "--x"], retries=3, backoff_seconds=10)})
    runner = failing(Outcome(1, "one\nboom 1\n"), Outcome(3, ""), Outcome(-9, "partial"))
    scheduler = Scheduler(config, store, runner=runner, clock=clock, holder="a")
    assert scheduler.tick() == ["flaky"]
    assert scheduler.join(5)

    assert clock.waits == [10, 20, 40]  # backoff_seconds * 2 ** (attempt - 1)
    assert runner.commands() == [["flaky", "--x"]] * 4
    statuses = ["failed", "failed", "failed", "succeeded"]
    assert attempts(store, "flaky") == list(enumerate(statuses, start=1))
    runs = list(reversed(store.job_runs("flaky")))
    assert [r.error for r in runs] == [
        "exit status 1: boom 1",
        "exit status 3",
        "killed by SIGKILL: partial",
        None,
    ]
    assert [r.output for r in runs] == ["one\nboom 1\n", "", "partial", "done\n"]
    assert all(r.finished_at is not None for r in runs)
    assert {r.params["scheduled_for"] for r in runs} == {"2026-11-26T10:02:00Z"}
    assert {r.params["scheduler"] for r in runs} == {"a"}


def test_retries_stop_at_the_limit_and_a_timeout_counts_as_a_failure(
    store: JobStore, clock: ManualClock
) -> None:
    config = make_config({"slow": job(retries=2, backoff_seconds=1.5, timeout_seconds=7)})
    runner = FakeRunner(lambda command: Outcome(-15, "", timed_out=True))
    scheduler = Scheduler(config, store, runner=runner, clock=clock)
    result = scheduler.run_job(scheduler.jobs["slow"], {"trigger": "manual"})
    assert clock.waits == [1.5, 3.0]
    assert [timeout for _, timeout in runner.calls] == [7, 7, 7]
    assert attempts(store, "slow") == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert {r.error for r in store.job_runs("slow")} == {"timed out after 7 s"}
    assert (result.attempt, result.status, result.run_id) == (3, "failed", store.job_runs()[0].id)
    assert result.outcome.exit_status == 128 + 15


def test_no_retries_means_one_attempt(store: JobStore, clock: ManualClock) -> None:
    config = make_config({"once": job(retries=0)})
    scheduler = Scheduler(config, store, runner=failing(Outcome(2)), clock=clock)
    result = scheduler.run_job(scheduler.jobs["once"], {})
    assert attempts(store, "once") == [(1, "failed")]
    assert clock.waits == []
    assert result.outcome.exit_status == 2


# -- what runs when ------------------------------------------------------------------------------


def test_jobs_run_when_due_and_a_job_that_never_ran_runs_at_once(
    store: JobStore, clock: ManualClock
) -> None:
    config = make_config({"five": job("*/5 * * * *", ["five"]), "hourly": job("0 * * * *", ["h"])})
    runner = FakeRunner()
    scheduler = Scheduler(config, store, runner=runner, clock=clock, holder="a")
    assert sorted(scheduler.tick()) == ["five", "hourly"]  # 10:02, never ran: both at once
    scheduler.join(5)
    clock.set(START.replace(minute=4, second=59))
    assert scheduler.tick() == []
    clock.set(START.replace(minute=5))
    assert scheduler.tick() == ["five"]
    scheduler.join(5)
    assert scheduler.tick() == []  # 10:05 again: already run for it
    clock.set(START.replace(hour=11, minute=0, second=30))
    assert sorted(scheduler.tick()) == ["five", "hourly"]
    scheduler.join(5)
    assert [r.params["scheduled_for"] for r in reversed(store.job_runs("five"))] == [
        "2026-11-26T10:02:00Z",
        "2026-11-26T10:05:00Z",
        "2026-11-26T11:00:00Z",  # one run for 10:10 … 11:00, standing for the last of them
    ]
    assert scheduler.next_due("five") == START.replace(hour=11, minute=5)


def test_a_job_never_overlaps_itself_and_missed_ticks_coalesce(
    store: JobStore, clock: ManualClock
) -> None:
    config = make_config({"long": job("* * * * *", ["long"]), "short": job("* * * * *", ["s"])})
    runner = FakeRunner()
    runner.block("long")
    scheduler = Scheduler(config, store, runner=runner, clock=clock)
    assert sorted(scheduler.tick()) == ["long", "short"]
    assert runner.wait_entered("long")
    wait_for(lambda: "short" not in scheduler.running())
    for minute in range(1, 6):
        clock.advance(60)
        assert scheduler.tick() == ["short"], minute  # long is still running: not again
        wait_for(lambda: "short" not in scheduler.running())
    assert scheduler.running() == ["long"]
    runner.release("long")
    assert scheduler.join(5)
    assert scheduler.tick() == ["long"]  # once for the five due times it missed
    assert scheduler.join(5)
    assert scheduler.tick() == []
    clock.advance(60)
    assert sorted(scheduler.tick()) == ["long", "short"]
    assert scheduler.join(5)
    runs = list(reversed(store.job_runs("long")))
    assert [r.params["scheduled_for"][11:16] for r in runs] == ["10:02", "10:07", "10:08"]
    assert {r.status for r in runs} == {"succeeded"}
    assert len(store.job_runs("short")) == 7


def test_different_jobs_run_side_by_side(store: JobStore, clock: ManualClock) -> None:
    config = make_config({"a": job(command=["a"]), "b": job(command=["b"])})
    runner = FakeRunner()
    runner.block("a")
    runner.block("b")
    scheduler = Scheduler(config, store, runner=runner, clock=clock)
    scheduler.tick()
    assert runner.wait_entered("a")
    assert runner.wait_entered("b")  # b started while a still runs
    assert sorted(scheduler.running()) == ["a", "b"]
    runner.release("a")
    runner.release("b")
    assert scheduler.join(5)


def test_disabled_jobs_are_not_scheduled(store: JobStore, clock: ManualClock) -> None:
    config = make_config({"off": job(command=["off"], enabled=False), "on": job(command=["on"])})
    runner = FakeRunner()
    scheduler = Scheduler(config, store, runner=runner, clock=clock)
    for _ in range(3):
        scheduler.tick()
        scheduler.join(5)
        clock.advance(60)
    assert runner.commands() == [["on"]] * 3
    assert [j.name for j in scheduler.scheduled] == ["on"]


def test_a_missed_run_runs_once_on_start_and_an_unmissed_one_waits(store: JobStore) -> None:
    config = make_config({"hourly": job("0 * * * *", ["hourly"]), "daily": job("30 3 * * *")})
    first = Scheduler(config, store, runner=FakeRunner(), clock=ManualClock(START), holder="a")
    assert sorted(first.tick()) == ["daily", "hourly"]  # 10:02, never ran
    first.join(5)
    first.shutdown()

    # Down until 13:30: the hourly job missed 11:00, 12:00 and 13:00 and runs once; the daily
    # job's next time (03:30 tomorrow) has not come.
    runner = FakeRunner()
    later = ManualClock(START.replace(hour=13, minute=30))
    second = Scheduler(config, store, runner=runner, clock=later, holder="b")
    assert second.tick() == ["hourly"]
    second.join(5)
    assert second.tick() == []
    assert runner.commands() == [["hourly"]]
    assert store.job_runs("hourly", 1)[0].params == {
        "scheduled_for": "2026-11-26T13:00:00Z",
        "scheduler": "b",
    }
    assert second.next_due("hourly") == START.replace(hour=14, minute=0)
    assert second.next_due("daily") == START.replace(day=27, hour=3, minute=30)

    # And a restart before the next due time runs nothing.
    second.shutdown()
    third = Scheduler(config, store, runner=runner, clock=ManualClock(later.now()), holder="c")
    assert third.tick() == []
    assert third.leading


def test_manual_runs_and_backfills_are_not_the_schedule(store: JobStore) -> None:
    config = make_config({"hourly": job("0 * * * *", ["hourly"])})
    scheduler = Scheduler(config, store, runner=FakeRunner(), clock=ManualClock(START))
    scheduler.run_job(scheduler.jobs["hourly"], {"trigger": "manual"})
    scheduler.run_job(scheduler.jobs["hourly"], {"from": "2026-11-01", "to": "2026-11-02"})
    assert scheduler.tick() == ["hourly"]  # it never ran *on schedule*


def test_a_dead_leaders_running_run_is_abandoned_and_run_again(
    store: JobStore, clock: ManualClock
) -> None:
    config = make_config({"seal": job("*/5 * * * *", ["seal"])})
    params = {"scheduled_for": "2026-11-26T10:00:00Z", "scheduler": "dead:1"}
    orphan = store.start_job_run("seal", params, 1)
    manual = store.start_job_run("seal", {"trigger": "manual"}, 1)  # another process's: left be
    scheduler = Scheduler(config, store, runner=FakeRunner(), clock=clock, holder="b")
    assert scheduler.tick() == ["seal"]
    scheduler.join(5)
    runs = {run.id: run for run in store.job_runs("seal")}
    assert runs[orphan].status == "abandoned"
    assert runs[orphan].error == "scheduler dead:1 stopped while this ran"
    assert runs[manual].status == "running"
    assert store.job_runs("seal", 1)[0].status == "succeeded"


# -- leadership ----------------------------------------------------------------------------------


def test_only_the_lease_holder_runs_jobs_and_a_standby_takes_over_on_release(
    store: JobStore, clock: ManualClock
) -> None:
    config = make_config({"seal": job(command=["seal"])})
    runner_a, runner_b = FakeRunner(), FakeRunner()
    a = Scheduler(config, store, runner=runner_a, clock=clock, holder="a")
    b = Scheduler(config, store, runner=runner_b, clock=clock, holder="b")
    assert a.tick() == ["seal"]
    a.join(5)
    for _ in range(3):
        clock.advance(60)
        assert b.tick() == []
        assert a.tick() == ["seal"]
        a.join(5)
    assert (a.leading, b.leading) == (True, False)
    assert runner_b.calls == []
    a.shutdown()
    assert not a.leading
    assert b.tick() == []  # b leads now; seal ran this minute, so it waits for the next
    assert b.leading
    clock.advance(60)
    assert b.tick() == ["seal"]
    b.join(5)
    assert a.tick() == []  # a, back, is the standby
    assert len(runner_b.calls) == 1


def test_a_standby_takes_over_when_the_lease_expires(clock: ManualClock) -> None:
    store = SqliteStore.temporary()
    config = make_config({"seal": job(command=["seal"])}, lease_seconds=0.3, tick_seconds=0.1)
    a = Scheduler(config, store, runner=FakeRunner(), clock=clock, holder="a")
    b = Scheduler(config, store, runner=FakeRunner(), clock=clock, holder="b")
    a.tick()
    a.join(5)
    assert b.tick() == []
    assert not b.leading
    time.sleep(0.4)  # a stops renewing (as if killed); its lease runs out in store time
    b.tick()
    assert b.leading
    assert not a.tick()
    assert not a.leading


def test_a_leader_that_loses_its_lease_ends_its_runs(store: JobStore, clock: ManualClock) -> None:
    config = make_config({"long": job(command=["long"])})
    runner = FakeRunner()
    runner.block("long")
    a = Scheduler(config, store, runner=runner, clock=clock, holder="a")
    a.tick()
    assert runner.wait_entered("long")
    store.release_lease(LEASE, "a")  # as if it expired while a was stalled …
    assert store.acquire_lease(LEASE, "b", 30)  # … and b took it
    assert a.tick() == []
    assert not a.leading
    assert runner.stops >= 1
    assert a.running() == []
    (run,) = store.job_runs("long")
    assert run.status == "abandoned"
    assert run.output == "terminated\n"
    assert not store.acquire_lease(LEASE, "a", 30)  # a did not take it back


def test_shutdown_ends_runs_and_releases_the_lease(store: JobStore, clock: ManualClock) -> None:
    config = make_config({"long": job(command=["long"])})
    runner = FakeRunner()
    runner.block("long")
    a = Scheduler(config, store, runner=runner, clock=clock, holder="a")
    a.tick()
    assert runner.wait_entered("long")
    a.shutdown()
    assert a.running() == []
    assert [r.status for r in store.job_runs("long")] == ["abandoned"]
    assert store.acquire_lease(LEASE, "b", 30)


def test_shutdown_during_a_retry_wait_gives_the_retries_up(store: JobStore) -> None:
    config = make_config({"flaky": job(retries=5, backoff_seconds=3600)})
    scheduler = Scheduler(config, store, runner=failing(Outcome(1)), clock=SystemClock())
    scheduler.tick()
    wait_for(lambda: [r.status for r in store.job_runs("flaky")] == ["failed"])  # its thread
    scheduler.shutdown()  # does not wait the hour
    assert not scheduler.running()
    assert attempts(store, "flaky") == [(1, "failed")]
