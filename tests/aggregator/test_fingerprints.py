"""The vectorized XXH64 against the reference binding, for every string shape it is given."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from mercato.aggregator.fingerprints import CHUNK, event_fingerprints, xxh64

SEEDS = st.integers(min_value=0, max_value=2**64 - 1)


def reference(values: list[str], seeds: list[int]) -> list[int]:
    return [xxhash.xxh64_intdigest(v.encode(), seed=s) for v, s in zip(values, seeds, strict=True)]


def test_known_answers():
    # the published XXH64 test values
    assert xxh64(["", "a", "abc"]).tolist() == [
        0xEF46DB3751D8E999,
        0xD24EC4F1A98C6E5B,
        0x44BC2CF5AD770999,
    ]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=80), SEEDS), max_size=40))
def test_equals_the_reference_for_any_strings_and_seeds(rows):
    values = [v for v, _ in rows]
    seeds = [s for _, s in rows]
    assert xxh64(values, np.array(seeds, dtype=np.uint64)).tolist() == reference(values, seeds)


def test_every_length_and_branch():
    # 0..200 bytes covers every mix of 32-byte stripes, 8-byte words, a 4-byte word and
    # single bytes; one batch holds them all, so rows take different branches side by side
    values = ["é" * (n // 2) + "x" * (n % 2) for n in range(201)]
    seeds = list(range(201))
    assert xxh64(values, np.arange(201, dtype=np.uint64)).tolist() == reference(values, seeds)


def test_more_rows_than_one_chunk():
    values = [f"event-{i}" * (i % 7) for i in range(CHUNK * 2 + 17)]
    assert xxh64(values).tolist() == reference(values, [0] * len(values))


@pytest.mark.parametrize(
    "shape",
    ["list", "numpy", "string", "large_string", "string_view", "chunked", "sliced"],
)
def test_every_column_shape_gives_the_same_hashes(shape):
    values = ["m_1", "", "an id longer than thirty-two bytes, UTF-8: ü", "e"]
    column = {
        "list": lambda: values,
        "numpy": lambda: np.array(values, dtype=object),
        "string": lambda: pa.array(values, pa.string()),
        "large_string": lambda: pa.array(values, pa.large_string()),
        "string_view": lambda: pa.array(values, pa.string_view()),
        "chunked": lambda: pa.chunked_array([values[:1], values[1:]]),
        "sliced": lambda: pa.array(["before", *values, "after"]).slice(1, len(values)),
    }[shape]()
    assert xxh64(column, 7).tolist() == reference(values, [7] * len(values))


def test_a_tiny_data_buffer_is_read_safely():
    assert xxh64(["a", "", "b"]).tolist() == reference(["a", "", "b"], [0, 0, 0])
    assert xxh64(pa.array([], pa.string())).tolist() == []


def test_null_ids_are_refused():
    with pytest.raises(ValueError, match="null"):
        xxh64(pa.array(["a", None]))


def test_an_event_fingerprint_is_its_id_seeded_with_its_merchant():
    expected = xxhash.xxh64_intdigest(b"e1", seed=xxhash.xxh64_intdigest(b"m_1"))
    assert event_fingerprints(["m_1"], ["e1"]).tolist() == [expected]


def test_fingerprints_keep_merchants_apart():
    merchants = ["m1", "m2", "m", "m1", "m\x00", "m"]
    ids = ["e", "e", "1e", "e", "e", "\x00e"]
    keys = event_fingerprints(merchants, ids)
    assert len(set(keys.tolist())) == 5  # only the repeated (m1, e) is the same event
