"""The rollup kernel: the only implementation of metric logic, for stream and batch alike.

:func:`rollup` turns a columnar batch of normalized events into **partials**: one row per
(merchant, metric, dimension, member, 15-minute UTC bucket) holding ``count``, ``sum``,
``min``, ``max``, a ``sketch`` and ``invalid``: the events the metric matched but could not
use, because the field it aggregates (or its own time field) held a value of the wrong kind
(:data:`~mercato.metrics.batch.VALUE_RULES`: money beyond ±2^53, ``"100"``, ``1.5``, …).
They are left out of the value and counted there, in the bucket of their time (or of their
event time when that was the unusable field), so nothing leaves a figure unseen. A metric
with dimensions gets a total row (``dimension = ""``, ``member = ""``) and one row per value
of each dimension (a missing value is the member ``"(none)"``). :func:`merge` combines
partials; it is associative and commutative, so any split, order or batching of the same
events merges to the same result (sketches: to the same estimate within DataSketches'
documented error).

Sketches are Apache DataSketches, serialized with a one-byte tag so a partial is
self-describing: ``H`` + an HLL sketch (``count_distinct``), ``K`` + a KLL sketch of floats
(``percentile``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasketches import hll_sketch, hll_union, kll_floats_sketch, tgt_hll_type

from mercato.metrics.batch import TOP_LEVEL, column, invalid_column
from mercato.metrics.definitions import Condition, Definitions, Metric

BUCKET_SECONDS = 900
TOTAL = ""
NONE_MEMBER = "(none)"
HLL_LG_K = 12  # 4096 buckets: about 1.6% relative standard error
KLL_K = 200  # about 1.3% rank error
KEY = ("merchant_id", "metric", "dimension", "member", "bucket")
# A sum beyond a signed 64-bit integer is never wrapped: it becomes OVERFLOW (a value no sum of
# in-range values can take, as every sum stays within ±(2^63 - 1)), and so does every sum it
# is part of. Readers show it as an overflow, never as a number.
OVERFLOW = -(2**63)
SUM_LIMIT = 2**63 - 1
_EXACT = pa.decimal128(38, 0)  # holds any sum of 2^64 int64 values exactly

PARTIAL_SCHEMA = pa.schema(
    [
        ("merchant_id", pa.string()),
        ("metric", pa.string()),
        ("dimension", pa.string()),
        ("member", pa.string()),
        ("bucket", pa.int64()),  # epoch seconds at which the 15-minute UTC bucket starts
        ("count", pa.int64()),
        ("sum", pa.int64()),
        ("min", pa.int64()),
        ("max", pa.int64()),
        ("sketch", pa.binary()),
        ("invalid", pa.int64()),  # matched events whose value the metric could not use
    ]
)


def empty_partials() -> pa.Table:
    return PARTIAL_SCHEMA.empty_table()


def rollup(batch: pa.Table, definitions: Definitions) -> pa.Table:
    """Partials of every stored metric over ``batch`` (see the module docs)."""
    parts = [_rollup_metric(batch, metric, definitions) for metric in definitions.stored]
    return pa.concat_tables([p for p in parts if p.num_rows] or [empty_partials()])


def value_kind(metric: Metric) -> str:
    """The batch column kind a metric's ``value`` is read as."""
    return {"count_distinct": "str", "percentile": "num"}.get(metric.kind, "int")


def unusable_columns(metric: Metric) -> list[str]:
    """The batch columns that flag an event's value (or time) as unusable for ``metric``."""
    fields = [(metric.time, "time")]
    if metric.value is not None:
        fields.append((metric.value, value_kind(metric)))
    return [invalid_column(path, kind) for path, kind in fields if path not in TOP_LEVEL]


def matches(batch: pa.Table, metric: Metric) -> pa.ChunkedArray:
    """Which events of ``batch`` the metric counts: its event types passing its filters."""
    mask = pc.is_in(batch["type"], value_set=pa.array(metric.events, pa.string()))
    for condition in metric.where:
        mask = pc.and_kleene(mask, _condition(batch, condition))
    return pc.fill_null(mask, False)


