"""Ad-hoc SQL over the archive: DuckDB with a view ``events`` of every committed row.

The view reads only the files the committed rule allows (see
:func:`mercato.archive.layout.committed_files`), so a crashed archiver's leftovers never
show, and adds the Hive columns ``date`` and ``hour``. Redeliveries are rows too: count
``DISTINCT merchant_id, event_id`` for events. ``properties`` and ``context`` are JSON text:
``properties->>'amount'`` reads a field. Local files DuckDB reads itself; an object store's
it scans in place as a ``pyarrow.dataset`` (DuckDB has no S3 reader here).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from mercato.archive.layout import EVENTS_DIR, Root, open_storage
from mercato.archive.reader import committed_paths
from mercato.archive.schema import SCHEMA
from mercato.batch.errors import QueryError

# The Hive columns as DuckDB's read_parquet types them, for an object store's files too.
HIVE = ds.partitioning(pa.schema([("date", pa.date32()), ("hour", pa.string())]), flavor="hive")


def run_sql(archive: Root, sql: str) -> pa.Table:
    """The result of ``sql`` over the archive's ``events`` view."""
    db = duckdb.connect(":memory:")
    try:
        storage = open_storage(archive)
        paths = committed_paths(storage)
        if paths and storage.local:
            files = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
            db.sql(
                f"CREATE VIEW events AS SELECT * FROM read_parquet([{files}],"
                " hive_partitioning = true)"
            )
        elif paths:
            dataset = ds.dataset(
                paths,
                format="parquet",
                filesystem=storage.fs,
                partitioning=HIVE,
                partition_base_dir=storage.path(EVENTS_DIR),
            )
            db.register("archive_files", dataset)
            db.sql("CREATE VIEW events AS SELECT * FROM archive_files")
        else:
            db.register("empty_events", SCHEMA.empty_table())
            db.sql("CREATE VIEW events AS SELECT * FROM empty_events")
        try:
            table: pa.Table = db.sql(sql).to_arrow_table()
        except (duckdb.Error, OSError) as exc:
            raise QueryError(str(exc).splitlines()[0]) from None
        except AttributeError:  # a statement without a result (e.g. SET)
            raise QueryError("the statement returned no rows: ask a SELECT") from None
        return table
    finally:
        db.close()
