"""The serving store: rollups, consumer offsets, definitions versions, merchant settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mercato.store.base import DefinitionVersion, Store
from mercato.store.errors import StoreError
from mercato.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from mercato.config import Config

__all__ = [
    "DefinitionVersion",
    "SqliteStore",
    "Store",
    "describe_store",
    "open_store",
]


def missing_postgres_extra(exc: ImportError) -> StoreError:
    """The error for ``[store] backend = "postgres"`` without psycopg installed."""
    return StoreError(
        f"[store] backend postgres needs the postgres extra ({exc.name} is missing):"
        " pip install 'mercato[postgres]'"
    )


def open_store(config: Config) -> Store:
    """The store the configuration names (``[store] backend``), opened; SQLite migrates
    itself, PostgreSQL must have been migrated by ``mercato db migrate``."""
    if config.store.backend == "postgres":
        try:
            from mercato.store.postgres import PostgresStore  # noqa: PLC0415 (the extra [postgres])
        except ImportError as exc:
            raise missing_postgres_extra(exc) from None

        return PostgresStore(config.store.dsn, config.store)
    return SqliteStore(config.store_path, config.store)


def describe_store(config: Config) -> str:
    """Where the configured store is, for start-up lines: the SQLite file, or the PostgreSQL
    server and database (never the password)."""
    if config.store.backend != "postgres":
        return str(config.store_path)
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415 (the extra [postgres])

    try:
        parts = conninfo_to_dict(config.store.dsn)
    except Exception:
        return "postgresql (unreadable dsn)"
    host = parts.get("host") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql database {parts.get('dbname') or '(default)'} at {host}{port}"
