"""What only the SQLite store has: a file in WAL mode, other processes, reopening, schema."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mercato.config import Config, StoreConfig, load_config
from mercato.store import SqliteStore, open_store
from mercato.store.errors import StoreClosedError, StoreSchemaError, StoreWriteError
from mercato.store.sqlite import SCHEMA_VERSION

from .conftest import EVERYTHING, hll, partials, row


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "store.sqlite3"


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def test_file_is_in_wal_mode_with_the_schema_version(path: Path) -> None:
    SqliteStore(path, StoreConfig()).close()
    db = raw(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
        tables = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    finally:
        db.close()
    assert set(tables) >= {
        "definition_versions",
        "serving_version",
        "speed_rollups",
        "final_rollups",
        "consumer_offsets",
        "merchants",
        "job_runs",
    }
    for name in ("speed_rollups", "final_rollups"):
        assert "WITHOUT ROWID" in tables[name]
        key = "PRIMARY KEY (version, merchant_id, metric, dimension, member, bucket)"
        assert key in tables[name]


def test_connections_use_the_configured_pragmas(path: Path) -> None:
    config = StoreConfig(busy_timeout_ms=1234, cache_mb=3, mmap_mb=5)
    with SqliteStore(path, config) as store, store._connection() as db:
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 1234
        assert db.execute("PRAGMA cache_size").fetchone()[0] == -3 * 1024
        assert db.execute("PRAGMA mmap_size").fetchone()[0] in (0, 5 * 1024 * 1024)


def test_reopen_keeps_everything(path: Path) -> None:
    sketch = hll(f"s{i}" for i in range(100))
    with SqliteStore(path, StoreConfig()) as store:
        v = store.register_version("hash", "text")
        store.set_serving_version(v)
        store.set_merchant_timezone("m1", "Asia/Kolkata")
        store.write(v, "agg", partials(row(count=3, sum=9, min=1, max=5, sketch=sketch)), {2: 40})
    with SqliteStore(path, StoreConfig()) as store:
        assert store.register_version("hash", "text") == v
        assert [x.hash for x in store.versions()] == ["hash"]
        assert store.serving_version() == v
        assert store.merchant_timezone("m1") == "Asia/Kolkata"
        assert store.offsets("agg") == {2: 40}
        assert store.read(v, "m1", ["orders"], *EVERYTHING).to_pylist() == [
            row(count=3, sum=9, min=1, max=5, sketch=sketch)
        ]


def test_another_connection_sees_committed_writes(path: Path) -> None:
    with SqliteStore(path, StoreConfig()) as writer, SqliteStore(path, StoreConfig()) as reader:
        v = writer.register_version("hash", "text")
        assert reader.read(v, "m1", ["orders"], *EVERYTHING).num_rows == 0
        writer.write(v, "agg", partials(row(count=2)), {0: 7})
        assert reader.read(v, "m1", ["orders"], *EVERYTHING).to_pylist() == [row(count=2)]
        assert reader.offsets("agg") == {0: 7}


def test_another_process_sees_committed_writes(path: Path) -> None:
    script = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from mercato.config import StoreConfig
        from mercato.store import SqliteStore

        with SqliteStore(Path(sys.argv[1]), StoreConfig()) as store:
            rows = store.read(int(sys.argv[2]), "m1", ["orders"], 0, 10**9)
            print(json.dumps({"counts": rows["count"].to_pylist(),
                              "offsets": store.offsets("agg")}))
        """
    )
    with SqliteStore(path, StoreConfig()) as store:
        v = store.register_version("hash", "text")
        store.write(v, "agg", partials(row(count=2), row(bucket=900, count=5)), {0: 3, 1: 4})
        # The writer stays open: the reader must see the commit, not a checkpointed file.
        result = subprocess.run(
            [sys.executable, "-c", script, str(path), str(v)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"counts": [2, 5], "offsets": {"0": 3, "1": 4}}


def test_failure_between_rows_and_offsets_rolls_back_both(path: Path) -> None:
    with SqliteStore(path, StoreConfig()) as store:
        v = store.register_version("hash", "text")
        store.write(v, "agg", partials(row(count=1)), {0: 1})
        db = raw(path)
        try:  # the offsets are written after the rows, in the same transaction
            db.execute(
                "CREATE TRIGGER fail_offsets BEFORE INSERT ON consumer_offsets"
                " WHEN NEW.partition = 66 BEGIN SELECT RAISE(ABORT, 'injected'); END"
            )
        finally:
            db.close()
        with pytest.raises(StoreWriteError, match="injected"):
            store.write(v, "agg", partials(row(count=5), row("m2")), {0: 2, 66: 1})
        assert store.read(v, "m1", ["orders"], *EVERYTHING).to_pylist() == [row(count=1)]
        assert store.read(v, "m2", ["orders"], *EVERYTHING).num_rows == 0
        assert store.offsets("agg") == {0: 1}


def test_database_newer_than_the_code_is_refused(path: Path) -> None:
    SqliteStore(path, StoreConfig()).close()
    db = raw(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreSchemaError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade"):
        SqliteStore(path, StoreConfig())


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"
    db = raw(other)
    db.execute("CREATE TABLE notes (text TEXT)")
    db.close()
    with pytest.raises(StoreSchemaError, match="not a Mercato store"):
        SqliteStore(other, StoreConfig())
    text = tmp_path / "text.sqlite3"
    text.write_bytes(b"this is not a database at all, just some text " * 100)
    with pytest.raises(StoreSchemaError):
        SqliteStore(text, StoreConfig())


def test_a_temporary_store_is_a_store_in_a_directory_deleted_on_close() -> None:
    store = SqliteStore.temporary(StoreConfig(cache_mb=3))
    v = store.register_version("hash", "text")
    store.write(v, "agg", partials(row(count=2)), {0: 7})
    assert store.read(v, "m1", ["orders"], *EVERYTHING).to_pylist() == [row(count=2)]
    with store._connection() as db:
        assert db.execute("PRAGMA cache_size").fetchone()[0] == -3 * 1024
    assert store.path.exists()
    store.close()
    assert not store.path.parent.exists()
    with pytest.raises(StoreClosedError):
        store.offsets("agg")


def test_open_store_follows_the_configuration(tmp_path: Path) -> None:
    config = Config(data_dir=str(tmp_path / "data"))
    assert config.store_path == tmp_path / "data" / "store.sqlite3"
    with open_store(config) as store:
        assert isinstance(store, SqliteStore)
        assert store.path == config.store_path
    assert config.store_path.exists()
    elsewhere = tmp_path / "elsewhere" / "s.db"
    config = load_config(env={"MERCATO_STORE_PATH": str(elsewhere), "MERCATO_STORE_CACHE_MB": "8"})
    assert config.store_path == elsewhere
    assert config.store.cache_mb == 8
    with open_store(config) as store:
        assert isinstance(store, SqliteStore)
        assert store.path == elsewhere
