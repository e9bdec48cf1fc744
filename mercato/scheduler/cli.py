"""``mercato run scheduler`` and ``mercato jobs list|runs|run|backfill``: the scheduler's
process, and its jobs from the command line.

Thin: ``run scheduler`` calls :func:`mercato.scheduler.service.serve`; each ``jobs`` command
parses its options and calls :mod:`mercato.scheduler.jobs` and
:class:`~mercato.scheduler.scheduler.Scheduler`. An unknown job name ends a command with one
line and exit status 2, like a bad option.
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import click
import msgspec
from rich.markup import escape

from mercato.clitools import (
    CSV,
    JSON,
    TABLE,
    Column,
    config_path,
    console,
    context_config,
    errors,
    format_option,
    friendly,
    parse_hour_option,
    print_json,
    print_records,
    progress,
)
from mercato.errors import MercatoError
from mercato.scheduler.jobs import (
    Job,
    SubprocessRunner,
    backfill_windows,
    configured_jobs,
    find_job,
)
from mercato.scheduler.scheduler import RunResult, Scheduler
from mercato.scheduler.service import serve
from mercato.store import open_store
from mercato.store.base import JobStore

STATUS_STYLES = {"succeeded": "green", "failed": "red", "running": "yellow", "abandoned": "magenta"}
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def _command_line(command: Sequence[str]) -> str:
    words = [shlex.quote(word) for word in command]
    return " ".join(words if command[0].startswith("/") else ["mercato", *words])


def _minute(at: datetime | None) -> str:
    return "" if at is None else f"{at:%Y-%m-%d %H:%M}"


def _status(status: str) -> str:
    return f"[{STATUS_STYLES.get(status, 'default')}]{status}[/]"


def _params(params: dict[str, Any]) -> str:
    """A run's parameters in a few words: scheduled for when, manual, or the backfill window."""
    if "scheduled_for" in params:
        return f"scheduled {str(params['scheduled_for'])[:16].replace('T', ' ')}"
    if params.get("trigger") == "manual":
        return "manual"
    if {"from", "to"} <= params.keys():
        return f"{params['from']} to {params['to']}"
    return " ".join(f"{key}={value}" for key, value in params.items())


@click.command("scheduler")
@click.pass_context
@friendly
def run_scheduler(ctx: click.Context) -> None:
    """The job scheduler: one leader runs [scheduler.jobs]; more processes stand by."""
    serve(context_config(ctx), config_path=config_path(ctx))


@click.group("jobs")
def jobs_group() -> None:
    """The scheduler's jobs: list them, their run history, run one now, backfill a range."""


JOB_COLUMNS = [
    Column("name", "job", whole=True),
    Column("schedule", "schedule (UTC)", whole=True),
    Column("command", show=lambda words: escape(_command_line(words))),
    Column("enabled", drop=4, show=lambda enabled: "yes" if enabled else "no"),
    Column("next_run", "next run", whole=True, drop=2, show=lambda at: _minute(at) or "disabled"),
    Column("last_status", "last run", show=lambda status: _status(status) if status else ""),
    Column("last_started_at", "started", whole=True, drop=1, show=_minute),
]  # fmt: skip


@jobs_group.command("list")
@format_option(TABLE, JSON, CSV)
@click.pass_context
@friendly
def jobs_list(ctx: click.Context, fmt: str) -> None:
    """The configured jobs with their next run and last status."""
    config = context_config(ctx)
    now = datetime.now(UTC)
    jobs = []
    with open_store(config) as store:
        for job in configured_jobs(config).values():
            last = next(iter(store.job_runs(job.name, limit=1)), None)
            jobs.append(
                {
                    "name": job.name,
                    "schedule": job.schedule.text,
                    "command": list(job.command),
                    "enabled": job.enabled,
                    "next_run": job.schedule.next_after(now) if job.enabled else None,
                    "last_status": last.status if last else None,
                    "last_started_at": last.started_at if last else None,
                }
            )
    print_records(fmt, JOB_COLUMNS, jobs)


