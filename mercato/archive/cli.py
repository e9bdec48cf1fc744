"""``mercato run archiver`` and ``mercato archive compact``: the raw-event archive's process
and its maintenance.

Thin: each calls :func:`mercato.archive.service.serve` or :mod:`mercato.archive.compaction`.
"""

from __future__ import annotations

import click
import msgspec

from mercato.archive.compaction import compact_all, compact_hour
from mercato.archive.layout import parse_hour
from mercato.archive.retention import enforce_retention
from mercato.archive.service import serve
from mercato.clitools import (
    JSON,
    console,
    context_config,
    format_option,
    friendly,
    parse_partitions,
    print_json,
)
from mercato.errors import MercatoError
from mercato.log.cli import opened_log


@click.command("archiver")
@click.option(
    "--partitions",
    help="Comma-separated partitions this process owns (default: [archive] partitions, or all).",
)
@click.pass_context
@friendly
def run_archiver(ctx: click.Context, partitions: str | None) -> None:
    """Raw-event archive: log partitions in, Parquet files by event hour out."""
    config = context_config(ctx)
    if partitions:
        owned = parse_partitions(partitions)
        config = msgspec.structs.replace(
            config, archive=msgspec.structs.replace(config.archive, partitions=owned)
        )
    serve(config)


@click.group("archive")
def archive_group() -> None:
    """Maintain the raw-event archive."""


@archive_group.command("compact")
@click.option("--date", help="UTC date of the hour, YYYY-MM-DD.")
@click.option("--hour", help="UTC hour, 0..23.")
@click.option("--all", "every", is_flag=True, help="Every hour in the archive.")
@format_option()
@click.pass_context
@friendly
def archive_compact(
    ctx: click.Context, date: str | None, hour: str | None, every: bool, fmt: str
) -> None:
    """Merge an hour's small files per partition into one (safe to repeat and to interrupt)."""
    config = context_config(ctx)
    level = config.archive.compression_level
    if every == (date is not None or hour is not None):
        raise MercatoError("give either --date and --hour, or --all")
    if every:
        result = compact_all(config.archive_path, compression_level=level)
    else:
        if date is None or hour is None:
            raise MercatoError("--date and --hour go together")
        start = parse_hour(date, hour)
        result = compact_hour(
            config.archive_path, start.date(), start.hour, compression_level=level
        )
    if fmt == JSON:
        print_json(result)
        return
    console.print(
        f"{result.hours} hour(s): {result.merged_files} files merged into "
        f"{result.written_files}, {result.redundant_files} left over by an interrupted "
        f"compaction deleted, {result.rows:,} rows rewritten",
        highlight=False,
    )


# -- the log's retention (``mercato log retention``: it waits for the archiver) ------------


@click.command("retention")
@format_option()
@click.pass_context
@friendly
def log_retention(ctx: click.Context, fmt: str) -> None:
    """Delete segments past [log] retention_hours / retention_bytes now (only those every
    consumer in [log] retention_waits_for has passed)."""
    with opened_log(ctx) as log:
        deleted = enforce_retention(context_config(ctx), log)
    if fmt == JSON:
        print_json({"deleted_segments": deleted})
        return
    console.print(f"deleted {deleted} segment(s)")
