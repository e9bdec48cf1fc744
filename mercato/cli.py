"""``mercato``: one command line for every role. Commands parse arguments and call the library."""

from __future__ import annotations

import logging
import signal
import sys
from datetime import UTC, datetime
from typing import Any

import click
import msgspec
from rich.table import Table

from mercato import __version__
from mercato.batch.cli import COMMANDS as BATCH_COMMANDS
from mercato.clitools import console, context_config, errors, friendly
from mercato.collector.cli import COMMANDS as QUARANTINE_COMMANDS
from mercato.config import dump_config
from mercato.errors import MercatoError
from mercato.log.cli import COMMANDS as KAFKA_COMMANDS
from mercato.scheduler.cli import COMMANDS as SCHEDULER_COMMANDS
from mercato.store.cli import COMMANDS as STORE_COMMANDS

_config = context_config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="MERCATO_CONFIG",
    help="TOML configuration file (default: none; MERCATO_* variables still apply).",
)
@click.version_option(__version__, prog_name="mercato")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Mercato turns a commerce platform's event stream into per-merchant metrics."""
    ctx.ensure_object(dict)["config_path"] = config_path


# -- demo ---------------------------------------------------------------------------------------


@cli.command()
@click.option("--data-dir", type=click.Path(file_okay=False), help="Default: ./mercato-demo.")
@click.option("--duration", type=float, help="Stop after this many seconds (default: Ctrl-C).")
@click.option("--rate", type=float, default=2000.0, show_default=True, help="Events per second.")
@click.option("--merchants", type=int, default=2000, show_default=True)
@click.option(
    "--backfill",
    default="0d",
    show_default=True,
    help="First load this much history, e.g. 30d (days).",
)
@click.option(
    "--backfill-events", type=int, default=500_000, show_default=True, help="Events in it."
)
@click.pass_context
@friendly
def demo(
    ctx: click.Context,
    data_dir: str | None,
    duration: float | None,
    rate: float,
    merchants: int,
    backfill: str,
    backfill_events: int,
) -> None:
    """Run the embedded pipeline with generated traffic and watch events arrive."""
    from mercato.demo.runner import default_demo_dir, run_demo

    config = _config(ctx)
    if data_dir is not None or ctx.obj.get("config_path") is None:
        config = msgspec.structs.replace(config, data_dir=str(data_dir or default_demo_dir()))
    if not (backfill.endswith("d") and backfill[:-1].isdigit()):
        raise MercatoError(f"--backfill takes days like 30d, not {backfill!r}")
    stats = run_demo(
        config,
        duration=duration,
        rate=rate,
        merchants=merchants,
        backfill_days=int(backfill[:-1]),
        backfill_events=backfill_events,
        console=console,
    )
    console.print(
        f"generator: {stats.events_acknowledged:,} events acknowledged in {stats.requests:,} "
        f"requests ({stats.duplicates_sent:,} sent twice on purpose, {stats.retries} retries)"
    )


@cli.command(hidden=True)
@click.option("--url", required=True)
@click.option("--key", required=True)
@click.option("--rate", type=float, default=2000.0)
@click.option("--merchants", type=int, default=2000)
@click.option("--duration", type=float)
def traffic(url: str, key: str, rate: float, merchants: int, duration: float | None) -> None:
    """Send generated traffic to a collector; prints what was acknowledged as JSON."""
    from mercato.demo.traffic import TrafficGenerator, TrafficSender

    sender = TrafficSender(url, key, TrafficGenerator(merchants), rate=rate)
    signal.signal(signal.SIGTERM, lambda *_: sender.stop())
    signal.signal(signal.SIGINT, lambda *_: sender.stop())
    stats = sender.run(duration)
    click.echo(msgspec.json.encode(stats).decode())


# -- run ----------------------------------------------------------------------------------------