def unusable(batch: pa.Table, metric: Metric) -> pa.ChunkedArray:
    """Which events of ``batch`` hold a value (or time) the metric cannot use."""
    bad = pa.repeat(False, batch.num_rows)
    for flag in unusable_columns(metric):
        bad = pc.or_(bad, batch[flag])
    return bad


def invalid_events(batch: pa.Table, metric: Metric) -> pa.Table:
    """The events of ``batch`` that ``metric`` counts in its ``invalid`` column: matched, with
    a value (or time) it cannot use; ``event_id, merchant_id, event_time`` and, per field the
    metric reads, whether it was the unusable one."""
    rows = batch.filter(pc.and_(matches(batch, metric), unusable(batch, metric)))
    return rows.select(["event_id", "merchant_id", "event_time", *unusable_columns(metric)])


def _rollup_metric(batch: pa.Table, metric: Metric, definitions: Definitions) -> pa.Table:
    kind = value_kind(metric)
    flags = unusable_columns(metric)
    needed = {"merchant_id", "event_time", column(metric.time, "time"), *flags}
    needed.update(column(definitions.dimensions[name].field, "str") for name in metric.dimensions)
    if metric.value is not None:
        needed.add(column(metric.value, kind))
    # filter only the columns this metric reads: copying every column of the batch for every
    # metric was most of the kernel's time
    rows = batch.select(sorted(needed)).filter(matches(batch, metric))
    bad = unusable(rows, metric)
    keep = pc.and_(pc.is_valid(rows[column(metric.time, "time")]), pc.invert(bad))
    if metric.value is not None:
        keep = pc.and_(keep, pc.is_valid(rows[column(metric.value, kind)]))
    # an event is counted, or counted as invalid, or (a field it needs is absent) neither
    wanted = pc.or_(keep, bad)
    rows, keep, bad = rows.filter(wanted), keep.filter(wanted), bad.filter(wanted)
    if rows.num_rows == 0:
        return empty_partials()
    # an unusable time field is counted in the bucket of the event's own time
    time = pc.coalesce(rows[column(metric.time, "time")], rows["event_time"])
    value = None
    if metric.value is not None:
        value = pc.if_else(keep, rows[column(metric.value, kind)], None)
    micros = pc.cast(time, pa.int64())
    bucket = pc.multiply(pc.divide(micros, BUCKET_SECONDS * 1_000_000), BUCKET_SECONDS)
    groupings: list[tuple[str, pa.ChunkedArray | None]] = [(TOTAL, None)]
    for name in metric.dimensions:
        members = rows[column(definitions.dimensions[name].field, "str")]
        groupings.append((name, pc.fill_null(members, NONE_MEMBER)))
    tables = []
    for dimension, members in groupings:
        table = pa.table(
            {
                "merchant_id": rows["merchant_id"],
                "member": members if members is not None else pa.nulls(rows.num_rows, pa.string()),
                "bucket": bucket,
                "value": value if value is not None else pa.nulls(rows.num_rows, pa.int64()),
                "ok": pc.cast(keep, pa.int64()),
                "bad": pc.cast(bad, pa.int64()),
            }
        )
        tables.append(_aggregate(table, metric, dimension))
    return pa.concat_tables(tables)


