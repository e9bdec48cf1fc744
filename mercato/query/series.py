"""Metric time series for one merchant, from stored partials, in any time zone.

:class:`MerchantView` is the query side's only way to read rollups: it is bound to one
merchant when it is made (from an authenticated token), so no request can reach another
merchant's rows. :func:`timeseries` folds the 15-minute partials of a range into local
periods (see :mod:`mercato.metrics.periods`) with the same rules as the kernel's merge: counts
and sums add, extremes take the extreme, sketches unite; derived metrics are computed per
period from their parts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import msgspec

from mercato.metrics.definitions import Definitions, Metric
from mercato.metrics.kernel import (
    OVERFLOW,
    add_sums,
    merge_sketches,
    sketch_estimate,
    sketch_quantile,
)
from mercato.metrics.periods import assign
from mercato.store.base import RollupStore

Value = float | int | None
Row = tuple[Any, ...]
# positions of PARTIAL_SCHEMA's columns in a row
_METRIC, _DIMENSION, _MEMBER, _BUCKET, _COUNT, _SUM, _MIN, _MAX, _SKETCH, _INVALID = range(1, 11)


class MerchantView:
    """Reads of one merchant's rollups for one definitions version."""

    def __init__(
        self,
        store: RollupStore,
        version: int,
        merchant_id: str,
        sealed_through: int | None = None,
        definitions: Definitions | None = None,
    ) -> None:
        self._store = store
        self._version = version
        self.merchant_id = merchant_id
        self.sealed_through = sealed_through
        """Epoch seconds before which rows are final (the batch layer's), None: none are."""
        self._definitions = definitions

    @property
    def definitions(self) -> Definitions:
        """The definitions of the version this view reads."""
        if self._definitions is None:
            raise ValueError("this view was made without its definitions")
        return self._definitions

    def rows(
        self,
        metrics: Sequence[str],
        start: int,
        end: int,
        dimension: str = "",
        by_day: bool = False,
    ) -> list[Row]:
        """Partial rows as tuples in PARTIAL_SCHEMA order (see the ``_`` index constants).

        ``by_day``: the periods asked for are whole local days of the merchant's own zone
        (``start`` a local midnight there), so derived local-day rows may stand for their 96
        buckets (:meth:`~mercato.store.base.Store.read_rows_by_day`).
        """
        read = self._store.read_rows_by_day if by_day else self._store.read_rows
        return read(
            self._version, self.merchant_id, metrics, start, end, dimension, self.sealed_through
        )

    def members(self, metric: str, dimension: str, start: int, end: int) -> list[tuple[str, int]]:
        return self._store.members(
            self._version, self.merchant_id, metric, dimension, start, end, self.sealed_through
        )

    def is_final(self, end: int) -> bool:
        """Whether everything before ``end`` (epoch seconds) is final."""
        return self.sealed_through is not None and end <= self.sealed_through


class Series(msgspec.Struct):
    """One line of a chart: a value per period (``values`` per quantile for percentiles),
    and how many events the metric matched in the periods but could not use."""

    member: str | None
    values: list[Value] | list[dict[str, Value]]
    invalid: int = 0


