"""Reading the archive as batch jobs must: only the committed files, each record once."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import pyarrow as pa

from mercato.archive.layout import Root, committed_files, open_storage
from mercato.archive.schema import SCHEMA, read_parquet


def read_committed(root: Root, hours: Iterable[datetime] | None = None) -> pa.Table:
    """Every archived row of ``hours`` (default: all), from :func:`committed_files`."""
    storage = open_storage(root)
    tables = [read_parquet(storage.open_input(f.path)) for f in committed_files(storage, hours)]
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def committed_paths(root: Root, hours: Iterable[datetime] | None = None) -> list[str]:
    """The full paths of :func:`committed_files`, e.g. for DuckDB's ``read_parquet([...],
    hive_partitioning=true)`` or Spark's ``spark.read.parquet(*paths)``."""
    storage = open_storage(root)
    return [storage.path(f.path) for f in committed_files(storage, hours)]
