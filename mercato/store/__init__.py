"""The serving store: rollups, consumer offsets, definitions versions, merchant settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mercato.store.base import DefinitionVersion, Store
from mercato.store.memory import MemoryStore
from mercato.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from mercato.config import Config

__all__ = ["DefinitionVersion", "MemoryStore", "SqliteStore", "Store", "open_store"]


def open_store(config: Config) -> Store:
    """The store the configuration names (``[store] backend``), opened and migrated."""
    return SqliteStore(config.store_path, config.store)