class _Cell:
    __slots__ = ("count", "max", "min", "sketches", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum: int | None = None
        self.min: int | None = None
        self.max: int | None = None
        self.sketches: list[bytes] = []

    def add(self, row: Row) -> None:
        self.count += row[_COUNT]
        self.sum = add_sums(self.sum, row[_SUM])
        if (low := row[_MIN]) is not None:
            self.min = low if self.min is None else min(self.min, low)
        if (high := row[_MAX]) is not None:
            self.max = high if self.max is None else max(self.max, high)
        if (sketch := row[_SKETCH]) is not None:
            self.sketches.append(sketch)


def _value(metric: Metric, cell: _Cell | None) -> Value | dict[str, Value]:
    if metric.kind == "percentile":
        blob = merge_sketches(cell.sketches) if cell is not None else None
        return {
            f"p{round(q * 100, 2):g}": (sketch_quantile(blob, q) if blob is not None else None)
            for q in metric.quantiles
        }
    if cell is None:
        return 0 if metric.kind in ("count", "sum", "count_distinct") else None
    if metric.kind == "count":
        return cell.count
    if metric.kind == "sum":  # a sum beyond 64 bits is None: no number, never a wrapped one
        return None if cell.sum == OVERFLOW else cell.sum or 0
    if metric.kind == "min":
        return cell.min
    if metric.kind == "max":
        return cell.max
    blob = merge_sketches(cell.sketches)
    return round(sketch_estimate(blob)) if blob is not None else 0


def fold(rows: Sequence[Row], metric: Metric, bounds: Sequence[int]) -> dict[str | None, list[Any]]:
    """Per member (``None`` for totals), the metric's value in each period."""
    periods = len(bounds) - 1
    cells: dict[str | None, list[_Cell | None]] = defaultdict(lambda: [None] * periods)
    for row, index in zip(rows, assign([r[_BUCKET] for r in rows], bounds), strict=True):
        if index < 0 or row[_METRIC] != metric.name:
            continue
        member = row[_MEMBER] if row[_DIMENSION] else None
        line = cells[member]
        cell = line[index]
        if cell is None:
            cell = line[index] = _Cell()
        cell.add(row)
    return {member: [_value(metric, c) for c in line] for member, line in cells.items()}


def timeseries(
    view: MerchantView,
    definitions: Definitions,
    metric: Metric,
    bounds: Sequence[int],
    group_by: str | None = None,
    top: int = 5,
    by_day: bool = False,
) -> list[Series]:
    """The metric over the periods ``bounds``: the total, or its top members plus "other";
    ``by_day`` as in :meth:`MerchantView.rows`."""
    start, end = bounds[0], bounds[-1]
    periods = len(bounds) - 1
    if group_by is None:
        names = definitions.dependencies(metric)
        rows = view.rows(names, bounds[0], bounds[-1], "", by_day)
        values = _total_values(rows, definitions, metric, bounds)
        return [Series(None, values, invalid_count(rows, bounds).get(None, 0))]
    members = view.members(metric.name, group_by, start, end)
    chosen = [m for m, _ in members[:top]]
    rows = view.rows([metric.name], start, end, group_by, by_day)
    per_member = fold(rows, metric, bounds)
    invalid = invalid_count(rows, bounds)
    series = [
        Series(m, per_member.get(m, [_value(metric, None)] * periods), invalid.get(m, 0))
        for m in chosen
    ]
    rest = [r for r in rows if r[_MEMBER] not in chosen]
    if rest:
        totals = [(*r[:_DIMENSION], "", "", *r[_BUCKET:]) for r in rest]
        merged = fold(totals, metric, bounds)
        series.append(Series("other", merged[None], invalid_count(totals, bounds).get(None, 0)))
    return series


def invalid_count(rows: Sequence[Row], bounds: Sequence[int]) -> dict[str | None, int]:
    """Per member (``None`` for totals), the events in the periods that a metric matched
    but could not use."""
    counts: dict[str | None, int] = {}
    start, end = bounds[0], bounds[-1]
    for row in rows:
        if row[_INVALID] and start <= row[_BUCKET] < end:
            member = row[_MEMBER] if row[_DIMENSION] else None
            counts[member] = counts.get(member, 0) + row[_INVALID]
    return counts


def _total_values(
    rows: Sequence[Row], definitions: Definitions, metric: Metric, bounds: Sequence[int]
) -> list[Any]:
    periods = len(bounds) - 1
    names = definitions.dependencies(metric)
    if metric.stored:
        return fold(rows, metric, bounds).get(None, [_value(metric, None)] * periods)
    parts = {}
    for name in names:
        part = definitions.metrics[name]
        parts[name] = fold(rows, part, bounds).get(None, [_value(part, None)] * periods)
    return [
        _round(definitions.evaluate(metric, {n: parts[n][i] for n in names}))
        for i in range(periods)
    ]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
