"""Definitions versions over time: reprocess into a shadow version, diff, promote, roll back.

A version is a set of metric definitions (its id in the store; its content hash names it).
The query API serves exactly one, the **serving** version, read once per request, so an
answer never mixes versions. Changing a metric's logic goes:

1. ``reprocess``: seal the chosen hours from the archive with the new definitions into their
   own version (a *shadow*: stored beside the serving one, served by nobody);
2. ``diff``: per merchant, metric and day, the old and new final values;
3. ``promote``: complete the shadow (seal every complete hour it lacks), **replay the log**
   into its speed layer from a little before its seal watermark (so the hours not sealed yet
   are recomputed with the new definitions too), then swap the serving pointer in one store
   transaction. The running aggregator notices the swap and carries on with the new version
   from the offsets the replay stored; ``rollback`` does the same for the previous version.

Old versions are dropped by :func:`prune` once they have not served for the retention.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import msgspec

from mercato.aggregator.replay import REPLAY_MARGIN, catch_up
from mercato.archive.layout import Root
from mercato.batch.days import BatchLayerStore
from mercato.batch.drift import TotalsStore
from mercato.batch.engine import Engine
from mercato.batch.errors import VersionError
from mercato.batch.seal import SealReport, seal
from mercato.log.base import Log
from mercato.metrics.definitions import Definitions, Metric
from mercato.metrics.kernel import merge_sketches, sketch_estimate, sketch_quantile
from mercato.names import DROPPED, SEALED_THROUGH
from mercato.store.base import VersionStore, VersionTotal
from mercato.store.versions import definitions_of

logger = logging.getLogger("mercato.batch")

Progress = Callable[[int, int], None]


class PromoteReport(msgspec.Struct):
    version: int
    previous: int | None
    sealed: SealReport
    replayed_events: int
    replay_from: datetime | None


class DiffRow(msgspec.Struct, frozen=True):
    merchant_id: str
    metric: str
    day: str  # UTC date
    old: float | int | None
    new: float | int | None


def reprocess(
    store: BatchLayerStore,
    archive: Root,
    definitions: Definitions,
    engine: Engine,
    *,
    start: datetime | None,
    end: datetime | None,
    grace: timedelta,
    partitions: int | None = None,
    progress: Progress | None = None,
) -> SealReport:
    """Seal every complete hour in ``[start, end)`` with ``definitions`` into their version,
    recomputing hours sealed before (the serving version is not touched unless these are
    its definitions)."""
    return seal(
        store, archive, definitions, engine, grace=grace, start=start, end=end, force=True,
        partitions=partitions, progress=progress,
    )  # fmt: skip


def promote(
    store: BatchLayerStore,
    log: Log,
    archive: Root,
    version: int,
    engine: Engine,
    *,
    grace: timedelta,
    progress: Progress | None = None,
) -> PromoteReport:
    """Make ``version`` serve (see the module docs); a no-op switch if it already does."""
    definitions = definitions_of(store, version)
    sealed = seal(store, archive, definitions, engine, grace=grace, partitions=log.partitions,
                  progress=progress)  # fmt: skip
    through = store.watermark(SEALED_THROUGH, version)
    since = datetime.fromtimestamp(through, UTC) - REPLAY_MARGIN if through else None
    replayed = catch_up(log, store, definitions, since, progress=progress)
    previous = store.serving_version()
    store.set_serving_version(version)
    logger.info("version %d serves now (was %s)", version, previous)
    return PromoteReport(version, previous, sealed, replayed, since)


def rollback(
    store: BatchLayerStore,
    log: Log,
    archive: Root,
    engine: Engine,
    *,
    grace: timedelta,
    progress: Progress | None = None,
) -> PromoteReport:
    """Make the version that served before the last switch serve again."""
    history = store.serving_history(limit=1)
    if not history or history[0].previous is None:
        raise VersionError("nothing to roll back to: no version served before this one")
    return promote(store, log, archive, history[0].previous, engine, grace=grace,
                   progress=progress)  # fmt: skip


def diff(
    store: TotalsStore, old: int, new: int, start: datetime, end: datetime
) -> Iterator[DiffRow]:
    """Per merchant, metric and UTC day in ``[start, end)``, the final values of ``old`` and
    ``new`` where they differ (a metric only one version has differs everywhere it has a
    value)."""
    first, last = int(start.timestamp()), int(end.timestamp())
    sides = []
    for version in (old, new):
        definitions = definitions_of(store, version)
        sides.append(_values(definitions, store.layer_totals(version, first, last)))
    before, after = sides
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        if a != b:
            merchant, metric, day = key
            yield DiffRow(merchant, metric, datetime.fromtimestamp(day, UTC).date().isoformat(),
                          a, b)  # fmt: skip


def prune(store: VersionStore, retention: timedelta, now: datetime | None = None) -> list[int]:
    """Drop versions that have not served for ``retention`` (never the serving one, nor the
    one a rollback would return to); return their ids."""
    now = now or datetime.now(UTC)
    serving_now = store.serving_version()
    history = store.serving_history(limit=1_000)
    keep = {serving_now}
    if history:
        keep.add(history[0].previous)
    last_served: dict[int, datetime] = {}
    for change in history:  # newest first: the first switch away from a version is the last
        if change.previous is not None:
            last_served.setdefault(change.previous, change.changed_at)
    dropped = []
    for known in store.versions():
        if known.id in keep or known.state == DROPPED:
            continue
        since = max(known.created_at, last_served.get(known.id, known.created_at))
        if now - since >= retention:
            store.drop_version(known.id)
            dropped.append(known.id)
    return dropped


def _values(
    definitions: Definitions, totals: Iterator[VersionTotal]
) -> dict[tuple[str, str, int], float | int | None]:
    values: dict[tuple[str, str, int], float | int | None] = {}
    for t in totals:
        metric = definitions.metrics.get(t.metric)
        if metric is not None:
            values[(t.merchant_id, t.metric, t.period)] = _value(metric, t)
    for metric in definitions.metrics.values():
        if metric.stored:
            continue
        names = definitions.dependencies(metric)
        cells = {(m, d) for (m, name, d) in values if name in names}
        for merchant, day in cells:
            parts = {n: values.get((merchant, n, day)) for n in names}
            numbers = {n: float(v) if v is not None else 0.0 for n, v in parts.items()}
            value = definitions.evaluate(metric, numbers)
            values[(merchant, metric.name, day)] = None if value is None else round(value, 4)
    return values


def _value(metric: Metric, total: VersionTotal) -> float | int | None:
    if metric.kind == "count":
        return total.count
    if metric.kind == "sum":
        return total.sum
    if metric.kind == "min":
        return total.min
    if metric.kind == "max":
        return total.max
    blob = merge_sketches(total.sketches)
    if blob is None:
        return None
    if metric.kind == "count_distinct":
        return round(sketch_estimate(blob))
    return sketch_quantile(blob, 0.5)  # percentiles: the median stands for the distribution
