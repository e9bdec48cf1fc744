"""The batch engine interface: archive files in, the kernel's partials out.

An engine reads archived rows (:data:`mercato.archive.schema.SCHEMA`), keeps one row per
``(merchant_id, event_id)`` — the first in log order, ``(log_partition, log_offset)`` — and
runs the rollup kernel (:func:`mercato.metrics.kernel.rollup`, the same one the aggregator
runs) over them, merging the partials of its chunks with :func:`~mercato.metrics.kernel.merge`.
Engines differ only in who reads, de-duplicates and schedules: DuckDB in this process
(the embedded default, :mod:`mercato.batch.duckdb`) or Spark on its executors (extra
``[spark]``, :mod:`mercato.batch.spark`). Both read the files in place on the archive's file
system (:attr:`mercato.archive.storage.ArchiveStorage.fs`): local files with their own
Parquet readers, an object store's through ``pyarrow.fs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import msgspec
import pyarrow as pa
import pyarrow.fs as pafs

from mercato.batch.errors import EngineError
from mercato.metrics.definitions import Definitions

if TYPE_CHECKING:
    from mercato.config import BatchConfig

ENGINES = ("duckdb", "spark")


class Rollup(msgspec.Struct, frozen=True):
    """What an engine computed over a set of archive files."""

    partials: pa.Table
    events: int  # distinct events counted
    rows: int  # archived rows read (events plus redeliveries)


class Engine(Protocol):
    name: str

    def rollup(
        self,
        paths: Sequence[str],
        definitions: Definitions,
        filesystem: pafs.FileSystem | None = None,
    ) -> Rollup:
        """The merged partials of the distinct events in the archive files ``paths`` of
        ``filesystem`` (None: local paths)."""
        ...

    def close(self) -> None: ...


def is_local(filesystem: pafs.FileSystem | None) -> bool:
    """Whether paths of ``filesystem`` are local paths, which engines read with their own
    readers (anything else they read through ``pyarrow.fs``)."""
    return filesystem is None or isinstance(filesystem, pafs.LocalFileSystem)


def open_engine(
    name: str, *, threads: int = 0, chunk_rows: int = 500_000, master: str | None = None
) -> Engine:
    """The engine called ``name`` (one of :data:`ENGINES`); ``master`` is Spark's (default:
    local mode with ``threads`` cores)."""
    # the engine modules import this one; spark's imports pyspark, an optional extra
    if name == "duckdb":
        from mercato.batch.duckdb import DuckDbEngine  # noqa: PLC0415

        return DuckDbEngine(threads=threads, chunk_rows=chunk_rows)
    if name == "spark":
        try:
            from mercato.batch.spark import SparkEngine  # noqa: PLC0415
        except ImportError as exc:
            missing = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise EngineError(
                f"the spark batch engine needs the [spark] extra, pip install 'mercato[spark]'"
                f" ({missing})"
            ) from None
        return SparkEngine(threads=threads, chunk_rows=chunk_rows, master=master)
    raise EngineError(f"unknown batch engine {name!r}: one of {', '.join(ENGINES)}")


def configured_engine(config: BatchConfig) -> Engine:
    """The engine ``[batch]`` names, with its threads, chunk size and Spark master."""
    return open_engine(
        config.engine,
        threads=config.threads,
        chunk_rows=config.chunk_rows,
        master=config.spark_master or None,
    )
