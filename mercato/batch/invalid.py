"""The events a metric counted as invalid, found again in the archive: ``mercato invalid``.

A metric leaves out an event whose value (or own time) it cannot use and counts it in its
``invalid`` figure (see :mod:`mercato.metrics.kernel`). This finds those events by the same
rule: the archive's distinct events of the chosen hours, run through the kernel's own
:func:`~mercato.metrics.kernel.matches` and :func:`~mercato.metrics.kernel.unusable`, so an
operator can see each one's id and payload and tell the producer what to fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from mercato.archive.layout import Root, committed_files, list_hours, open_storage
from mercato.batch.duckdb import DuckDbEngine
from mercato.batch.errors import BatchError
from mercato.metrics.batch import BatchBuilder, invalid_column
from mercato.metrics.definitions import Definitions, Metric
from mercato.metrics.kernel import matches, unusable, value_kind


class InvalidEvent(msgspec.Struct, frozen=True):
    """One event a metric matched but could not use."""

    event_id: str
    merchant_id: str
    event_time: datetime
    fields: list[str]  # the field(s) holding what the metric could not use
    properties: str  # the event's payloads as archived (JSON text)
    context: str


def find_invalid(
    archive: Root,
    definitions: Definitions,
    metric: Metric,
    start: datetime,
    end: datetime,
    *,
    merchant_id: str | None = None,
    limit: int = 100,
) -> list[InvalidEvent]:
    """Up to ``limit`` events with an event time in ``[start, end)`` (of ``merchant_id``, or
    of every merchant) that ``metric`` counted as invalid, in archive order."""
    if not metric.stored:
        raise BatchError(f"{metric.name} is derived: its parts count invalid values")
    storage = open_storage(archive)
    first = start.replace(minute=0, second=0, microsecond=0)
    hours = [h for h in list_hours(storage) if first <= h < end]
    paths = [storage.path(f.path) for f in committed_files(storage, hours)]
    found: list[InvalidEvent] = []
    engine = DuckDbEngine(threads=1)
    try:
        for chunk in engine.distinct_events(paths, storage.fs):
            found += _invalid(chunk, definitions, metric, start, end, merchant_id)
            if len(found) >= limit:
                break
    finally:
        engine.close()
    return found[:limit]


def _invalid(
    rows: pa.Table,
    definitions: Definitions,
    metric: Metric,
    start: datetime,
    end: datetime,
    merchant_id: str | None,
) -> Iterator[InvalidEvent]:
    in_range = pc.and_(
        pc.greater_equal(rows["event_time"], pa.scalar(start, rows["event_time"].type)),
        pc.less(rows["event_time"], pa.scalar(end, rows["event_time"].type)),
    )
    if merchant_id is not None:
        in_range = pc.and_(in_range, pc.equal(rows["merchant_id"], merchant_id))
    rows = rows.filter(in_range)
    if not rows.num_rows:
        return
    batch = BatchBuilder(definitions).from_archive(rows)
    mask = pc.and_(matches(batch, metric), unusable(batch, metric))
    batch, rows = batch.filter(mask), rows.filter(mask)
    fields = [(metric.time, "time")]
    if metric.value is not None:
        fields.append((metric.value, value_kind(metric)))
    flags = {
        path: batch[invalid_column(path, kind)].to_pylist()
        for path, kind in fields
        if invalid_column(path, kind) in batch.column_names
    }
    for i, row in enumerate(rows.select(
        ["event_id", "merchant_id", "event_time", "properties", "context"]
    ).to_pylist()):  # fmt: skip
        bad = [path for path, marks in flags.items() if marks[i]]
        yield InvalidEvent(fields=bad, **row)
