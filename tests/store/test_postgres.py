"""What only the PostgreSQL store has: concurrent writers, migrations, monthly partitions.

Against a real PostgreSQL server (``postgres_server``); the shared contract is in
``test_contract.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from mercato.config import StoreConfig
from mercato.metrics.kernel import sketch_estimate
from mercato.store.errors import StoreError, StoreSchemaError
from mercato.store.postgres import PostgresStore
from mercato.store.postgres_schema import SCHEMA_VERSION, migrate

from .conftest import EVERYTHING, fresh_database, hll, partials, row


def test_two_connections_writing_the_same_keys_lose_nothing(postgres_database: str) -> None:
    writes, writers = 40, 4
    stores = [PostgresStore(postgres_database, StoreConfig(pool_size=2)) for _ in range(writers)]
    v = stores[0].register_version("h", "t")
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def write(n: int, store: PostgresStore) -> None:
        try:
            start.wait()
            for i in range(writes):
                # every writer touches the same keys, sketches included, in every write,
                # half of them in the reverse order
                rows = [
                    row(bucket=0, count=1, sum=n, min=n, max=n, sketch=hll([f"{n}-{i}"])),
                    row(bucket=900, count=1),
                    row("m2", bucket=0, count=2),
                ]
                batch = partials(*(reversed(rows) if n % 2 else rows))
                store.write(v, f"agg-{n}", batch, {n: i + 1})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n, s)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    reader = stores[0]
    [first, second] = reader.read(v, "m1", ["orders"], *EVERYTHING).to_pylist()
    assert (first["count"], first["sum"], first["min"], first["max"]) == (
        writes * writers,
        writes * sum(range(writers)),
        0,
        writers - 1,
    )
    assert sketch_estimate(first["sketch"]) == pytest.approx(writes * writers, rel=0.05)
    assert second["count"] == writes * writers
    assert reader.read(v, "m2", ["orders"], *EVERYTHING)["count"].to_pylist() == [
        2 * writes * writers
    ]
    assert [reader.offsets(f"agg-{n}") for n in range(writers)] == [
        {n: writes} for n in range(writers)
    ]
    for store in stores:
        store.close()


def test_rollups_go_to_monthly_partitions_made_on_demand(postgres_database: str) -> None:
    with PostgresStore(postgres_database, StoreConfig()) as store:
        v = store.register_version("h", "t")
        january, march = 1_767_225_600, 1_772_323_200  # 2026-01-01, 2026-03-01 UTC
        store.write(v, "agg", partials(row(bucket=january), row(bucket=march)), {})
        store.write_sealed_hour(v, march, partials(row(bucket=march, count=5)), "fp", 5)
        speed = store.read(v, "m1", ["orders"], *EVERYTHING)
        assert speed["count"].to_pylist() == [1, 1]
        final = store.read(v, "m1", ["orders"], *EVERYTHING, "", march + 3600)
        assert final["count"].to_pylist() == [5]
    with psycopg.connect(postgres_database) as db:
        partitions = db.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE c.relkind = 'r' ORDER BY 1"
        ).fetchall()
    assert [name for (name,) in partitions] == [
        "final_rollups_202601",
        "final_rollups_202603",
        "speed_rollups_202601",
        "speed_rollups_202603",
    ]


def test_migrate_is_idempotent_and_the_store_refuses_an_unmigrated_database(
    postgres_server: str,
) -> None:
    with fresh_database(postgres_server) as dsn, psycopg.connect(dsn, autocommit=True) as db:
        db.execute("DROP SCHEMA public CASCADE")
        db.execute("CREATE SCHEMA public")
        with pytest.raises(StoreSchemaError, match="run `mercato db migrate`"):
            PostgresStore(dsn, StoreConfig())
        assert migrate(dsn) == (0, SCHEMA_VERSION)
        assert migrate(dsn) == (SCHEMA_VERSION, SCHEMA_VERSION)
        applied = db.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
        assert applied == [(n,) for n in range(1, SCHEMA_VERSION + 1)]
        with PostgresStore(dsn, StoreConfig()) as store:
            assert store.versions() == []


def test_a_newer_schema_is_refused_by_migrate_and_by_the_store(postgres_database: str) -> None:
    with psycopg.connect(postgres_database, autocommit=True) as db:
        db.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreSchemaError, match="newer than this Mercato"):
        migrate(postgres_database)
    with pytest.raises(StoreSchemaError, match="newer than this Mercato"):
        PostgresStore(postgres_database, StoreConfig())


def mercato_db_migrate(dsn: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERCATO_")}
    env |= {"MERCATO_STORE_BACKEND": "postgres", "MERCATO_STORE_DSN": dsn}
    return subprocess.run(
        [sys.executable, "-m", "mercato", "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_mercato_db_migrate_command(postgres_server: str) -> None:
    with fresh_database(postgres_server) as dsn:
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute("DROP SCHEMA public CASCADE")
            db.execute("CREATE SCHEMA public")
        first = mercato_db_migrate(dsn)
        assert first.returncode == 0, first.stderr
        assert f"schema version {SCHEMA_VERSION} (migrated from 0)" in first.stdout
        again = mercato_db_migrate(dsn)
        assert again.returncode == 0, again.stderr
        assert "up to date" in again.stdout
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
        newer = mercato_db_migrate(dsn)
        assert newer.returncode == 1
        assert "newer than this Mercato" in newer.stderr
        assert len(newer.stderr.strip().splitlines()) == 1
        assert "Traceback" not in newer.stderr


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    dsn = f"host={tmp_path / 'no-server'} dbname=mercato"
    with pytest.raises(StoreError, match="cannot connect to the store") as caught:
        PostgresStore(dsn, StoreConfig(connect_timeout_seconds=1))
    assert len(str(caught.value).splitlines()) == 1
    assert "no-server" in str(caught.value)


def test_mercato_db_migrate_on_sqlite_opens_the_store(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERCATO_")}
    env["MERCATO_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "mercato", "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "store.sqlite3").exists()
    assert "schema version" in result.stdout
