"""``mercato config show``: the configuration every command of this invocation reads.

It belongs to no role: :mod:`mercato.config` reads one file and the environment for all.
"""

from __future__ import annotations

import click

from mercato.clitools import context_config
from mercato.config import dump_config


@click.group("config")
def config_group() -> None:
    """Show the configuration."""


@config_group.command("show")
@click.pass_context
def config_show(ctx: click.Context) -> None:
    """Print the effective configuration (file + environment + defaults) as TOML."""
    click.echo(dump_config(context_config(ctx)), nl=False)
