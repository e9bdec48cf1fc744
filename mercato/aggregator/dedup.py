"""A bounded window of recently seen event ids, per partition, for dropping redeliveries."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterable

GENERATIONS = 4


class DedupWindow:
    """At least the last ``capacity`` event ids of one partition (at most 25% more).

    Ids are kept with their merchant (a merchant's events all live in one partition), so the
    same id from two merchants is two events. Ids live in a few generations of sets: the
    newest takes new ids, and when it holds a quarter of the capacity the oldest generation
    is dropped whole, so memory stays bounded without per-id bookkeeping.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._generation_size = max(1, capacity // GENERATIONS)
        self._generations: deque[set[str]] = deque([set()])
        self.dropped = 0

    def __len__(self) -> int:
        return sum(len(g) for g in self._generations)

    def __contains__(self, key: str) -> bool:
        return any(key in g for g in self._generations)

    def admit(self, keys: Iterable[str]) -> list[bool]:
        """For each key: True if new (and now remembered), False if already seen."""
        verdicts = []
        generations = self._generations
        newest = generations[-1]
        limit = self._generation_size
        for key in keys:
            for generation in generations:
                if key in generation:
                    verdicts.append(False)
                    self.dropped += 1
                    break
            else:
                verdicts.append(True)
                newest.add(key)
                if len(newest) >= limit:
                    newest = set()
                    generations.append(newest)
                    if len(generations) > GENERATIONS + 1:
                        generations.popleft()
        return verdicts

    def check(self, keys: Iterable[str]) -> list[bool]:
        """For each key: True if new, neither in the window nor earlier in ``keys``. Nothing
        is remembered: :meth:`remember` the new ones once they are counted for good."""
        verdicts = []
        generations = self._generations
        seen: set[str] = set()
        for key in keys:
            new = key not in seen and not any(key in g for g in generations)
            if new:
                seen.add(key)
            verdicts.append(new)
        return verdicts

    def remember(self, keys: Iterable[str]) -> None:
        """Add ids of records counted for good (after a batch is stored, and on start from
        the log), without counting drops."""
        dropped = self.dropped
        self.admit(keys)
        self.dropped = dropped

    def size_bytes(self) -> int:
        """An estimate of the window's memory."""
        total = 0
        for generation in self._generations:
            total += sys.getsizeof(generation)
            if generation:
                total += len(generation) * sys.getsizeof(next(iter(generation)))
        return total


def dedup_key(merchant_id: str, event_id: str) -> str:
    return f"{merchant_id}\x00{event_id}"
