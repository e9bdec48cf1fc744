"""Ad-hoc SQL over the archive: DuckDB with a view ``events`` of every committed row.

The view reads only the files the committed rule allows (see
:func:`mercato.archive.layout.committed_files`), so a crashed archiver's leftovers never
show, and adds the Hive columns ``date`` and ``hour``. Redeliveries are rows too: count
``DISTINCT merchant_id, event_id`` for events. ``properties`` and ``context`` are JSON text:
``properties->>'amount'`` reads a field.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from mercato.archive.layout import Root
from mercato.archive.reader import committed_paths
from mercato.archive.schema import SCHEMA
from mercato.batch.errors import BatchError


class QueryError(BatchError):
    """The SQL did not run."""


def run_sql(archive: Root, sql: str) -> pa.Table:
    """The result of ``sql`` over the archive's ``events`` view."""
    db = duckdb.connect(":memory:")
    try:
        paths = committed_paths(archive)
        if paths:
            files = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
            db.sql(
                f"CREATE VIEW events AS SELECT * FROM read_parquet([{files}],"
                " hive_partitioning = true)"
            )
        else:
            db.register("empty_events", SCHEMA.empty_table())
            db.sql("CREATE VIEW events AS SELECT * FROM empty_events")
        try:
            table: pa.Table = db.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            raise QueryError(str(exc).splitlines()[0]) from None
        except AttributeError:  # a statement without a result (e.g. SET)
            raise QueryError("the statement returned no rows: ask a SELECT") from None
        return table
    finally:
        db.close()
