"""Sealing: every complete hour of the archive recomputed exactly and stored as final.

An hour is **complete** once the archiver's watermark (see :mod:`mercato.archive.layout`) is
at least ``grace`` past its end: every event received up to then is in the archive. A seal
recomputes each complete hour with the batch engine (exact de-duplication by event id across
the hour, the same rollup kernel as the stream) and replaces the hour's final rows in one
store transaction, recording the hour's **fingerprint**: per partition, the first and last
log offsets its archive files cover (compaction does not change them). An hour whose
fingerprint changed since its seal — late events landed in it — is *dirty* and sealed again;
an unchanged one is skipped, so a seal is idempotent and cheap to run every few minutes.

Afterwards the ``sealed_through`` watermark of the version moves to the end of the last
complete hour: the query API serves final rows before it and speed rows after it, and
reports it as ``complete_through``. Then each merchant's local days that the seal touched or
completed are derived (:mod:`mercato.batch.days`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import msgspec

from mercato.archive.layout import (
    ArchiveFile,
    Root,
    committed_files,
    list_hours,
    open_storage,
    read_state,
)
from mercato.batch.days import BatchLayerStore, derive_days
from mercato.batch.engine import Engine
from mercato.metrics.definitions import Definitions
from mercato.names import DAYS_DERIVED_THROUGH, SEALED_THROUGH

logger = logging.getLogger("mercato.batch")

HOUR = 3600


class HourSeal(msgspec.Struct, frozen=True):
    hour: datetime
    events: int
    rows: int
    partials: int
    seconds: float
    resealed: bool  # the hour had been sealed before (late events made it dirty)


class SealReport(msgspec.Struct):
    version: int
    complete_before: datetime | None  # hours ending at or before this are complete
    sealed: list[HourSeal] = msgspec.field(default_factory=list)
    unchanged: int = 0  # complete hours whose archive content had not changed
    sealed_through: datetime | None = None
    days: int = 0  # merchants' local days derived (see mercato.batch.days)


def fingerprint(files: Iterable[ArchiveFile]) -> str:
    """The hour's archive content: per partition, the first and last log offset its files
    cover. Compaction keeps both (it merges files into one named by their outer range, gaps
    included); new events in the hour come in a file past every committed offset, which
    moves the last one."""
    ranges: dict[int, tuple[int, int]] = {}
    for f in files:
        low, high = ranges.get(f.partition, (f.first, f.last))
        ranges[f.partition] = (min(low, f.first), max(high, f.last))
    text = ";".join(f"{p}:{a}-{b}" for p, (a, b) in sorted(ranges.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def seal(
    store: BatchLayerStore,
    archive: Root,
    definitions: Definitions,
    engine: Engine,
    *,
    grace: timedelta = timedelta(minutes=10),
    start: datetime | None = None,
    end: datetime | None = None,
    force: bool = False,
    partitions: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SealReport:
    """Seal the complete hours of ``archive`` in ``[start, end)`` (default: all) for the
    definitions' version; ``force`` recomputes unchanged hours too (see the module docs);
    ``partitions``: the log's partition count (a partition the archiver never committed then
    holds every hour back)."""
    version = store.register_version(definitions.version, definitions.text)
    storage = open_storage(archive)
    # every log partition must hold the watermark back, archived yet or not
    watermark = read_state(storage).watermark(range(partitions) if partitions else None)
    report = SealReport(version, None if watermark is None else watermark - grace)
    if report.complete_before is None:
        logger.info("nothing to seal: the archiver has not committed every partition yet")
        return report
    limit = report.complete_before
    sealed = store.sealed_hours(version)
    hours = [
        h
        for h in list_hours(storage)
        if h + timedelta(hours=1) <= limit
        and (start is None or h >= start)
        and (end is None or h < end)
    ]
    changed: dict[str, list[int]] = {}  # merchants whose final rows changed: in which hours
    for i, hour in enumerate(hours):
        files = committed_files(storage, [hour])
        mark = fingerprint(files)
        epoch = int(hour.timestamp())
        previous = sealed.get(epoch)
        if previous is not None and previous.fingerprint == mark and not force:
            report.unchanged += 1
        else:
            began = time.perf_counter()
            paths = [storage.path(f.path) for f in files]
            result = engine.rollup(paths, definitions, storage.fs)
            replaced = store.write_sealed_hour(version, epoch, result.partials, mark, result.events)
            for merchant in replaced:
                changed.setdefault(merchant, []).append(epoch)
            done = HourSeal(
                hour,
                result.events,
                result.rows,
                result.partials.num_rows,
                round(time.perf_counter() - began, 3),
                previous is not None,
            )
            report.sealed.append(done)
            logger.info(
                "sealed %s: %d events (%d rows), %d partials in %.2f s%s",
                f"{hour:%Y-%m-%dT%H}",
                done.events,
                done.rows,
                done.partials,
                done.seconds,
                " (dirty: late events)" if done.resealed else "",
            )
        if progress is not None:
            progress(i + 1, len(hours))
    through = limit.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    current = store.watermark(SEALED_THROUGH, version)
    if start is None and end is None and (current is None or int(through.timestamp()) > current):
        if current is None:  # every complete day to derive, even if this seal stops half way
            store.set_watermark(DAYS_DERIVED_THROUGH, version, 0)
        store.set_watermark(SEALED_THROUGH, version, int(through.timestamp()))
    value = store.watermark(SEALED_THROUGH, version)
    report.sealed_through = None if value is None else datetime.fromtimestamp(value, UTC)
    if value is not None:
        report.days = derive_days(store, version, definitions, changed, value, current)
    return report