def _aggregate(table: pa.Table, metric: Metric, dimension: str) -> pa.Table:
    keys = ["merchant_id", "member", "bucket"]
    sums = mins = maxs = sketches = None
    if metric.kind == "count_distinct":
        # an HLL takes each distinct value of its key once: no per-event updates
        grouped = table.group_by(keys, use_threads=False).aggregate(
            [("value", "count"), ("value", "distinct"), ("bad", "sum")]
        )
        sketches = _hlls(grouped["value_distinct"].combine_chunks())
        counts = grouped["value_count"]
    elif metric.kind == "percentile":
        # a KLL takes its key's values as one array
        grouped = table.group_by(keys, use_threads=False).aggregate(
            [("value", "count"), ("value", "list"), ("bad", "sum")]
        )
        sketches = _klls(grouped["value_list"].combine_chunks())
        counts = grouped["value_count"]
    elif metric.kind == "count":
        grouped = table.group_by(keys, use_threads=False).aggregate([("ok", "sum"), ("bad", "sum")])
        counts = grouped["ok_sum"]
    else:
        table = table.append_column("exact", pc.cast(table["value"], _EXACT))
        grouped = table.group_by(keys, use_threads=False).aggregate(
            [("value", "count"), ("exact", "sum"), ("value", "min"), ("value", "max"),
             ("bad", "sum")]
        )  # fmt: skip
        counts = grouped["value_count"]
        if metric.kind == "sum":
            sums = checked_sums(grouped["exact_sum"], None)
        elif metric.kind == "min":
            mins = grouped["value_min"]
        else:
            maxs = grouped["value_max"]
    rows = grouped.num_rows
    return pa.table(
        {
            "merchant_id": grouped["merchant_id"],
            "metric": pa.array([metric.name] * rows, pa.string()),
            "dimension": pa.array([dimension] * rows, pa.string()),
            "member": pc.fill_null(grouped["member"], TOTAL)
            if dimension == TOTAL
            else grouped["member"],
            "bucket": grouped["bucket"],
            "count": pc.cast(counts, pa.int64()),
            "sum": sums if sums is not None else pa.nulls(rows, pa.int64()),
            "min": mins if mins is not None else pa.nulls(rows, pa.int64()),
            "max": maxs if maxs is not None else pa.nulls(rows, pa.int64()),
            "sketch": sketches if sketches is not None else pa.nulls(rows, pa.binary()),
            "invalid": pc.cast(grouped["bad_sum"], pa.int64()),
        },
        schema=PARTIAL_SCHEMA,
    )


