"""``mercato run aggregator``: the speed layer's process.

Thin: reads ``--partitions`` into the configuration and calls
:func:`mercato.aggregator.service.serve`.
"""

from __future__ import annotations

import click
import msgspec

from mercato.aggregator.service import serve
from mercato.clitools import context_config, friendly, parse_partitions


@click.command("aggregator")
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
    config = context_config(ctx)
    if partitions:
        owned = parse_partitions(partitions)
        config = msgspec.structs.replace(
            config, aggregator=msgspec.structs.replace(config.aggregator, partitions=owned)
        )
    serve(config)
