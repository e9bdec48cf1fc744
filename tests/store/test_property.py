"""Writes merge like the kernel: any split and order of partials stores kernel.merge of all."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercato.metrics.kernel import merge, sketch_estimate, sort_partials
from mercato.store.base import Store

from .conftest import BACKENDS, EVERYTHING, emptied, hll, make_store, partials, row

MERCHANTS = ["a", "b", "ä"]
METRICS = ["orders", "revenue"]
SERIES = [("", ""), ("channel", "web"), ("channel", "pos")]
BUCKETS = [-900, 0, 900, 86_400]
VISITORS = [f"visitor-{i}" for i in range(40)]

maybe_int = st.none() | st.integers(min_value=-(10**12), max_value=10**12)
rows = st.builds(
    lambda merchant, metric, series, bucket, count, total, low, high, sketch: row(
        merchant, metric, series[0], series[1], bucket, count, total, low, high, sketch
    ),
    st.sampled_from(MERCHANTS),
    st.sampled_from(METRICS),
    st.sampled_from(SERIES),
    st.sampled_from(BUCKETS),
    st.none() | st.integers(min_value=0, max_value=10**9),
    maybe_int,
    maybe_int,
    maybe_int,
    st.none() | st.frozensets(st.sampled_from(VISITORS), min_size=1, max_size=8).map(hll),
)
tables = st.lists(st.lists(rows, max_size=6).map(lambda r: partials(*r)), min_size=1, max_size=6)


def comparable(table: pa.Table) -> list[dict[str, Any]]:
    """Rows in key order, a sketch replaced by its estimate (a union's bytes may depend on
    the order it was built in; what it counts may not)."""
    return [
        {**r, "sketch": None if r["sketch"] is None else round(sketch_estimate(r["sketch"]), 6)}
        for r in sort_partials(table).to_pylist()
    ]


def stored(store: Store, version: int) -> pa.Table:
    """Everything in the store, read one merchant at a time (there is no other way)."""
    parts = [
        store.read(version, merchant, METRICS, *EVERYTHING, dimension)
        for merchant in MERCHANTS
        for dimension in {d for d, _ in SERIES}
    ]
    return pa.concat_tables(parts)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(batches=tables, data=st.data())
def test_any_split_and_order_stores_the_merge_of_all(
    backend: str, batches: list[pa.Table], data: st.DataObject, request: pytest.FixtureRequest
) -> None:
    order = data.draw(st.permutations(range(len(batches))), label="order")
    cuts = data.draw(st.lists(st.booleans(), min_size=len(batches), max_size=len(batches)))
    writes: list[list[pa.Table]] = [[]]
    for i, cut in zip(order, cuts, strict=True):
        if cut and writes[-1]:
            writes.append([])
        writes[-1].append(batches[i])

    expected = comparable(merge(batches))
    with places(backend, request) as (pieces_dir, once_dir):
        with make_store(backend, pieces_dir) as pieces:
            v = pieces.register_version("h", "t")
            for n, group in enumerate(writes):
                # Concatenated, not merged: a key may occur several times in one write.
                pieces.write(v, "agg", pa.concat_tables(group), {0: n})
            assert comparable(stored(pieces, v)) == expected
            assert pieces.offsets("agg") == {0: len(writes) - 1}
        with make_store(backend, once_dir) as once:
            v = once.register_version("h", "t")
            once.write(v, "agg", merge(batches), {0: 1})
            assert comparable(stored(once, v)) == expected


@contextmanager
def places(backend: str, request: pytest.FixtureRequest) -> Iterator[tuple[Path | str, ...]]:
    """Two empty places for stores of ``backend``: directories, or PostgreSQL databases."""
    if backend == "postgres":
        first, second = request.getfixturevalue("postgres_scratch")
        yield emptied(first), emptied(second)
        return
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        yield Path(first), Path(second)