RUN_COLUMNS = [
    Column("id", "run", number=True),
    Column("job"),
    Column("attempt", number=True, drop=4),
    Column("status", show=_status),
    Column("started_at", "started (UTC)", whole=True, drop=3,
           show=lambda at: f"{at:%Y-%m-%d %H:%M:%S}"),
    Column("took", whole=True, drop=2, show=lambda took: "" if took is None else f"{took:.1f} s"),
    Column("params", drop=1, show=lambda params: escape(_params(params))),
    Column("error", show=lambda error: escape(error or "")),
]  # fmt: skip


@jobs_group.command("runs")
@click.option("--job", "name", help="Only this job's runs.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@format_option(TABLE, JSON, CSV)
@click.pass_context
@friendly
def jobs_runs(ctx: click.Context, name: str | None, limit: int, fmt: str) -> None:
    """The run history, newest first: one row per attempt."""
    if name is not None:
        _job(ctx, name)
    with open_store(context_config(ctx)) as store:
        runs = store.job_runs(name, limit)
    if fmt == JSON:
        print_json(runs)
        return
    records = [
        {
            **msgspec.structs.asdict(run),
            "took": (run.finished_at - run.started_at).total_seconds() if run.finished_at else None,
        }
        for run in runs
    ]
    print_records(fmt, RUN_COLUMNS, records)


@jobs_group.command("run")
@click.argument("name")
@click.pass_context
@friendly
def jobs_run(ctx: click.Context, name: str) -> None:
    """Run a job now, with its retries, recorded in the history; exits with its exit code."""
    job = _job(ctx, name)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    with open_store(context_config(ctx)) as store:
        result = _run(ctx, store, job, {"trigger": "manual"})
    output = result.outcome.output
    if output:
        click.echo(output, nl=not output.endswith("\n"))
    sys.exit(result.outcome.exit_status)


@jobs_group.command("backfill")
@click.argument("name")
@click.option("--from", "start", required=True, help="First UTC date or hour, YYYY-MM-DD[THH].")
@click.option("--to", "end", required=True, help="UTC date or hour to stop before.")
@click.option("--step", type=click.Choice(["hour", "day"]), default="day", show_default=True)
@click.pass_context
@friendly
def jobs_backfill(ctx: click.Context, name: str, start: str, end: str, step: str) -> None:
    """Run a job once per window of a range, with --from/--to appended (with retries).

    Stops at the first window that fails for good; every window is idempotent, so running
    the backfill again is safe.
    """
    job = _job(ctx, name)
    first, last = parse_hour_option("--from", start), parse_hour_option("--to", end)
    if first is None or last is None:
        raise MercatoError("--from and --to are required")
    windows = list(backfill_windows(first, last, "hour" if step == "hour" else "day"))
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    with open_store(context_config(ctx)) as store, progress(f"backfilling {name}") as advance:
        for done, (lower, upper) in enumerate(windows):
            advance(done, len(windows))
            args = ["--from", lower, "--to", upper]
            result = _run(ctx, store, job, {"from": lower, "to": upper}, args)
            if not result.outcome.ok:
                error = result.outcome.error(job.timeout_seconds) or ""
                errors.print(
                    f"[red]error:[/] {name} --from {lower} --to {upper} failed (run "
                    f"{result.run_id}): {escape(error)}; {done} of {len(windows)} window(s) done",
                    highlight=False,
                )
                sys.exit(result.outcome.exit_status)
        advance(len(windows), len(windows))
    console.print(f"{name}: {len(windows)} window(s) from {start} to {end} done", highlight=False)


def _job(ctx: click.Context, name: str) -> Job:
    try:
        return find_job(configured_jobs(context_config(ctx)), name)
    except MercatoError as exc:
        _usage_error(str(exc))


def _usage_error(message: str) -> NoReturn:
    errors.print(f"[red]error:[/] {escape(message)}", highlight=False)
    sys.exit(2)


def _run(
    ctx: click.Context,
    store: JobStore,
    job: Job,
    params: dict[str, Any],
    extra_args: list[str] | None = None,
) -> RunResult:
    """Run ``job`` now with the scheduler's runner and retries; Ctrl-C ends it (exit 130)."""
    runner = SubprocessRunner(config_path(ctx))
    scheduler = Scheduler(context_config(ctx), store, runner=runner)
    try:
        return scheduler.run_job(job, params, extra_args or [])
    except KeyboardInterrupt:
        sys.exit(130)
