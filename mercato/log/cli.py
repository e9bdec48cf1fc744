"""``mercato log stats|tail|check|retention`` and ``mercato kafka create-topics|check``: the
event log inspected and maintained, and the Kafka log's topic made and checked.

Thin: each command opens the configured log (:func:`mercato.log.open_log`) and calls it, or
:mod:`mercato.log.kafka_admin` (the ``[kafka]`` extra, imported when a ``kafka`` command
runs). ``retention`` is defined by the archive (:mod:`mercato.archive.retention`: it waits
for the consumers) and named here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import click
import msgspec
from rich.markup import escape

from mercato.cli import Lazy, LazyGroup
from mercato.clitools import (
    CSV,
    JSON,
    TABLE,
    Column,
    console,
    context_config,
    errors,
    format_option,
    friendly,
    print_json,
    print_records,
)
from mercato.config import LogConfig
from mercato.errors import MercatoError
from mercato.events.model import decode_event
from mercato.log import open_log
from mercato.log.base import Log, LogEntry, LogReader, MaintainedLog
from mercato.log.errors import LogError

# -- log ----------------------------------------------------------------------------------------


# Retention waits for the consumers (the store's offsets, the archive's state), which the
# archive knows and the log must not import: its command is the archive's, named here.
RETENTION = Lazy(
    "mercato.archive.cli:log_retention",
    "Delete segments past [log] retention_hours / retention_bytes now (only those every "
    "consumer in [log] retention_waits_for has passed).",
)


@click.group("log", cls=LazyGroup, lazy={"retention": RETENTION})
def log_group() -> None:
    """Inspect and maintain the durable event log."""


@contextmanager
def opened_log(ctx: click.Context) -> Iterator[Log]:
    """The configured log, if there is one (a command never creates it)."""
    config = context_config(ctx)
    if config.log.backend == "file" and not config.log_path.exists():
        raise MercatoError(f"no log at {config.log_path} (set data_dir or --config)")
    with closing(open_log(config)) as log:
        yield log


def _time(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def _second(at: datetime | None) -> str:
    return "" if at is None else f"{at:%Y-%m-%d %H:%M:%S}"


STATS_COLUMNS = [
    Column("partition", number=True),
    Column("start_offset", "start", number=True, drop=3),
    Column("end_offset", "end", number=True),
    Column("records", number=True),
    Column("size_bytes", "bytes", number=True, drop=1),
    Column("segments", number=True, drop=2),
    Column("oldest", "oldest (UTC)", whole=True, drop=4, show=_second),
    Column("newest", "newest (UTC)", whole=True, show=_second),
]


@log_group.command("stats")
@format_option(TABLE, JSON, CSV, json_flag=True)
@click.pass_context
@friendly
def log_stats(ctx: click.Context, fmt: str) -> None:
    """Per-partition offsets, sizes, segments and times."""
    with opened_log(ctx) as log:
        stats = log.stats()
    if fmt == JSON:
        print_json(stats)
        return
    records = [
        {
            **msgspec.structs.asdict(s),
            "records": s.end_offset - s.start_offset,
            "oldest": _time(s.oldest_timestamp_ms),
            "newest": _time(s.newest_timestamp_ms),
        }
        for s in stats
    ]
    print_records(fmt, STATS_COLUMNS, records)


@log_group.command("tail")
@click.option("-p", "--partition", type=int, multiple=True, help="Only these partitions.")
@click.option("-n", "--lines", type=int, default=10, show_default=True, help="Records each.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new records.")
@click.pass_context
@friendly
def log_tail(ctx: click.Context, partition: tuple[int, ...], lines: int, follow: bool) -> None:
    """Print the last records of each partition as JSON lines."""
    with opened_log(ctx) as log:
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


def _print_entry(entry: LogEntry) -> None:
    value: Any
    try:
        value = msgspec.structs.asdict(decode_event(entry.value))
    except msgspec.DecodeError:
        try:
            value = msgspec.json.decode(entry.value)
        except msgspec.DecodeError:
            value = entry.value.decode("utf-8", "replace")
    appended = _time(entry.timestamp_ms)
    line = {
        "partition": entry.partition,
        "offset": entry.offset,
        "appended_at": appended.isoformat(timespec="seconds") if appended else "",
        "key": entry.key,
        "value": value,
    }
    print_json(line)


@log_group.command("check")
@format_option()
@click.pass_context
@friendly
def log_check(ctx: click.Context, fmt: str) -> None:
    """Verify every frame's checksum; exit 1 if anything is corrupt."""
    if context_config(ctx).log.backend != "file":
        raise MercatoError("`mercato log check` verifies the file log; use `mercato kafka check`")
    with opened_log(ctx) as log:
        if not isinstance(log, MaintainedLog):
            raise MercatoError("this log has no checksums of its own to verify")
        problems = log.verify()
    if fmt == JSON:
        print_json({"healthy": not problems, "problems": problems})
    else:
        for problem in problems:
            errors.print(f"[red]corrupt:[/] {escape(str(problem))}", highlight=False)
        if not problems:
            console.print("log is healthy")
    if problems:
        sys.exit(1)


# -- kafka --------------------------------------------------------------------------------------


@click.group("kafka")
def kafka_group() -> None:
    """The Kafka log's topic ([log] kafka_topic on kafka_bootstrap_servers)."""


def _log_config(ctx: click.Context) -> LogConfig:
    return context_config(ctx).log


def _admin() -> ModuleType:
    try:
        from mercato.log import kafka_admin  # noqa: PLC0415 (the extra [kafka])
    except ImportError as exc:
        need = "kafka commands need confluent-kafka (mercato's kafka extra)"
        raise LogError(f"{need}: {exc}") from None
    return kafka_admin


@kafka_group.command("create-topics")
@click.option(
    "--replication-factor",
    type=click.IntRange(min=1),
    help="Replicas per partition (default: [log] kafka_replication_factor).",
)
@click.pass_context
@friendly
def create_topics(ctx: click.Context, replication_factor: int | None) -> None:
    """Create the events topic with [log] partitions partitions; safe to repeat."""
    config = _log_config(ctx)
    created = _admin().create_topic(config, replication_factor)
    state = "created" if created else "already exists"
    console.print(
        f"kafka topic {config.kafka_topic} {state} ({config.partitions} partitions)",
        highlight=False,
    )


def _ids(ids: list[int]) -> str:
    return ",".join(map(str, ids))


HEALTH_COLUMNS = [
    Column("partition", number=True),
    Column("leader", number=True),
    Column("replicas", whole=True, drop=2, show=_ids),
    Column("in_sync", "in sync", whole=True, show=_ids),
    Column("start_offset", "start", number=True, drop=1),
    Column("end_offset", "end", number=True),
]


@kafka_group.command("check")
@format_option(TABLE, JSON, CSV, json_flag=True)
@click.pass_context
@friendly
def check(ctx: click.Context, fmt: str) -> None:
    """Check the topic: it exists, has [log] partitions partitions, each has a leader."""
    config = _log_config(ctx)
    health = _admin().check_topic(config)
    print_records(fmt, HEALTH_COLUMNS, [msgspec.structs.asdict(h) for h in health])
    if fmt == TABLE:
        console.print(f"kafka topic {config.kafka_topic} is healthy", highlight=False)
