"""``mercato run api`` and ``mercato tokens issue|admin``: the query API's process (with the
dashboards and the operator console mounted) and the tokens that read through it.

Thin: each calls :mod:`mercato.query.server`.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from mercato.clitools import (
    JSON,
    config_path,
    context_config,
    errors,
    format_option,
    friendly,
    print_json,
)
from mercato.query.server import admin_token_for, serve, signer_for


@click.command("api")
@click.pass_context
@friendly
def run_api(ctx: click.Context) -> None:
    """The query API, the dashboards and the operator console ([api] host and port)."""
    serve(context_config(ctx), config_path=config_path(ctx))


@click.group("tokens")
def tokens_group() -> None:
    """Merchant tokens for the query API."""


@tokens_group.command("issue")
@click.option("--merchant", required=True, help="The merchant the token reads for.")
@click.option("--ttl", type=int, help="Seconds until it expires (default: [api] setting).")
@format_option()
@click.pass_context
@friendly
def tokens_issue(ctx: click.Context, merchant: str, ttl: int | None, fmt: str) -> None:
    """Print a signed, expiring token for one merchant."""
    config = context_config(ctx)
    token, expires = signer_for(config).issue(merchant, ttl or config.api.token_ttl_seconds)
    expires_at = datetime.fromtimestamp(expires, UTC)
    if fmt == JSON:
        print_json({"merchant_id": merchant, "token": token, "expires_at": expires_at})
        return
    click.echo(token)
    errors.print(f"expires {expires_at.isoformat(timespec='seconds')}", style="yellow")


@tokens_group.command("admin")
@click.pass_context
@friendly
def tokens_admin(ctx: click.Context) -> None:
    """Print the admin token (for /v1/admin endpoints)."""
    click.echo(admin_token_for(context_config(ctx)))
