"""``mercato run collector``, ``mercato keys create|list|revoke`` and ``mercato quarantine
list|show|replay|purge|create-topic``: the ingest endpoint, the write keys producers send
with, and the Segment messages the collector acknowledged but could not accept.

Thin: ``run collector`` calls :func:`mercato.collector.server.serve`; the ``keys`` commands
call :class:`~mercato.collector.keys.KeyStore`; each ``quarantine`` command opens the
quarantine (``<data_dir>/quarantine``, or with the Kafka log the topic
``<kafka_topic>-quarantine``) and calls :class:`~mercato.collector.quarantine.Quarantine`. A
replay validates with the configuration of this invocation, so fix it first
(``[collector] segment_merchant_id_paths``, say).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import click
import msgspec
from rich.markup import escape

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
    print_table,
)
from mercato.collector.keys import KeyStore
from mercato.collector.quarantine import (
    Entry,
    Quarantine,
    QuarantineState,
    ReplayReport,
    open_quarantine_log,
    preview,
    quarantine_log_config,
)
from mercato.collector.server import serve
from mercato.config import Config
from mercato.errors import MercatoError
from mercato.events.errors import REASONS
from mercato.events.rules import EventRules
from mercato.log import open_log

IDS = click.argument("ids", nargs=-1, type=click.IntRange(min=0))
ALL = click.option("--all", "every", is_flag=True, help="Every open entry.")


@click.command("collector")
@click.pass_context
@friendly
def run_collector(ctx: click.Context) -> None:
    """The HTTP ingest endpoint ([collector] host and port)."""
    serve(context_config(ctx))


# -- keys ---------------------------------------------------------------------------------------


@click.group("keys")
def keys_group() -> None:
    """Write keys that producers authenticate with (stored hashed)."""


def _key_store(ctx: click.Context) -> KeyStore:
    return KeyStore(context_config(ctx).keys_path)


@keys_group.command("create")
@click.option("--source", required=True, help="Name of the source the key sends for.")
@format_option()
@click.pass_context
@friendly
def keys_create(ctx: click.Context, source: str, fmt: str) -> None:
    """Create a key; the secret is printed once and never stored."""
    key, secret = _key_store(ctx).create(source)
    if fmt == JSON:
        print_json({"id": key.id, "source": key.source, "key": secret})
    else:
        console.print(f"id      {key.id}\nsource  {key.source}\nkey     {secret}", highlight=False)
    errors.print("store the key now: only its hash is kept", style="yellow")


KEY_COLUMNS = [
    Column("id", whole=True),
    Column("source"),
    Column("created_at", "created", whole=True, drop=2),
    Column("revoked_at", "revoked", whole=True, drop=1),
]


@keys_group.command("list")
@format_option(TABLE, JSON, CSV)
@click.pass_context
@friendly
def keys_list(ctx: click.Context, fmt: str) -> None:
    """List keys (ids and sources, never secrets)."""
    keys = [
        {"id": k.id, "source": k.source, "created_at": k.created_at, "revoked_at": k.revoked_at}
        for k in _key_store(ctx).list()
    ]
    print_records(fmt, KEY_COLUMNS, keys)


@keys_group.command("revoke")
@click.argument("key_id")
@format_option()
@click.pass_context
@friendly
def keys_revoke(ctx: click.Context, key_id: str, fmt: str) -> None:
    """Revoke a key; collectors refuse it within a second."""
    key = _key_store(ctx).revoke(key_id)
    if fmt == JSON:
        print_json({"id": key.id, "source": key.source, "revoked_at": key.revoked_at})
        return
    console.print(f"revoked {key.id} (source {key.source})")


# -- quarantine ---------------------------------------------------------------------------------


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


ENTRY_COLUMNS = [
    Column("id", number=True),
    Column("received_at", "received (UTC)", whole=True, drop=3,
           show=lambda at: f"{at:%Y-%m-%d %H:%M:%S}"),
    Column("source", drop=4, show=escape),
    Column("endpoint", drop=5),
    Column("index", number=True, drop=6),
    Column("event_id", "event id", show=escape),
    Column("reason"),
    Column("attempts", "tries", number=True, drop=2),
    Column("error", drop=1, show=escape),
]  # fmt: skip


def _records(entries: Sequence[Entry]) -> list[dict[str, object]]:
    return [msgspec.structs.asdict(e) for e in entries]


@quarantine_group.command("list")
@click.option(
    "--reason", type=click.Choice(REASONS), help="Only entries quarantined for this reason."
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@format_option(TABLE, JSON, CSV)
@click.pass_context
@friendly
def quarantine_list(ctx: click.Context, reason: str | None, limit: int, fmt: str) -> None:
    """The open entries, oldest first, with counts by reason."""
    with _opened(context_config(ctx)) as quarantine:
        state = _state(quarantine)
    entries = [e for e in state.entries() if reason is None or e.reason == reason]
    if fmt == JSON:
        print_json(
            {"total": len(state), "by_reason": state.by_reason(), "entries": entries[:limit]}
        )
        return
    if fmt == CSV:
        print_records(fmt, ENTRY_COLUMNS, _records(entries[:limit]))
        return
    if not len(state):
        console.print("the quarantine is empty")
        return
    print_table(ENTRY_COLUMNS, _records(entries[:limit]), title="Quarantined Segment messages")
    if len(entries) > limit:
        console.print(f"… and {len(entries) - limit:,} more (--limit, or --format json)")
    counts = ", ".join(f"{n:,} {r}" for r, n in state.by_reason().items())
    console.print(f"{len(state):,} open entr{'y' if len(state) == 1 else 'ies'}: {counts}")


@quarantine_group.command("show")
@click.argument("entry_id", type=click.IntRange(min=0))
@format_option()
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
    if fmt == JSON:
        print_json({**msgspec.to_builtins(entry), "message": text})
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
@format_option()
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
    if fmt == JSON:
        print_json(report)
        return
    console.print(f"replayed {len(report.replayed):,} event(s) into the log", highlight=False)
    still = report.still_invalid
    if still:
        print_table(ENTRY_COLUMNS, _records(still), title="Still invalid (kept in the quarantine)")
        errors.print(f"{len(still):,} entr{'y' if len(still) == 1 else 'ies'} still invalid")


@quarantine_group.command("purge")
@IDS
@ALL
@format_option()
@click.pass_context
@friendly
def quarantine_purge(ctx: click.Context, ids: tuple[int, ...], every: bool, fmt: str) -> None:
    """Drop entries for good: they are never replayed (the records stay, marked purged)."""
    chosen = _chosen(ids, every)
    with _opened(context_config(ctx)) as quarantine:
        purged = _state(quarantine).open_ids(chosen)
        if quarantine is not None and purged:
            quarantine.purge(purged)
    if fmt == JSON:
        print_json({"purged": purged})
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
