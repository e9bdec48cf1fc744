"""Local days: each merchant's final partials merged per day of its own time zone.

A 90-day daily chart from 15-minute rows reads 8,640 rows per series; from day rows, 90.
A day is derived once it is complete (its local midnight-to-midnight span is before
``sealed_through``): the day's final rows of every stored metric and dimension merged with the
kernel's :func:`~mercato.metrics.kernel.merge`, the day's local midnight in the bucket column.
Local midnights fall on 15-minute UTC boundaries in every IANA zone (see
:mod:`mercato.metrics.periods`), so a day is an exact union of buckets. The merchant's
``days_through`` watermark says up to where its days are derived; a merchant whose zone
changed (watermark 0) has every day derived again.

After a seal, days are derived where something changed, and nowhere else:

* the merchants whose final rows the seal replaced (rows in a sealed hour before or after it,
  so a merchant whose rows a re-seal removed too): the complete days those hours touch. Where
  the merchant's days were derived already, the store records the change in the seal's
  transaction (:meth:`~mercato.store.base.DayStore.stale_days`) until the days are replaced,
  so a seal that stopped half way leaves them to the next one;
* when ``sealed_through`` passed local midnights of a zone, the merchants of that zone with
  final rows in the days that just completed. How far this is done is the version's
  :data:`~mercato.names.DAYS_DERIVED_THROUGH` watermark, moved only once they are derived
  (for the same reason); a version's first derivation (a
  seal's first ``sealed_through``, a promote after a range reprocess) starts from 0, every
  complete day of every merchant.

The watermark only ever moves to X once every local day of the merchant before X is derived
from the current final rows: a merchant's days are derived from its watermark (with none
yet, from its first final row) up to the last day that changed, never just the changed ones.
A merchant whose hours held no change costs nothing, not even a read.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

import pyarrow as pa

from mercato.metrics.definitions import Definitions
from mercato.metrics.kernel import TOTAL, empty_partials, merge
from mercato.metrics.periods import local_midnight
from mercato.names import DAYS_DERIVED_THROUGH, days_watermark
from mercato.store.base import BatchStore, DayStore, RollupStore, VersionStore

HOUR = 3600
UTC_ZONE = "UTC"  # the zone of a merchant that has none


class BatchLayerStore(RollupStore, VersionStore, BatchStore, DayStore, Protocol):
    """What the batch layer's jobs need of the store (sealing hours, deriving local days
    from them, promoting a version): every concern but the scheduler's."""


@dataclass(slots=True)
class Span:
    """The epochs whose local days may have changed for one merchant: from ``first`` (None:
    from its first final row) to ``last``."""

    first: int | None
    last: int

    def widen(self, first: int | None, last: int) -> None:
        self.first = None if first is None or self.first is None else min(self.first, first)
        self.last = max(self.last, last)


def derive_days(
    store: BatchLayerStore,
    version: int,
    definitions: Definitions,
    changed: Mapping[str, Iterable[int]],
    sealed_through: int,
    previous_through: int | None = None,
) -> int:
    """Derive the local days a seal changed or completed (see the module docs); return the
    days written.

    ``changed``: the merchants whose final rows the seal replaced, each with the hours (epoch
    seconds at which they start) it replaced them in. ``previous_through``: the
    ``sealed_through`` before the seal, where days that completed are looked for from if the
    version has no :data:`~mercato.names.DAYS_DERIVED_THROUGH` (a store whose days an older
    Mercato derived); with neither, every complete day is.
    """
    spans: dict[str, Span] = {}
    for merchant, hours in changed.items():
        touched = sorted(hours)
        if touched:
            spans[merchant] = Span(touched[0], touched[-1] + HOUR - 1)
    # the changes a seal that stopped before deriving them left (this one's are there too)
    for merchant, hour in store.stale_days(version).items():
        if merchant in spans:
            spans[merchant].widen(hour, hour + HOUR - 1)
        else:
            spans[merchant] = Span(hour, hour + HOUR - 1)
    zones = store.merchant_timezones(sorted(spans))
    # a changed hour matters now if a day it touches is complete: it is before the zone's
    # last midnight at or before sealed_through (else that day completes at a later seal)
    last_midnight: dict[str, int] = {}
    for merchant, span in list(spans.items()):
        zone = zones.get(merchant, UTC_ZONE)
        if zone not in last_midnight:
            last_midnight[zone] = _last_midnight(sealed_through, ZoneInfo(zone))
        if span.first is not None and span.first >= last_midnight[zone]:
            del spans[merchant]
    mark = store.watermark(DAYS_DERIVED_THROUGH, version)
    since = (previous_through or 0) if mark is None else mark
    if sealed_through > since:  # days that completed since: every merchant with rows in them
        completed = _completed_days(store.timezones_in_use(), since, sealed_through)
        if completed:  # one read across the zones (whose windows differ by hours at most)
            low = min(begin for begin, _ in completed.values())
            high = max(end for _, end in completed.values())
            found = store.final_merchants(version, low, high, sorted(completed))
            zones.update(store.merchant_timezones([m for m in found if m not in spans]))
            for merchant in found:
                window = completed.get(zones.get(merchant, UTC_ZONE))
                if window is None:  # its zone changed since: days_to_rederive has it
                    continue
                first = None if since == 0 else window[0]  # a first derivation: every day
                if merchant in spans:
                    spans[merchant].widen(first, window[1] - 1)
                else:
                    spans[merchant] = Span(first, window[1] - 1)
    for merchant in store.days_to_rederive(version):
        spans[merchant] = Span(None, sealed_through - 1)  # every day, from the beginning
        zones[merchant] = store.merchant_timezone(merchant) or UTC_ZONE
    written = 0
    for merchant, span in sorted(spans.items()):
        tz = ZoneInfo(zones.get(merchant, UTC_ZONE))
        written += _derive_merchant(store, version, definitions, merchant, tz, span,
                                    sealed_through)  # fmt: skip
    if sealed_through > since:
        store.set_watermark(DAYS_DERIVED_THROUGH, version, sealed_through)
    return written


