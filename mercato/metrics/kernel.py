"""The rollup kernel: the only implementation of metric logic, for stream and batch alike.

:func:`rollup` turns a columnar batch of normalized events into **partials**: one row per
(merchant, metric, dimension, member, 15-minute UTC bucket) holding ``count``, ``sum``,
``min``, ``max`` and a ``sketch``. A metric with dimensions gets a total row
(``dimension = ""``, ``member = ""``) and one row per value of each dimension (a missing
value is the member ``"(none)"``). :func:`merge` combines partials; it is associative and
commutative, so any split, order or batching of the same events merges to the same result
(sketches: to the same estimate within DataSketches' documented error).

Sketches are Apache DataSketches, serialized with a one-byte tag so a partial is
self-describing: ``H`` + an HLL sketch (``count_distinct``), ``K`` + a KLL sketch of floats
(``percentile``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from datasketches import hll_sketch, hll_union, kll_floats_sketch, tgt_hll_type

from mercato.metrics.batch import column
from mercato.metrics.definitions import Condition, Definitions, Metric

BUCKET_SECONDS = 900
TOTAL = ""
NONE_MEMBER = "(none)"
HLL_LG_K = 12  # 4096 buckets: about 1.6% relative standard error
KLL_K = 200  # about 1.3% rank error
KEY = ("merchant_id", "metric", "dimension", "member", "bucket")

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
    ]
)


def empty_partials() -> pa.Table:
    return PARTIAL_SCHEMA.empty_table()


def rollup(batch: pa.Table, definitions: Definitions) -> pa.Table:
    """Partials of every stored metric over ``batch`` (see the module docs)."""
    parts = [_rollup_metric(batch, metric, definitions) for metric in definitions.stored]
    return pa.concat_tables([p for p in parts if p.num_rows] or [empty_partials()])


def _rollup_metric(batch: pa.Table, metric: Metric, definitions: Definitions) -> pa.Table:
    mask = pc.is_in(batch["type"], value_set=pa.array(metric.events, pa.string()))
    for condition in metric.where:
        mask = pc.and_kleene(mask, _condition(batch, condition))
    kind = {"count_distinct": "str", "percentile": "num"}.get(metric.kind, "int")
    needed = {"merchant_id", column(metric.time, "time")}
    needed.update(column(definitions.dimensions[name].field, "str") for name in metric.dimensions)
    if metric.value is not None:
        needed.add(column(metric.value, kind))
    # filter only the columns this metric reads: copying every column of the batch for every
    # metric was most of the kernel's time
    rows = batch.select(sorted(needed)).filter(pc.fill_null(mask, False))
    time = rows[column(metric.time, "time")]
    if metric.value is not None:
        value = rows[column(metric.value, kind)]
        keep = pc.and_(pc.is_valid(time), pc.is_valid(value))
    else:
        value = None
        keep = pc.is_valid(time)
    rows, time = rows.filter(keep), time.filter(keep)
    if value is not None:
        value = value.filter(keep)
    if rows.num_rows == 0:
        return empty_partials()
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
            }
        )
        tables.append(_aggregate(table, metric, dimension))
    return pa.concat_tables(tables)


def _aggregate(table: pa.Table, metric: Metric, dimension: str) -> pa.Table:
    keys = ["merchant_id", "member", "bucket"]
    if metric.kind in ("count_distinct", "percentile"):
        grouped = table.group_by(keys, use_threads=False).aggregate(
            [("value", "count"), ("value", "list")]
        )
        build = hll_of if metric.kind == "count_distinct" else kll_of
        sketches = pa.array(
            [build(values) for values in grouped["value_list"].to_pylist()], pa.binary()
        )
        counts, sums, mins, maxs = grouped["value_count"], None, None, None
    elif metric.kind == "count":
        grouped = table.group_by(keys, use_threads=False).aggregate([("bucket", "count")])
        counts, sums, mins, maxs, sketches = grouped["bucket_count"], None, None, None, None
    else:
        grouped = table.group_by(keys, use_threads=False).aggregate(
            [("value", "count"), ("value", "sum"), ("value", "min"), ("value", "max")]
        )
        counts = grouped["value_count"]
        sums, mins, maxs = grouped["value_sum"], grouped["value_min"], grouped["value_max"]
        sketches = None
        if metric.kind != "sum":
            sums = None
        if metric.kind != "min":
            mins = None
        if metric.kind != "max":
            maxs = None
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
    grouped = table.group_by(list(KEY), use_threads=False).aggregate(
        [("count", "sum"), ("sum", "sum"), ("min", "min"), ("max", "max"), ("sketch", "list")]
    )
    sketches = pa.array(
        [merge_sketches(blobs) for blobs in grouped["sketch_list"].to_pylist()], pa.binary()
    )
    return pa.table(
        {
            **{k: grouped[k] for k in KEY},
            "count": grouped["count_sum"],
            "sum": grouped["sum_sum"],
            "min": grouped["min_min"],
            "max": grouped["max_max"],
            "sketch": sketches,
        },
        schema=PARTIAL_SCHEMA,
    )


def sort_partials(partials: pa.Table) -> pa.Table:
    """Partials in key order (merchant first), as the store wants them written."""
    return partials.sort_by([(k, "ascending") for k in KEY])
