"""The embedded batch engine: DuckDB reads and de-duplicates, the kernel rolls up."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pyarrow as pa

from mercato.archive.schema import SCHEMA
from mercato.batch.engine import Rollup
from mercato.batch.errors import EngineError
from mercato.metrics.batch import BatchBuilder
from mercato.metrics.definitions import Definitions
from mercato.metrics.kernel import empty_partials, merge, rollup

COLUMNS = ", ".join(SCHEMA.names)
# One row per event: the first delivery in log order. Rows come out in the archive's own
# order, so the same files always feed the kernel the same chunks.
DISTINCT_EVENTS = f"""
    SELECT {COLUMNS} FROM read_parquet($paths, hive_partitioning = false)
    QUALIFY row_number() OVER (
        PARTITION BY merchant_id, event_id ORDER BY log_partition, log_offset
    ) = 1
    ORDER BY merchant_id, event_time, log_partition, log_offset
"""


class DuckDbEngine:
    """Runs in this process; ``threads`` 0 lets DuckDB use every core."""

    name = "duckdb"

    def __init__(self, *, threads: int = 0, chunk_rows: int = 500_000) -> None:
        self.chunk_rows = chunk_rows
        self._db = duckdb.connect(":memory:")
        if threads:
            self._db.execute(f"SET threads = {int(threads)}")

    def rollup(self, paths: Sequence[str], definitions: Definitions) -> Rollup:
        if not paths:
            return Rollup(empty_partials(), 0, 0)
        builder = BatchBuilder(definitions)
        try:
            counted = self._db.sql(
                "SELECT count(*) FROM read_parquet($paths, hive_partitioning = false)",
                params={"paths": list(paths)},
            ).fetchall()
            relation = self._db.sql(DISTINCT_EVENTS, params={"paths": list(paths)})
            reader: pa.RecordBatchReader = relation.to_arrow_reader(self.chunk_rows)
            parts, events = [], 0
            for batch in reader:
                if batch.num_rows:
                    table = pa.Table.from_batches([batch])
                    parts.append(rollup(builder.from_archive(table), definitions))
                    events += batch.num_rows
        except duckdb.Error as exc:
            raise EngineError(f"DuckDB could not read the archive: {exc}") from exc
        partials = merge(parts) if parts else empty_partials()
        return Rollup(partials, events, int(counted[0][0]))

    def close(self) -> None:
        self._db.close()
