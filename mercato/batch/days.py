"""Local days: each merchant's final partials merged per day of its own time zone.

A 90-day daily chart from 15-minute rows reads 8,640 rows per series; from day rows, 90.
After a seal, every merchant with final rows in the sealed hours gets the local days those
hours touch derived again — but only days that are complete (their local midnight-to-midnight
span is before ``sealed_through``): merge the day's final rows of every stored metric and
dimension with the kernel's :func:`~mercato.metrics.kernel.merge`, the day's local midnight in
the bucket column. Local midnights fall on 15-minute UTC boundaries in every IANA zone (see
:mod:`mercato.metrics.periods`), so a day is an exact union of buckets. The merchant's
``days_through`` watermark says up to where its days are derived; a merchant whose zone
changed (watermark 0) has every day derived again.

The watermark only ever moves to X once every local day of the merchant before X is derived
from the current final rows: a merchant's days are derived from its watermark (with none
yet, from its first final row) up to the last day a seal touched, never just the touched
ones. A version's first ``sealed_through`` (a promote after a range reprocess, which seals
hours without one) derives every merchant's days.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

import pyarrow as pa

from mercato.metrics.definitions import Definitions
from mercato.metrics.kernel import TOTAL, empty_partials, merge
from mercato.metrics.periods import local_midnight
from mercato.names import days_watermark
from mercato.store.base import BatchStore, DayStore, RollupStore, VersionStore

HOUR = 3600


class BatchLayerStore(RollupStore, VersionStore, BatchStore, DayStore, Protocol):
    """What the batch layer's jobs need of the store (sealing hours, deriving local days
    from them, promoting a version): every concern but the scheduler's."""


def derive_days(
    store: BatchLayerStore,
    version: int,
    definitions: Definitions,
    hours: Iterable[int],
    sealed_through: int,
    previous_through: int | None = None,
) -> int:
    """Derive local days after a seal; return the days written.

    Days are derived for: every merchant with final rows in the sealed ``hours`` (the days
    those hours touch, and every day between its ``days_through`` watermark and them); when
    the watermark moved from ``previous_through``, every merchant with final rows in the 26
    hours before it (their days may have just become complete, even with no events in the
    hours sealed now); every merchant whose zone changed; and, when the version had no
    watermark before (``previous_through`` None), every merchant with final rows.
    """
    touched: dict[str, set[int]] = {}
    for hour in sorted(set(hours)):
        for merchant in store.final_merchants(version, hour, hour + HOUR):
            touched.setdefault(merchant, set()).add(hour)
    if previous_through is None:  # final rows a range reprocess sealed have no days yet
        for merchant in store.final_merchants(version, 0, sealed_through):
            touched[merchant] = set()
    elif sealed_through > previous_through:
        low = previous_through - 26 * HOUR  # a local day is at most 25 hours long
        window = set(range(low - low % HOUR, sealed_through, HOUR))
        for merchant in store.final_merchants(version, low, sealed_through):
            touched.setdefault(merchant, set()).update(window)
    for merchant in store.days_to_rederive(version):
        touched[merchant] = set()  # every day, from the beginning
    written = 0
    for merchant, merchant_hours in sorted(touched.items()):
        written += _derive_merchant(store, version, definitions, merchant,
                                    sorted(merchant_hours), sealed_through)  # fmt: skip
    return written


def _derive_merchant(
    store: BatchLayerStore,
    version: int,
    definitions: Definitions,
    merchant: str,
    hours: list[int],
    sealed_through: int,
) -> int:
    zone = ZoneInfo(store.merchant_timezone(merchant) or "UTC")
    names = [m.name for m in definitions.stored]
    dimensions = sorted({d for m in definitions.stored for d in m.dimensions})
    current = store.watermark(days_watermark(merchant), version) or 0
    if not hours or not current:  # every day: from the merchant's first final row
        first = store.read(version, merchant, names, 0, sealed_through, TOTAL, sealed_through)
        if first.num_rows == 0:  # no day before the one sealed_through is in holds anything
            through = int(local_midnight(_local_date(sealed_through, zone), zone).timestamp())
            store.replace_days(version, merchant, 0, 0, empty_partials(), max(current, through))
            return 0
        start_day = _local_date(min(first["bucket"].to_pylist()), zone)
        end_day = _local_date(sealed_through - 1, zone)
    else:
        touched = sorted({_local_date(t, zone) for h in hours for t in (h, h + HOUR - 1)})
        # from the watermark's day if it is behind (days before it are derived, none after
        # it may be skipped) to the last day touched: the rows are read as one range
        start_day, end_day = min(touched[0], _local_date(current, zone)), touched[-1]
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


def _local_date(epoch: int, zone: ZoneInfo) -> date:
    return datetime.fromtimestamp(epoch, UTC).astimezone(zone).date()
