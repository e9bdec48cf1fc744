"""The redelivery window: the vectorized one against a set-based model of its contract."""

from __future__ import annotations

import tracemalloc
from collections import deque

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercato.aggregator.dedup import GENERATIONS, DedupWindow


def ids(start: int, stop: int, merchant: str = "m_1") -> tuple[list[str], list[str]]:
    return [merchant] * (stop - start), [f"k{i}" for i in range(start, stop)]


class ReferenceWindow:
    """The window's contract, one id at a time: Python sets of generations of
    ``ceil(capacity / 4)`` ids, the oldest dropped while the newer ones hold the capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = -(-capacity // GENERATIONS)
        self.generations: deque[set[tuple[str, str]]] = deque([set()])

    def __len__(self) -> int:
        return sum(len(g) for g in self.generations)

    def check(self, keys: list[tuple[str, str]]) -> list[bool]:
        seen: set[tuple[str, str]] = set()
        verdicts = []
        for key in keys:
            new = key not in seen and not any(key in g for g in self.generations)
            seen.add(key)
            verdicts.append(new)
        return verdicts

    def remember(self, keys: list[tuple[str, str]]) -> None:
        for key, new in zip(keys, self.check(keys), strict=True):
            if not new:
                continue
            if len(self.generations[-1]) == self.size:
                self.generations.append(set())
            self.generations[-1].add(key)
            while len(self.generations) > 1 and (
                len(self) - len(self.generations[0]) >= self.capacity
            ):
                self.generations.popleft()


def test_window_remembers_at_least_its_capacity_and_stays_bounded():
    window = DedupWindow(capacity=1000)
    assert window.check(*ids(0, 5000)).all()
    window.remember(*ids(0, 5000))
    assert 1000 <= len(window) <= 1250
    assert not window.check(*ids(4000, 5000)).any()  # the last 1000: all remembered
    assert window.check(*ids(0, 1)).all()  # long forgotten


def test_duplicates_inside_one_batch_are_caught_and_the_first_wins():
    window = DedupWindow(capacity=10)
    verdicts = window.check(["m", "m", "m", "m", "m"], ["a", "b", "a", "c", "b"])
    assert verdicts.tolist() == [True, True, False, True, False]


def test_check_remembers_nothing_and_remember_skips_what_it_has():
    window = DedupWindow(capacity=10)
    assert window.check(["m", "m"], ["a", "a"]).tolist() == [True, False]
    assert len(window) == 0
    window.remember(["m", "m"], ["a", "a"])
    window.remember(["m"], ["a"])
    assert len(window) == 1
    assert window.check(["m", "m"], ["a", "b"]).tolist() == [False, True]


def test_the_same_id_from_two_merchants_is_two_events():
    window = DedupWindow(capacity=10)
    window.remember(["m1"], ["e"])
    assert window.check(["m1", "m2"], ["e", "e"]).tolist() == [False, True]


def test_arrow_columns_and_python_lists_are_the_same_events():
    window = DedupWindow(capacity=10)
    window.remember(pa.array(["m", "m"]), pa.chunked_array([["a"], ["b"]]))
    assert window.check(["m", "m", "m"], np.array(["a", "b", "c"], dtype=object)).tolist() == [
        False,
        False,
        True,
    ]


def test_empty_batches():
    window = DedupWindow(capacity=10)
    assert window.check([], []).tolist() == []
    window.remember([], [])
    assert len(window) == 0


def test_a_window_holds_at_least_one_id():
    with pytest.raises(ValueError, match="at least one"):
        DedupWindow(0)


MERCHANTS = st.sampled_from(["m_1", "m_2", "m_1\x00"])
EVENT_IDS = st.text(alphabet="ab\x00é", max_size=3)
BATCHES = st.lists(st.lists(st.tuples(MERCHANTS, EVENT_IDS), max_size=25), max_size=14)
# after a check: remember the new ones (a stored batch), the whole batch (a refill from the
# log, redeliveries included) or nothing (a write that failed)
LEARN = st.sampled_from(["new", "all", "none"])


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(min_value=1, max_value=30), batches=BATCHES, data=st.data())
def test_same_verdicts_as_the_set_model(capacity, batches, data):
    window, model = DedupWindow(capacity), ReferenceWindow(capacity)
    everything: set[tuple[str, str]] = set()
    for batch in batches:
        merchants = [m for m, _ in batch]
        event_ids = [e for _, e in batch]
        verdicts = window.check(merchants, event_ids).tolist()
        assert verdicts == model.check(batch)
        learn = data.draw(LEARN)
        if learn != "none":
            learnt = (
                batch if learn == "all" else [k for k, v in zip(batch, verdicts, strict=True) if v]
            )
            window.remember([m for m, _ in learnt], [e for _, e in learnt])
            model.remember(learnt)
        everything.update(batch)
        assert len(window) == len(model)
        # every id ever sent: the window knows exactly the ones the model still holds
        seen = sorted(everything)
        known = ~window.check([m for m, _ in seen], [e for _, e in seen])
        assert [k for k, was in zip(seen, known, strict=True) if was] == [
            k for k in seen if any(k in g for g in model.generations)
        ]


def test_memory_stays_bounded_over_many_batches():
    capacity, batch, batches = 1_000, 333, 400
    window = DedupWindow(capacity)
    tracemalloc.start()
    try:
        for n in range(batches):
            window.remember(*ids(n * batch, (n + 1) * batch, merchant=f"m_{n % 7}"))
            if (n + 1) * batch >= capacity:
                assert capacity <= len(window) <= capacity * 1.25
            assert window.size_bytes() == 9 * len(window)
            held, _ = tracemalloc.get_traced_memory()
            assert held < 200_000  # the window and one batch's ids: nothing piles up
    finally:
        tracemalloc.stop()
    end = batches * batch
    merchants = [f"m_{i // batch % 7}" for i in range(end - 2 * capacity, end)]
    known = ~window.check(merchants, ids(end - 2 * capacity, end)[1])
    assert known[capacity:].all()  # the last `capacity` ids
    assert not known[: int(capacity * 0.75)].any()  # nothing older than 1.25 capacities


def test_size_bytes_is_the_memory_the_window_holds():
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        window = DedupWindow(100_000)
        window.remember(*ids(0, 100_000))
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert window.size_bytes() == 900_000
    assert window.size_bytes() <= after - before <= window.size_bytes() + 100_000