@cli.group()
def run() -> None:
    """Run one role of the pipeline in the foreground."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@run.command("collector")
@click.pass_context
@friendly
def run_collector(ctx: click.Context) -> None:
    """The HTTP ingest endpoint ([collector] host and port)."""
    from mercato.collector.server import serve

    serve(_config(ctx))


@run.command("aggregator")
@click.option(
    "--partitions",
    help=(
        "Comma-separated partitions this process owns (default: [aggregator] partitions;"
        " empty: a share through [aggregator] kafka_group with the kafka log, else all)."
    ),
)
@click.pass_context
@friendly
def run_aggregator(ctx: click.Context, partitions: str | None) -> None:
    """Stream rollups: log partitions in, rollups and offsets into the store."""
    from mercato.aggregator.service import serve

    config = _config(ctx)
    if partitions:
        owned = _parse_partitions(partitions)
        config = msgspec.structs.replace(
            config, aggregator=msgspec.structs.replace(config.aggregator, partitions=owned)
        )
    serve(config)


def _parse_partitions(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise MercatoError(f"--partitions takes numbers like 0,1,2, not {text!r}") from None


@run.command("archiver")
@click.option(
    "--partitions",
    help="Comma-separated partitions this process owns (default: [archive] partitions, or all).",
)
@click.pass_context
@friendly
def run_archiver(ctx: click.Context, partitions: str | None) -> None:
    """Raw-event archive: log partitions in, Parquet files by event hour out."""
    from mercato.archive.service import serve

    config = _config(ctx)
    if partitions:
        owned = _parse_partitions(partitions)
        config = msgspec.structs.replace(
            config, archive=msgspec.structs.replace(config.archive, partitions=owned)
        )
    serve(config)


@run.command("api")
@click.pass_context
@friendly
def run_api(ctx: click.Context) -> None:
    """The query API, the dashboards and the operator console ([api] host and port)."""
    from mercato.query.server import serve

    serve(_config(ctx), config_path=ctx.obj.get("config_path"))


@run.command("scheduler")
@click.pass_context
@friendly
def run_scheduler(ctx: click.Context) -> None:
    """The job scheduler: one leader runs [scheduler.jobs]; more processes stand by."""
    from mercato.scheduler.service import serve

    serve(_config(ctx), config_path=ctx.obj.get("config_path"))


# -- archive ------------------------------------------------------------------------------------


@cli.group("archive")
def archive_group() -> None:
    """Maintain the raw-event archive."""


@archive_group.command("compact")
@click.option("--date", help="UTC date of the hour, YYYY-MM-DD.")
@click.option("--hour", help="UTC hour, 0..23.")
@click.option("--all", "every", is_flag=True, help="Every hour in the archive.")
@click.pass_context
@friendly
def archive_compact(ctx: click.Context, date: str | None, hour: str | None, every: bool) -> None:
    """Merge an hour's small files per partition into one (safe to repeat and to interrupt)."""
    from mercato.archive.compaction import compact_all, compact_hour
    from mercato.archive.layout import parse_hour

    config = _config(ctx)
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
    console.print(
        f"{result.hours} hour(s): {result.merged_files} files merged into "
        f"{result.written_files}, {result.redundant_files} left over by an interrupted "
        f"compaction deleted, {result.rows:,} rows rewritten",
        highlight=False,
    )


# -- batch layer --------------------------------------------------------------------------------


for _command in BATCH_COMMANDS:
    cli.add_command(_command)


# -- scheduled jobs -----------------------------------------------------------------------------


for _command in SCHEDULER_COMMANDS:
    cli.add_command(_command)


# -- the serving store --------------------------------------------------------------------------


for _command in STORE_COMMANDS:
    cli.add_command(_command)


# -- kafka --------------------------------------------------------------------------------------


for _command in KAFKA_COMMANDS:
    cli.add_command(_command)


# -- the collector's quarantine ----------------------------------------------------------------


for _command in QUARANTINE_COMMANDS:
    cli.add_command(_command)


# -- tokens -------------------------------------------------------------------------------------


@cli.group()
def tokens() -> None:
    """Merchant tokens for the query API."""


@tokens.command("issue")
@click.option("--merchant", required=True, help="The merchant the token reads for.")
@click.option("--ttl", type=int, help="Seconds until it expires (default: [api] setting).")
@click.pass_context
@friendly
def tokens_issue(ctx: click.Context, merchant: str, ttl: int | None) -> None:
    """Print a signed, expiring token for one merchant."""
    from mercato.query.server import signer_for

    config = _config(ctx)
    token, expires = signer_for(config).issue(merchant, ttl or config.api.token_ttl_seconds)
    click.echo(token)
    errors.print(f"expires {_ms(expires * 1000)}", style="yellow")


@tokens.command("admin")
@click.pass_context
@friendly
def tokens_admin(ctx: click.Context) -> None:
    """Print the admin token (for /v1/admin endpoints)."""
    from mercato.query.server import admin_token_for

    click.echo(admin_token_for(_config(ctx)))


# -- keys ---------------------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """Write keys that producers authenticate with (stored hashed)."""


def _key_store(ctx: click.Context) -> Any:
    from mercato.collector.keys import KeyStore

    return KeyStore(_config(ctx).keys_path)


@keys.command("create")
@click.option("--source", required=True, help="Name of the source the key sends for.")
@click.pass_context
@friendly
def keys_create(ctx: click.Context, source: str) -> None:
    """Create a key; the secret is printed once and never stored."""
    key, secret = _key_store(ctx).create(source)
    console.print(f"id      {key.id}\nsource  {key.source}\nkey     {secret}", highlight=False)
    errors.print("store the key now: only its hash is kept", style="yellow")