def _derive_merchant(
    store: BatchLayerStore,
    version: int,
    definitions: Definitions,
    merchant: str,
    zone: ZoneInfo,
    span: Span,
    sealed_through: int,
) -> int:
    names = [m.name for m in definitions.stored]
    dimensions = sorted({d for m in definitions.stored for d in m.dimensions})
    current = store.watermark(days_watermark(merchant), version) or 0
    if span.first is None or not current:  # every day: from the merchant's first final row
        first = store.read(version, merchant, names, 0, sealed_through, TOTAL, sealed_through)
        if first.num_rows == 0:  # no day before the one sealed_through is in holds anything
            through = _last_midnight(sealed_through, zone)
            store.replace_days(
                version, merchant, 0, through, empty_partials(), max(current, through)
            )
            return 0
        start_day = _local_date(min(first["bucket"].to_pylist()), zone)
        end_day = _local_date(sealed_through - 1, zone)
    else:
        # from the watermark's day if it is behind (days before it are derived, none after
        # it may be skipped) to the last day changed: the rows are read as one range
        start_day = min(_local_date(span.first, zone), _local_date(current, zone))
        end_day = _local_date(span.last, zone)
    days = [start_day + timedelta(days=i) for i in range((end_day - start_day).days + 1)]
    starts = [int(local_midnight(d, zone).timestamp()) for d in days]
    ends = [int(local_midnight(d + timedelta(days=1), zone).timestamp()) for d in days]
    complete = [i for i, end in enumerate(ends) if end <= sealed_through]
    if not complete:
        return 0
    starts = starts[: complete[-1] + 1]  # complete days are a prefix: time runs forward
    start, end = starts[0], ends[complete[-1]]
    rows = pa.concat_tables(
        [
            store.read(version, merchant, names, start, end, dimension, end)
            for dimension in [TOTAL, *dimensions]
        ]
    )
    day_of = [starts[bisect.bisect_right(starts, b) - 1] for b in rows["bucket"].to_pylist()]
    rows = rows.set_column(
        rows.schema.get_field_index("bucket"), "bucket", pa.array(day_of, pa.int64())
    )
    merged = merge([rows]) if rows.num_rows else empty_partials()
    store.replace_days(version, merchant, start, end, merged, max(current, end))
    return len(starts)


def _completed_days(in_use: Iterable[str], since: int, until: int) -> dict[str, tuple[int, int]]:
    """Per zone (UTC and ``in_use``) where a local midnight is in ``(since, until]``: the span
    of the days that ended there, ``[begin, end)``."""
    completed = {}
    for zone in {UTC_ZONE, *in_use}:
        tz = ZoneInfo(zone)
        end = _last_midnight(until, tz)
        if end > since:
            completed[zone] = (_last_midnight(since, tz) if since else 0, end)
    return completed


def _local_date(epoch: int, zone: ZoneInfo) -> date:
    return datetime.fromtimestamp(epoch, UTC).astimezone(zone).date()


def _last_midnight(epoch: int, zone: ZoneInfo) -> int:
    """The last local midnight of ``zone`` at or before ``epoch``: the days before it are
    complete when ``epoch`` is ``sealed_through``."""
    return int(local_midnight(_local_date(epoch, zone), zone).timestamp())
