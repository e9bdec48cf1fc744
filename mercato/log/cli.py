"""``mercato kafka create-topics|check``: the Kafka log's topic, made and inspected.

Thin: each command reads ``[log]`` and calls :mod:`mercato.log.kafka_admin`.
"""

from __future__ import annotations

from types import ModuleType

import click
import msgspec
from rich.table import Table

from mercato.clitools import console, context_config, friendly
from mercato.config import LogConfig
from mercato.log.errors import LogError


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


@kafka_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
@friendly
def check(ctx: click.Context, as_json: bool) -> None:
    """Check the topic: it exists, has [log] partitions partitions, each has a leader."""
    config = _log_config(ctx)
    health = _admin().check_topic(config)
    if as_json:
        click.echo(msgspec.json.encode(health).decode())
        return
    table = Table("partition", "leader", "replicas", "in sync", "start", "end")
    for h in health:
        table.add_row(
            str(h.partition),
            str(h.leader),
            ",".join(map(str, h.replicas)),
            ",".join(map(str, h.in_sync)),
            f"{h.start_offset:,}",
            f"{h.end_offset:,}",
        )
    console.print(table)
    console.print(f"kafka topic {config.kafka_topic} is healthy", highlight=False)


COMMANDS = [kafka_group]