@keys.command("list")
@click.pass_context
@friendly
def keys_list(ctx: click.Context) -> None:
    """List keys (ids and sources, never secrets)."""
    table = Table("id", "source", "created", "revoked")
    for key in _key_store(ctx).list():
        revoked = key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else ""
        table.add_row(key.id, key.source, key.created_at.isoformat(timespec="seconds"), revoked)
    console.print(table)


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
@friendly
def keys_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key; collectors refuse it within a second."""
    key = _key_store(ctx).revoke(key_id)
    console.print(f"revoked {key.id} (source {key.source})")


# -- log ----------------------------------------------------------------------------------------


@cli.group("log")
def log_group() -> None:
    """Inspect the durable event log."""


def _open_log(ctx: click.Context) -> Any:
    from mercato.log import open_log

    config = _config(ctx)
    if config.log.backend == "file" and not config.log_path.exists():
        raise MercatoError(f"no log at {config.log_path} (set data_dir or --config)")
    return open_log(config)


@log_group.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
@friendly
def log_stats(ctx: click.Context, as_json: bool) -> None:
    """Per-partition offsets, sizes, segments and times."""
    with _open_log(ctx) as log:
        stats = log.stats()
    if as_json:
        click.echo(msgspec.json.encode(stats).decode())
        return
    table = Table("partition", "start", "end", "records", "bytes", "segments", "oldest", "newest")
    for s in stats:
        table.add_row(
            str(s.partition),
            f"{s.start_offset:,}",
            f"{s.end_offset:,}",
            f"{s.end_offset - s.start_offset:,}",
            f"{s.size_bytes:,}" if s.size_bytes is not None else "",
            str(s.segments or ""),
            _ms(s.oldest_timestamp_ms),
            _ms(s.newest_timestamp_ms),
        )
    console.print(table)


def _ms(value: int | None) -> str:
    if value is None:
        return ""
    return datetime.fromtimestamp(value / 1000, UTC).isoformat(timespec="seconds")


@log_group.command("tail")
@click.option("-p", "--partition", type=int, multiple=True, help="Only these partitions.")
@click.option("-n", "--lines", type=int, default=10, show_default=True, help="Records each.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new records.")
@click.pass_context
@friendly
def log_tail(ctx: click.Context, partition: tuple[int, ...], lines: int, follow: bool) -> None:
    """Print the last records of each partition as JSON lines."""
    from mercato.log.base import LogReader

    with _open_log(ctx) as log:
        chosen = partition or tuple(range(log.partitions))
        for p in chosen:
            if not 0 <= p < log.partitions:
                raise MercatoError(f"partition {p} does not exist (0..{log.partitions - 1})")
        readers = [
            LogReader(log, p, max(log.start_offset(p), log.end_offset(p) - lines)) for p in chosen
        ]
        for reader in readers:
            for entry in reader:
                _print_entry(entry)
        try:
            while follow:
                for reader in readers:
                    for entry in reader.poll(timeout=0.2 / len(readers)):
                        _print_entry(entry)
        except KeyboardInterrupt:
            pass


def _print_entry(entry: Any) -> None:
    from mercato.events.model import decode_event

    value: Any
    try:
        value = msgspec.structs.asdict(decode_event(entry.value))
    except msgspec.DecodeError:
        try:
            value = msgspec.json.decode(entry.value)
        except msgspec.DecodeError:
            value = entry.value.decode("utf-8", "replace")
    line = {
        "partition": entry.partition,
        "offset": entry.offset,
        "appended_at": _ms(entry.timestamp_ms),
        "key": entry.key,
        "value": value,
    }
    click.echo(msgspec.json.encode(line).decode())


@log_group.command("check")
@click.pass_context
@friendly
def log_check(ctx: click.Context) -> None:
    """Verify every frame's checksum; exit 1 if anything is corrupt."""
    if _config(ctx).log.backend != "file":
        raise MercatoError("`mercato log check` verifies the file log; use `mercato kafka check`")
    with _open_log(ctx) as log:
        problems = log.verify()
    for problem in problems:
        errors.print(f"[red]corrupt:[/] {problem}", highlight=False)
    if problems:
        sys.exit(1)
    console.print("log is healthy")


@log_group.command("retention")
@click.pass_context
@friendly
def log_retention(ctx: click.Context) -> None:
    """Delete segments past [log] retention_hours / retention_bytes now (only those every
    consumer in [log] retention_waits_for has passed)."""
    from mercato.log.retention import enforce_retention

    with _open_log(ctx) as log:
        deleted = enforce_retention(_config(ctx), log)
    console.print(f"deleted {deleted} segment(s)")


# -- config -------------------------------------------------------------------------------------


@cli.group("config")
def config_group() -> None:
    """Show the configuration."""


@config_group.command("show")
@click.pass_context
def config_show(ctx: click.Context) -> None:
    """Print the effective configuration (file + environment + defaults) as TOML."""
    click.echo(dump_config(_config(ctx)), nl=False)


def main() -> None:
    cli(prog_name="mercato")
