"""Compaction: an hour's small files of a partition merged into one, readers never misled.

For each partition of the hour, the committed files (the committed rule of
:mod:`mercato.archive.layout`) in offset order are cut into runs at every file of at least
``target_bytes``; each run of two or more files is merged into one file named by the run's
range ``[first of the first, last of the last]``. A run may skip offsets: those are committed
records with no event in this hour, so the merged range still covers exactly its inputs.

Order of work, so a kill at any point leaves a readable archive and a rerun finishes the job:

1. the merged rows, in archive row order, go to a temp file that is fsync'd (on S3: to
   memory);
2. the temp file is read back and must hold the inputs' row count and event checksum
   (:func:`~mercato.archive.schema.event_checksum`); otherwise it is deleted and
   :class:`~mercato.archive.errors.CompactionError` raised, the inputs untouched;
3. it is renamed to its name and the directory fsync'd (on S3: put under its name): from
   here readers use it and skip the inputs, which lie inside its range (the containment
   part of the committed rule);
4. the inputs are deleted.

A rerun first deletes committed files contained in another committed file (left by a kill
between 3 and 4) and temp files over an hour old. Compaction touches only committed files, so
it can run while the archiver writes the same hour; run one compaction of an hour at a time.
A reader that listed an hour's files before a compaction deleted its inputs finds them gone
and must list again; jobs that read an hour (seal) and compact it should take turns.
"""

from __future__ import annotations

import datetime as dt
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pyarrow as pa

from mercato.archive.errors import CompactionError
from mercato.archive.layout import (
    ArchiveFile,
    Root,
    hour_dir,
    list_files,
    list_hours,
    open_storage,
    parse_hour,
    read_state,
    select_committed,
)
from mercato.archive.schema import (
    SCHEMA,
    event_checksum,
    read_parquet,
    sort_rows,
    write_parquet,
)
from mercato.archive.storage import ArchiveStorage, new_tag, temp_target

TARGET_BYTES = 128 * 1024 * 1024
STALE_TEMP = timedelta(hours=1)


class CompactionResult(msgspec.Struct):
    """What one compaction did."""

    hours: int = 0
    merged_files: int = 0
    written_files: int = 0
    redundant_files: int = 0
    rows: int = 0


def compact_hour(
    root: Root,
    date: str | dt.date,
    hour: int,
    *,
    compression_level: int = 3,
    target_bytes: int = TARGET_BYTES,
) -> CompactionResult:
    """Merge runs of committed small files of each partition in the UTC hour ``hour`` of
    ``date`` (``YYYY-MM-DD``; see the module docstring); safe to repeat and to kill."""
    start = parse_hour(date if isinstance(date, str) else date.isoformat(), hour)
    return _compact(open_storage(root), start, compression_level, target_bytes)


def compact_all(
    root: Root, *, compression_level: int = 3, target_bytes: int = TARGET_BYTES
) -> CompactionResult:
    """:func:`compact_hour` for every hour of the archive."""
    storage = open_storage(root)
    total = CompactionResult()
    for hour in list_hours(storage):
        one = _compact(storage, hour, compression_level, target_bytes)
        for field in total.__struct_fields__:
            setattr(total, field, getattr(total, field) + getattr(one, field))
    return total


def _compact(
    storage: ArchiveStorage, hour: datetime, compression_level: int, target_bytes: int
) -> CompactionResult:
    result = CompactionResult(hours=1)
    _delete_stale_temps(storage, hour, datetime.now(UTC))
    next_offsets = read_state(storage).next_offsets()
    files = list_files(storage, hour)
    chosen = select_committed(files, next_offsets)
    kept = set(chosen)
    redundant = [
        f
        for f in files
        if f not in kept
        and f.last < next_offsets.get(f.partition, 0)
        and any(c.partition == f.partition and c.contains(f) for c in chosen)
    ]
    for f in redundant:
        result.redundant_files += storage.delete(f.path)
    for run in _runs(chosen, target_bytes):
        result.rows += _merge(storage, run, compression_level)
        result.merged_files += len(run)
        result.written_files += 1
    if redundant or result.merged_files:
        storage.sync_directory(hour_dir(hour))
    return result


def _runs(files: list[ArchiveFile], target_bytes: int) -> list[list[ArchiveFile]]:
    runs: list[list[ArchiveFile]] = []
    current: list[ArchiveFile] = []
    for f in sorted(files, key=lambda f: (f.partition, f.first)):
        if f.size >= target_bytes or (current and current[-1].partition != f.partition):
            runs.append(current)
            current = []
        if f.size < target_bytes:
            current.append(f)
    runs.append(current)
    return [run for run in runs if len(run) >= 2]


def _merge(storage: ArchiveStorage, run: list[ArchiveFile], compression_level: int) -> int:
    inputs = [read_parquet(storage.open_input(f.path)) for f in run]
    table = sort_rows(pa.concat_tables(inputs).cast(SCHEMA))
    rows: int = table.num_rows
    checksum = event_checksum(table)
    target = ArchiveFile(run[0].hour, run[0].partition, run[0].first, run[-1].last)

    def verify(source: Any) -> None:
        written = read_parquet(source)
        if written.num_rows != rows or event_checksum(written) != checksum:
            raise CompactionError(
                f"{target.path}: the merged file does not hold its {len(run)} inputs' "
                f"{rows} rows; it was deleted and the inputs kept"
            )

    storage.write_atomic(
        target.path,
        lambda out: write_parquet(table, out, compression_level),
        tag=new_tag("compaction"),
        verify=verify,
    )
    for f in run:
        storage.delete(f.path)
    return rows


def _delete_stale_temps(storage: ArchiveStorage, hour: datetime, now: datetime) -> None:
    directory = hour_dir(hour)
    for entry in storage.list_dir(directory):
        if temp_target(entry.name) and entry.mtime is not None:
            mtime = entry.mtime if entry.mtime.tzinfo else entry.mtime.replace(tzinfo=UTC)
            if now - mtime > STALE_TEMP:
                storage.delete(f"{directory}/{entry.name}")
