"""``mercato db migrate``: bring the serving store's schema up to this Mercato.

Thin: calls :func:`mercato.store.postgres_schema.migrate` for PostgreSQL (whose store refuses
to run before it), or opens the SQLite store, which migrates itself. Safe to repeat, and to
run from several processes at once (they take turns).
"""

from __future__ import annotations

import click

from mercato.clitools import console, context_config, friendly
from mercato.store import missing_postgres_extra
from mercato.store.sqlite import SCHEMA_VERSION, SqliteStore


@click.group("db")
def db_group() -> None:
    """The serving store's schema."""


@db_group.command("migrate")
@click.pass_context
@friendly
def migrate(ctx: click.Context) -> None:
    """Apply the store's pending schema migrations; a no-op when there are none.

    Refuses a store whose schema is newer than this Mercato knows.
    """
    config = context_config(ctx)
    if config.store.backend == "sqlite":
        SqliteStore(config.store_path, config.store).close()
        console.print(f"{config.store_path}: schema version {SCHEMA_VERSION}", highlight=False)
        return
    try:
        from mercato.store.postgres_schema import migrate as migrate_postgres  # noqa: PLC0415
    except ImportError as exc:
        raise missing_postgres_extra(exc) from None
    before, after = migrate_postgres(config.store.dsn)
    done = "up to date" if before == after else f"migrated from {before}"
    console.print(f"PostgreSQL store: schema version {after} ({done})", highlight=False)
