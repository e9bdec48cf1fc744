"""The embedded batch engine: DuckDB reads and de-duplicates, the kernel rolls up.

Local files DuckDB reads itself (``read_parquet``). It has no S3 reader without its httpfs
extension, which it would download; so files on an object store are handed to it as a
``pyarrow.dataset`` on the archive's file system, which it scans in place, batch by batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from mercato.archive.schema import SCHEMA
from mercato.batch.engine import Rollup, is_local
from mercato.batch.errors import EngineError
from mercato.metrics.batch import BatchBuilder
from mercato.metrics.definitions import Definitions
from mercato.metrics.kernel import empty_partials, merge, rollup

COLUMNS = ", ".join(SCHEMA.names)
LOCAL_FILES = "read_parquet($paths, hive_partitioning = false)"
DATASET = "archive_files"  # the name an object store's files are registered under
# One row per event: the first delivery in log order. Rows come out in the archive's own
# order, so the same files always feed the kernel the same chunks.
DISTINCT_EVENTS = f"""
    SELECT {COLUMNS} FROM {{files}}
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

    def rollup(
        self,
        paths: Sequence[str],
        definitions: Definitions,
        filesystem: pafs.FileSystem | None = None,
    ) -> Rollup:
        if not paths:
            return Rollup(empty_partials(), 0, 0)
        builder = BatchBuilder(definitions)
        parts, events = [], 0
        rows = self._rows(paths, filesystem)
        for table in self.distinct_events(paths, filesystem):
            parts.append(rollup(builder.from_archive(table), definitions))
            events += table.num_rows
        partials = merge(parts) if parts else empty_partials()
        return Rollup(partials, events, rows)

    def distinct_events(
        self, paths: Sequence[str], filesystem: pafs.FileSystem | None = None
    ) -> Iterator[pa.Table]:
        """The distinct events of the archive files ``paths`` in chunks of about
        ``chunk_rows``, the first delivery of each in log order, in the archive's order."""
        if not paths:
            return
        with self._files(paths, filesystem) as (files, params):
            try:
                relation = self._db.sql(DISTINCT_EVENTS.format(files=files), params=params)
                reader: pa.RecordBatchReader = relation.to_arrow_reader(self.chunk_rows)
                for batch in reader:
                    if batch.num_rows:
                        yield pa.Table.from_batches([batch])
            except (duckdb.Error, OSError) as exc:
                raise EngineError(f"DuckDB could not read the archive: {exc}") from exc

    def _rows(self, paths: Sequence[str], filesystem: pafs.FileSystem | None) -> int:
        with self._files(paths, filesystem) as (files, params):
            try:
                counted = self._db.sql(f"SELECT count(*) FROM {files}", params=params).fetchall()
            except (duckdb.Error, OSError) as exc:
                raise EngineError(f"DuckDB could not read the archive: {exc}") from exc
        return int(counted[0][0])

    @contextmanager
    def _files(
        self, paths: Sequence[str], filesystem: pafs.FileSystem | None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """What to read ``paths`` as in SQL, and its parameters."""
        if is_local(filesystem):
            yield LOCAL_FILES, {"paths": list(paths)}
            return
        dataset = ds.dataset(list(paths), schema=SCHEMA, format="parquet", filesystem=filesystem)
        self._db.register(DATASET, dataset)
        try:
            yield DATASET, {}
        finally:
            self._db.unregister(DATASET)

    def close(self) -> None:
        self._db.close()