def _condition(batch: pa.Table, condition: Condition) -> pa.ChunkedArray:
    op, value = condition.op, condition.value
    text = column(condition.field, "str")
    if op == "exists":
        return pc.is_valid(batch[text])
    if op == "missing":
        return pc.is_null(batch[text])
    values = value if isinstance(value, list) else [value]
    numeric = any(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if numeric or op in ("gt", "gte", "lt", "lte"):
        field = batch[column(condition.field, "num")]
        numbers = [float(v) for v in values if isinstance(v, int | float)]
        if op in ("in", "not_in"):
            found = pc.is_in(field, value_set=pa.array(numbers, pa.float64()))
            return pc.invert(pc.fill_null(found, False)) if op == "not_in" else found
        compare = {"eq": pc.equal, "ne": pc.not_equal, "gt": pc.greater, "gte": pc.greater_equal,
                   "lt": pc.less, "lte": pc.less_equal}[op]  # fmt: skip
        result = compare(field, numbers[0])
        return pc.fill_null(result, True) if op == "ne" else result
    strings = [("true" if v else "false") if isinstance(v, bool) else str(v) for v in values]
    field = batch[text]
    if op in ("in", "not_in"):
        found = pc.is_in(field, value_set=pa.array(strings, pa.string()))
        return pc.invert(pc.fill_null(found, False)) if op == "not_in" else found
    if op == "ne":
        return pc.fill_null(pc.not_equal(field, strings[0]), True)
    return pc.equal(field, strings[0])


def _hlls(values: pa.ListArray) -> pa.Array:
    """Per list of distinct strings, its tagged HLL sketch (None where the list is empty)."""
    out: list[bytes | None] = []
    for items in values.to_pylist():
        present = [v for v in items if v is not None] if items else []
        out.append(hll_of(present) if present else None)
    return pa.array(out, pa.binary())


def _klls(values: pa.ListArray) -> pa.Array:
    """Per list of numbers, its tagged KLL sketch of their non-null values, fed as one
    float32 array (the sketch's own item type); None where there are none."""
    offsets = values.offsets.to_numpy()
    flat = values.values
    numbers = pc.fill_null(flat, float("nan")).to_numpy(zero_copy_only=False).astype(np.float32)
    out: list[bytes | None] = []
    for i in range(len(values)):
        items = numbers[offsets[i] : offsets[i + 1]]
        items = items[~np.isnan(items)]
        if items.size:
            sketch = kll_floats_sketch(KLL_K)
            sketch.update(items)
            out.append(b"K" + bytes(sketch.serialize()))
        else:
            out.append(None)
    return pa.array(out, pa.binary())


def hll_of(values: Iterable[str]) -> bytes:
    """A tagged HLL sketch of ``values`` (a count_distinct partial)."""
    sketch = hll_sketch(HLL_LG_K, tgt_hll_type.HLL_8)
    for value in values:
        sketch.update(value)
    return b"H" + bytes(sketch.serialize_compact())


def kll_of(values: Iterable[float]) -> bytes:
    """A tagged KLL sketch of ``values`` (a percentile partial)."""
    sketch = kll_floats_sketch(KLL_K)
    for value in values:
        sketch.update(value)
    return b"K" + bytes(sketch.serialize())


def merge_sketches(blobs: Sequence[bytes | None]) -> bytes | None:
    """One sketch holding everything the given sketches hold (all of one kind)."""
    present = [b for b in blobs if b is not None]
    if len(present) <= 1:
        return present[0] if present else None
    tag = present[0][:1]
    if tag == b"H":
        union = hll_union(HLL_LG_K)
        for blob in present:
            union.update(hll_sketch.deserialize(blob[1:]))
        return b"H" + bytes(union.get_result(tgt_hll_type.HLL_8).serialize_compact())
    merged = kll_floats_sketch.deserialize(present[0][1:])
    for blob in present[1:]:
        merged.merge(kll_floats_sketch.deserialize(blob[1:]))
    return b"K" + bytes(merged.serialize())


def sketch_estimate(blob: bytes) -> float:
    """The distinct count of an HLL sketch."""
    return float(hll_sketch.deserialize(blob[1:]).get_estimate())


def sketch_quantile(blob: bytes, rank: float) -> float:
    """The value at ``rank`` (0..1) of a KLL sketch."""
    return float(kll_floats_sketch.deserialize(blob[1:]).get_quantile(rank))


def merge(partials: Sequence[pa.Table]) -> pa.Table:
    """Combine partials: counts and sums add, minima and maxima take the extreme, sketches
    unite. Associative and commutative; the result has one row per key."""
    tables = [t for t in partials if t.num_rows]
    if not tables:
        return empty_partials()
    table = pa.concat_tables(tables)
    over = pc.fill_null(pc.equal(table["sum"], OVERFLOW), False)
    table = table.append_column("over", over).append_column(
        "exact", pc.cast(pc.if_else(over, None, table["sum"]), _EXACT)
    )
    grouped = table.group_by(list(KEY), use_threads=False).aggregate(
        [("count", "sum"), ("exact", "sum"), ("over", "any"), ("min", "min"), ("max", "max"),
         ("sketch", "list"), ("invalid", "sum")]
    )  # fmt: skip
    sketches = pa.array(
        [merge_sketches(blobs) for blobs in grouped["sketch_list"].to_pylist()], pa.binary()
    )
    return pa.table(
        {
            **{k: grouped[k] for k in KEY},
            "count": grouped["count_sum"],
            "sum": checked_sums(grouped["exact_sum"], grouped["over_any"]),
            "min": grouped["min_min"],
            "max": grouped["max_max"],
            "sketch": sketches,
            "invalid": grouped["invalid_sum"],
        },
        schema=PARTIAL_SCHEMA,
    )


def checked_sums(exact: pa.ChunkedArray, overflowed: pa.ChunkedArray | None) -> pa.Array:
    """Exact (decimal) sums as int64, OVERFLOW where beyond its range or ``overflowed``."""
    beyond = pc.greater(pc.abs(exact), pa.scalar(SUM_LIMIT, _EXACT))
    if overflowed is not None:
        beyond = pc.or_kleene(beyond, overflowed)
    beyond = pc.fill_null(beyond, False)
    fitting = pc.if_else(beyond, None, exact)
    return pc.if_else(beyond, OVERFLOW, pc.cast(fitting, pa.int64())).combine_chunks()


def add_sums(left: int | None, right: int | None) -> int | None:
    """Two sums added as the store and the kernel add them: None is nothing yet, OVERFLOW
    stays OVERFLOW, a total beyond int64 becomes OVERFLOW."""
    if left is None or right is None:
        return right if left is None else left
    if OVERFLOW in (left, right):
        return OVERFLOW
    total = left + right
    return total if -SUM_LIMIT <= total <= SUM_LIMIT else OVERFLOW


def sort_partials(partials: pa.Table) -> pa.Table:
    """Partials in key order (merchant first), as the store wants them written."""
    return partials.sort_by([(k, "ascending") for k in KEY])
