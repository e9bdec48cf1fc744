"""Fixtures of the store tests: a ``store_factory`` over every backend, and partials helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from mercato.config import StoreConfig
from mercato.metrics import kernel
from mercato.metrics.kernel import PARTIAL_SCHEMA
from mercato.store.base import Store
from mercato.store.memory import MemoryStore
from mercato.store.sqlite import SqliteStore

StoreFactory = Callable[..., Store]
BACKENDS = ["memory", "sqlite"]
EVERYTHING = (-(2**62), 2**62)  # a bucket range holding every bucket


def make_store(backend: str, directory: Path, config: StoreConfig | None = None) -> Store:
    """A store of ``backend``; SQLite ones live in ``directory``/store.sqlite3."""
    if backend == "memory":
        return MemoryStore()
    return SqliteStore(directory / "store.sqlite3", config or StoreConfig())


@pytest.fixture(params=BACKENDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """``make()`` opens a store of the parametrized backend; all are closed after the test.

    SQLite stores made by one factory share a file, so a second ``make()`` is a second
    connection pool onto the same data (for a memory store it is a new, empty store).
    """
    opened: list[Store] = []

    def make(config: StoreConfig | None = None) -> Store:
        store = make_store(request.param, tmp_path, config)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def row(
    merchant_id: str = "m1",
    metric: str = "orders",
    dimension: str = "",
    member: str = "",
    bucket: int = 0,
    count: int | None = 1,
    sum: int | None = None,
    min: int | None = None,
    max: int | None = None,
    sketch: bytes | None = None,
) -> dict[str, Any]:
    """One partial row as a dict, with the defaults of a plain count."""
    return {
        "merchant_id": merchant_id,
        "metric": metric,
        "dimension": dimension,
        "member": member,
        "bucket": bucket,
        "count": count,
        "sum": sum,
        "min": min,
        "max": max,
        "sketch": sketch,
    }


def partials(*rows: dict[str, Any]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=PARTIAL_SCHEMA)


# The kernel's own sketch builders, so stored sketches are exactly what rollup() makes.
def hll(values: Iterable[str]) -> bytes:
    return kernel.hll_of(values)


def kll(values: Iterable[float]) -> bytes:
    return kernel.kll_of(values)
