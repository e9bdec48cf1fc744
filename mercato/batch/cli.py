"""``mercato seal|reprocess|diff|promote|rollback|versions``: the batch layer's commands.

Thin: each parses its options and calls :mod:`mercato.batch.seal` or
:mod:`mercato.batch.versions`. Every one is idempotent, so a scheduler, Airflow or a
Kubernetes CronJob may run it again after a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import msgspec
import pyarrow as pa
import pyarrow.csv as pa_csv
from rich.markup import escape

from mercato.batch.drift import check_drift
from mercato.batch.engine import Engine, configured_engine
from mercato.batch.invalid import find_invalid
from mercato.batch.seal import SealReport
from mercato.batch.seal import seal as seal_hours
from mercato.batch.sql import run_sql
from mercato.batch.versions import DiffRow, PromoteReport, diff, promote, prune, reprocess, rollback
from mercato.clitools import (
    CSV,
    JSON,
    TABLE,
    Column,
    console,
    context_config,
    format_option,
    friendly,
    parse_hour_option,
    print_json,
    print_records,
    print_table,
    progress,
)
from mercato.config import Config
from mercato.errors import MercatoError
from mercato.log import open_log
from mercato.metrics.definitions import load_definitions
from mercato.store import open_store
from mercato.store.versions import definitions_of, serving

FORMAT = format_option(TABLE, JSON)
TABULAR = format_option(TABLE, JSON, CSV)


@click.command()
@click.option("--from", "start", help="First UTC hour to consider, YYYY-MM-DD[THH].")
@click.option("--to", "end", help="UTC hour to stop before, YYYY-MM-DD[THH].")
@click.option("--force", is_flag=True, help="Recompute hours whose archive has not changed too.")
@FORMAT
@click.pass_context
@friendly
def seal(ctx: click.Context, start: str | None, end: str | None, force: bool, fmt: str) -> None:
    """Recompute complete hours exactly from the archive and serve them as final.

    Seals the serving definitions version. An hour is complete once the archiver has passed
    its end by [batch] grace_minutes. Hours sealed before are skipped unless late events
    changed their archive; safe to repeat.
    """
    config = context_config(ctx)
    with open_store(config) as store, _engine(config) as engine, progress("sealing") as advance:
        _, definitions = serving(store, load_definitions(config.aggregator.definitions or None))
        report = seal_hours(
            store,
            config.archive_path,
            definitions,
            engine,
            grace=_grace(config),
            start=parse_hour_option("--from", start),
            end=parse_hour_option("--to", end),
            force=force,
            partitions=config.log.partitions,
            progress=advance,
        )
    _print_seal(report, fmt)


@click.command("reprocess")
@click.option("--from", "start", required=True, help="First UTC hour, YYYY-MM-DD[THH].")
@click.option("--to", "end", required=True, help="UTC hour to stop before, YYYY-MM-DD[THH].")
@click.option(
    "--definitions",
    "path",
    type=click.Path(dir_okay=False),
    help="Metric definitions to reprocess with (default: the configured ones).",
)
@FORMAT
@click.pass_context
@friendly
def reprocess_command(ctx: click.Context, start: str, end: str, path: str | None, fmt: str) -> None:
    """Build a shadow version from the archive (served by nobody until promoted)."""
    config = context_config(ctx)
    definitions = load_definitions(path or config.aggregator.definitions or None)
    with open_store(config) as store, _engine(config) as engine, progress("reprocessing") as bar:
        report = reprocess(
            store,
            config.archive_path,
            definitions,
            engine,
            start=parse_hour_option("--from", start),
            end=parse_hour_option("--to", end),
            grace=_grace(config),
            partitions=config.log.partitions,
            progress=bar,
        )
        serving_now = store.serving_version()
    _print_seal(report, fmt)
    if fmt == TABLE:
        role = "serving" if report.version == serving_now else "shadow"
        console.print(
            f"version {report.version} ({role}, definitions {definitions.version}); next: "
            f"mercato diff {report.version}, then mercato promote {report.version}",
            highlight=False,
        )


@click.command("diff")
@click.argument("version", type=int)
@click.option("--against", type=int, help="Version to compare with (default: the serving one).")
@click.option("--from", "start", help="First UTC day, YYYY-MM-DD (default: 30 days ago).")
@click.option("--to", "end", help="UTC day to stop before, YYYY-MM-DD (default: tomorrow).")
@click.option("--limit", type=int, default=200, show_default=True, help="Most rows shown.")
@TABULAR
@click.pass_context
@friendly
def diff_command(
    ctx: click.Context,
    version: int,
    against: int | None,
    start: str | None,
    end: str | None,
    limit: int,
    fmt: str,
) -> None:
    """Final values per merchant, metric and UTC day where VERSION differs."""
    config = context_config(ctx)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = parse_hour_option("--from", start) or today - timedelta(days=30)
    last = parse_hour_option("--to", end) or today + timedelta(days=1)
    with open_store(config) as store:
        old = against if against is not None else store.serving_version()
        if old is None:
            raise MercatoError("no version serves yet: name one with --against")
        definitions_of(store, version)  # one clear error for an unknown version
        rows = list(diff(store, old, version, first, last))
    if fmt == JSON:
        print_json({"old": old, "new": version, "rows": rows[:limit], "differences": len(rows)})
        return
    if fmt == CSV:
        print_records(fmt, _diff_columns(old, version), [_diff_record(r) for r in rows[:limit]])
        return
    _print_diff(rows, old, version, limit)


@click.command("promote")
@click.argument("version", type=int)
@FORMAT
@click.pass_context
@friendly
def promote_command(ctx: click.Context, version: int, fmt: str) -> None:
    """Make VERSION serve: seal what it lacks, replay the log into its speed layer, switch."""
    config = context_config(ctx)
    with (
        open_store(config) as store,
        closing(open_log(config)) as log,
        _engine(config) as engine,
        progress("promoting") as bar,
    ):
        report = promote(
            store, log, config.archive_path, version, engine, grace=_grace(config), progress=bar
        )
    _print_promote(report, fmt)


@click.command("rollback")
@FORMAT
@click.pass_context
@friendly
def rollback_command(ctx: click.Context, fmt: str) -> None:
    """Make the version that served before the last promote serve again."""
    config = context_config(ctx)
    with (
        open_store(config) as store,
        closing(open_log(config)) as log,
        _engine(config) as engine,
        progress("rolling back") as bar,
    ):
        report = rollback(
            store, log, config.archive_path, engine, grace=_grace(config), progress=bar
        )
    _print_promote(report, fmt)


@click.command("drift")
@click.option("--hours", type=int, default=24, show_default=True,
              help="Check the hours sealed this recently.")  # fmt: skip
@click.option("--max-ratio", type=float, help="Exit with status 1 when the drift is above this.")
@TABULAR
@click.pass_context
@friendly
def drift_command(ctx: click.Context, hours: int, max_ratio: float | None, fmt: str) -> None:
    """Compare the speed layer with the exact answer for recently sealed hours."""
    config = context_config(ctx)
    with open_store(config) as store:
        version, definitions = serving(
            store, load_definitions(config.aggregator.definitions or None)
        )
        report = check_drift(store, version, definitions, hours=hours)
    if fmt == JSON:
        print_json(report)
    elif fmt == CSV:
        print_records(fmt, DRIFT_COLUMNS, [msgspec.structs.asdict(m) for m in report.metrics])
    else:
        print_table(DRIFT_COLUMNS, [msgspec.structs.asdict(m) for m in report.metrics])
        for d in report.largest:
            console.print(
                f"  {d.merchant_id} {d.metric} {d.hour:%Y-%m-%d %H}:00 UTC: speed {d.speed}, "
                f"final {d.final}",
                highlight=False,
            )
        console.print(
            f"drift {report.ratio:.6f} over {len(report.hours)} sealed hour(s) of version "
            f"{report.version}",
            highlight=False,
        )
    if max_ratio is not None and report.ratio > max_ratio:
        raise MercatoError(f"drift {report.ratio:.6f} is above --max-ratio {max_ratio}")


@click.command("sql")
@click.argument("query")
@TABULAR
@click.option("--max-rows", type=int, default=100, show_default=True,
              help="Most rows a table shows (csv and json print all).")  # fmt: skip
@click.pass_context
@friendly
def sql_command(ctx: click.Context, query: str, fmt: str, max_rows: int) -> None:
    """Run DuckDB SQL over the archive: a view `events` of every archived row.

    \b
    mercato sql "SELECT type, count(DISTINCT event_id) FROM events GROUP BY type"
    mercato sql "SELECT date, sum((properties->>'amount')::BIGINT) FROM events
                 WHERE type = 'order_completed' GROUP BY date ORDER BY date" --format csv
    """
    result = run_sql(context_config(ctx).archive_path, query)
    if fmt == CSV:
        sink = pa.BufferOutputStream()
        pa_csv.write_csv(result, sink)
        click.echo(sink.getvalue().to_pybytes().decode(), nl=False)
    elif fmt == JSON:
        print_json(result.to_pylist())
    else:
        columns = [
            Column(name, number=pa.types.is_integer(kind) or pa.types.is_floating(kind), show=_raw)
            for name, kind in zip(result.column_names, result.schema.types, strict=True)
        ]
        print_table(columns, result.slice(0, max_rows).to_pylist())
        if result.num_rows > max_rows:
            console.print(f"… {result.num_rows - max_rows:,} more rows (--max-rows)")


@click.command("invalid")
@click.argument("metric")
@click.option("--from", "start", help="First UTC hour, YYYY-MM-DD[THH]. Default: 24 hours ago.")
@click.option("--to", "end", help="UTC hour to stop before, YYYY-MM-DD[THH]. Default: now.")
@click.option("--merchant", help="Only this merchant's events.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@TABULAR
@click.pass_context
@friendly
def invalid_command(
    ctx: click.Context,
    metric: str,
    start: str | None,
    end: str | None,
    merchant: str | None,
    limit: int,
    fmt: str,
) -> None:
    """List the archived events METRIC matched but could not use.

    A value of the wrong kind (an amount of "100" or 1.5, money beyond ±2^53, a time without
    an offset) is left out of the metric and counted in its `invalid` figure (the API's
    answers, the console, `mercato_invalid_values` in Prometheus). This finds those events
    by the same rule, so the producer can be told what to fix. Reads the serving version's
    definitions and the archive (events of the last minutes may not be archived yet).
    """
    config = context_config(ctx)
    with open_store(config) as store:
        _, definitions = serving(store, load_definitions(config.aggregator.definitions or None))
    chosen = definitions.metrics.get(metric)
    if chosen is None:
        raise MercatoError(
            f"no metric named {metric!r}; the serving version has {', '.join(definitions.metrics)}"
        )
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    since = parse_hour_option("--from", start) or now - timedelta(hours=25)
    until = parse_hour_option("--to", end) or now
    found = find_invalid(
        config.archive_path, definitions, chosen, since, until, merchant_id=merchant, limit=limit
    )
    if fmt == JSON:
        print_json(found)
        return
    if fmt == CSV:
        print_records(fmt, INVALID_COLUMNS, [msgspec.structs.asdict(e) for e in found])
        return
    if not found:
        console.print(
            f"no events {metric} could not use from {since:%Y-%m-%dT%H} to {until:%Y-%m-%dT%H}"
        )
        return
    print_table(INVALID_COLUMNS, [msgspec.structs.asdict(e) for e in found])
    if len(found) == limit:
        console.print(f"showing the first {limit} (--limit)")


@click.group("versions")
def versions_group() -> None:
    """Definitions versions: list them, drop old ones."""


@versions_group.command("list")
@TABULAR
@click.pass_context
@friendly
def versions_list(ctx: click.Context, fmt: str) -> None:
    """Every definitions version, with the serving one marked."""
    with open_store(context_config(ctx)) as store:
        serving_now = store.serving_version()
        rows = [
            {
                "id": v.id,
                "definitions": v.hash,
                "created_at": v.created_at.isoformat(timespec="seconds"),
                "state": "serving" if v.id == serving_now else v.state,
                "sealed_hours": len(store.sealed_hours(v.id)),
            }
            for v in store.versions()
        ]
    print_records(fmt, VERSION_COLUMNS, rows)


@versions_group.command("prune")
@click.option("--days", type=click.FloatRange(min=0), default=7, show_default=True,
              help="Drop versions that have not served for this long.")  # fmt: skip
@FORMAT
@click.pass_context
@friendly
def versions_prune(ctx: click.Context, days: float, fmt: str) -> None:
    """Drop old versions (never the serving one, nor the rollback target)."""
    with open_store(context_config(ctx)) as store:
        dropped = prune(store, timedelta(days=days))
    if fmt == JSON:
        print_json({"dropped": dropped})
        return
    console.print(
        f"dropped version(s) {', '.join(map(str, dropped))}" if dropped else "nothing to drop",
        highlight=False,
    )


@contextmanager
def _engine(config: Config) -> Iterator[Engine]:
    with closing(configured_engine(config.batch)) as engine:
        yield engine


def _grace(config: Config) -> timedelta:
    return timedelta(minutes=config.batch.grace_minutes)


def _print_seal(report: SealReport, fmt: str) -> None:
    if fmt == JSON:
        print_json(report)
        return
    for hour in report.sealed:
        console.print(
            f"sealed {hour.hour:%Y-%m-%d %H}:00  {hour.events:>10,} events  "
            f"{hour.partials:>9,} rows  {hour.seconds:6.2f} s"
            + ("  (late events)" if hour.resealed else ""),
            highlight=False,
        )
    through = report.sealed_through
    console.print(
        f"{len(report.sealed)} hour(s) sealed, {report.unchanged} unchanged; final through "
        + (f"{through:%Y-%m-%d %H:%M} UTC" if through else "nothing yet"),
        highlight=False,
    )


def _print_promote(report: PromoteReport, fmt: str) -> None:
    if fmt == JSON:
        print_json(report)
        return
    replay = f"{report.replay_from:%Y-%m-%d %H:%M} UTC" if report.replay_from else "the start"
    console.print(
        f"version {report.version} serves now (was {report.previous}); "
        f"{len(report.sealed.sealed)} hour(s) sealed on the way, "
        f"{report.replayed_events:,} events replayed from {replay} into its speed layer",
        highlight=False,
    )


def _diff_columns(old: int, new: int) -> list[Column]:
    return [
        Column("merchant_id", "merchant"),
        Column("metric"),
        Column("day", "day (UTC)", whole=True),
        Column("old", f"v{old}", number=True, show=_show),
        Column("new", f"v{new}", number=True, show=_show),
        Column("change", number=True, drop=1),
    ]


def _diff_record(row: DiffRow) -> dict[str, Any]:
    change = (
        f"{(row.new - row.old) / row.old:+.1%}"
        if isinstance(row.old, int | float) and isinstance(row.new, int | float) and row.old
        else ""
    )
    return {**msgspec.structs.asdict(row), "change": change}


def _print_diff(rows: list[DiffRow], old: int, new: int, limit: int) -> None:
    if not rows:
        console.print(f"versions {old} and {new} agree on every final value in the range")
        return
    print_table(_diff_columns(old, new), [_diff_record(r) for r in rows[:limit]])
    if len(rows) > limit:
        console.print(f"… and {len(rows) - limit:,} more (--limit, or --format json)")


def _raw(value: object) -> str:
    return "" if value is None else escape(str(value))


def _show(value: float | int | None) -> str:
    return "—" if value is None else f"{value:,}"


DRIFT_COLUMNS = [
    Column("metric"),
    Column("speed", number=True),
    Column("final", number=True),
    Column("cells", "cells off", number=True),
]
INVALID_COLUMNS = [
    Column("event_id", whole=True),
    Column("merchant_id", drop=2),
    Column("event_time", whole=True, drop=1, show=lambda at: at.isoformat()),
    Column("fields", "unusable", show=lambda fields: escape(", ".join(fields))),
    Column("properties"),
]
VERSION_COLUMNS = [
    Column("id", number=True),
    Column("definitions", whole=True, drop=1),
    Column("created_at", "created (UTC)", whole=True, drop=2),
    Column("state"),
    Column("sealed_hours", "sealed hours", number=True),
]
