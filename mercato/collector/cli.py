"""``mercato quarantine list|show|replay|purge|create-topic``: the Segment messages the
collector acknowledged but could not accept.

Thin: each command opens the quarantine (``<data_dir>/quarantine``, or with the Kafka log the
topic ``<kafka_topic>-quarantine``) and calls
:class:`~mercato.collector.quarantine.Quarantine`. A replay validates with the configuration
of this invocation, so fix it first (``[collector] segment_merchant_id_paths``, say).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import click
import msgspec
from rich.markup import escape
from rich.table import Table

from mercato.clitools import console, context_config, errors, friendly
from mercato.collector.quarantine import (
    Entry,
    Quarantine,
    QuarantineState,
    ReplayReport,
    open_quarantine_log,
    preview,
    quarantine_log_config,
)
from mercato.config import Config
from mercato.errors import MercatoError
from mercato.events.errors import REASONS
from mercato.events.rules import EventRules
from mercato.log import open_log

FORMAT = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
IDS = click.argument("ids", nargs=-1, type=click.IntRange(min=0))
ALL = click.option("--all", "every", is_flag=True, help="Every open entry.")


@click.group("quarantine")
def quarantine_group() -> None:
    """Segment messages the collector acknowledged but could not accept: list them, show
    one, replay them once the configuration is fixed, or purge them."""


@contextmanager
def _opened(config: Config) -> Iterator[Quarantine | None]:
    """The quarantine, or None where none was ever written."""
    log = open_quarantine_log(config, create=False)
    if log is None:
        yield None
        return
    quarantine = Quarantine.on(log)
    try:
        yield quarantine
    finally:
        quarantine.close()


def _state(quarantine: Quarantine | None) -> QuarantineState:
    return quarantine.state() if quarantine is not None else QuarantineState()


def _chosen(ids: Sequence[int], every: bool) -> list[int] | None:
    if every == bool(ids):
        raise MercatoError("give entry ids, or --all")
    return None if every else list(ids)


def _time(entry: Entry) -> str:
    return f"{entry.received_at:%Y-%m-%d %H:%M:%S}"


def _table(title: str, entries: Sequence[Entry]) -> Table:
    table = Table("id", "received (UTC)", "source", "endpoint", "index", "event id", "reason",
                  "tries", "error", title=title)  # fmt: skip
    for e in entries:
        table.add_row(
            str(e.id), _time(e), escape(e.source), e.endpoint, str(e.index), escape(e.event_id),
            e.reason, str(e.attempts), escape(e.error),
        )  # fmt: skip
    return table


@quarantine_group.command("list")
@click.option(
    "--reason", type=click.Choice(REASONS), help="Only entries quarantined for this reason."
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@FORMAT
@click.pass_context
@friendly
def quarantine_list(ctx: click.Context, reason: str | None, limit: int, fmt: str) -> None:
    """The open entries, oldest first, with counts by reason."""
    with _opened(context_config(ctx)) as quarantine:
        state = _state(quarantine)
    entries = [e for e in state.entries() if reason is None or e.reason == reason]
    if fmt == "json":
        body = {"total": len(state), "by_reason": state.by_reason(), "entries": entries[:limit]}
        click.echo(msgspec.json.encode(body).decode())
        return
    if not len(state):
        console.print("the quarantine is empty")
        return
    console.print(_table("Quarantined Segment messages", entries[:limit]))
    if len(entries) > limit:
        console.print(f"… and {len(entries) - limit:,} more (--limit, or --format json)")
    counts = ", ".join(f"{n:,} {r}" for r, n in state.by_reason().items())
    console.print(f"{len(state):,} open entr{'y' if len(state) == 1 else 'ies'}: {counts}")


@quarantine_group.command("show")
@click.argument("entry_id", type=click.IntRange(min=0))
@FORMAT
@click.pass_context
@friendly
def quarantine_show(ctx: click.Context, entry_id: int, fmt: str) -> None:
    """One open entry with its message as the client sent it."""
    with _opened(context_config(ctx)) as quarantine:
        state = _state(quarantine)
        (entry,) = state.entries(state.open_ids([entry_id]))
        assert quarantine is not None  # else no entry is open
        message = quarantine.messages([entry_id])[entry_id]
    text = message.decode("utf-8", "replace")
    if fmt == "json":
        click.echo(msgspec.json.encode({**msgspec.to_builtins(entry), "message": text}).decode())
        return
    for name, value in msgspec.structs.asdict(entry).items():
        console.print(f"[bold]{name:16}[/] {escape(str(value))}", highlight=False)
    try:
        pretty = msgspec.json.format(message, indent=2).decode()
    except (msgspec.DecodeError, RecursionError):
        pretty = preview(message, 4000)
    console.print("[bold]message[/]")
    click.echo(pretty)


@quarantine_group.command("replay")
@IDS
@ALL
@click.option(
    "--set-merchant",
    "merchant_id",
    help="Give every replayed event this merchant id, whatever its message says.",
)
@FORMAT
@click.pass_context
@friendly
def quarantine_replay(
    ctx: click.Context, ids: tuple[int, ...], every: bool, merchant_id: str | None, fmt: str
) -> None:
    """Validate entries again with the current configuration; append those that now pass to
    the log (each once: its entry closes), and keep the others with their new reason."""
    chosen = _chosen(ids, every)
    config = context_config(ctx)
    with _opened(config) as quarantine:
        report = ReplayReport()
        if quarantine is None:
            QuarantineState().open_ids(chosen)  # nothing is open: fails for any id
        else:
            log = open_log(config)
            try:
                rules = EventRules.of(config.collector)
                report = quarantine.replay(chosen, log, rules, merchant_id=merchant_id)
            finally:
                log.close()
    if fmt == "json":
        click.echo(msgspec.json.encode(report).decode())
        return
    console.print(f"replayed {len(report.replayed):,} event(s) into the log", highlight=False)
    still = report.still_invalid
    if still:
        console.print(_table("Still invalid (kept in the quarantine)", still))
        errors.print(f"{len(still):,} entr{'y' if len(still) == 1 else 'ies'} still invalid")


@quarantine_group.command("purge")
@IDS
@ALL
@FORMAT
@click.pass_context
@friendly
def quarantine_purge(ctx: click.Context, ids: tuple[int, ...], every: bool, fmt: str) -> None:
    """Drop entries for good: they are never replayed (the records stay, marked purged)."""
    chosen = _chosen(ids, every)
    with _opened(context_config(ctx)) as quarantine:
        purged = _state(quarantine).open_ids(chosen)
        if quarantine is not None and purged:
            quarantine.purge(purged)
    if fmt == "json":
        click.echo(msgspec.json.encode({"purged": purged}).decode())
        return
    console.print(f"purged {len(purged):,} entr{'y' if len(purged) == 1 else 'ies'}")


@quarantine_group.command("create-topic")
@click.option(
    "--replication-factor",
    type=click.IntRange(min=1),
    help="Replicas of the partition (default: [log] kafka_replication_factor).",
)
@click.pass_context
@friendly
def quarantine_create_topic(ctx: click.Context, replication_factor: int | None) -> None:
    """With the Kafka log: create the quarantine's topic (one partition); safe to repeat.

    Set its retention to forever (retention.ms=-1): entries must stay until replayed or
    purged.
    """
    config = context_config(ctx)
    if config.log.backend != "kafka":
        raise MercatoError("the file log keeps the quarantine in <data_dir>/quarantine: no topic")
    from mercato.log import kafka_admin  # noqa: PLC0415 (the extra [kafka])

    settings = quarantine_log_config(config.log)
    created = kafka_admin.create_topic(settings, replication_factor)
    state = "created" if created else "already exists"
    console.print(f"kafka topic {settings.kafka_topic} {state} (1 partition)", highlight=False)


COMMANDS = [quarantine_group]
