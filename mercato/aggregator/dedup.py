"""A bounded window of recently seen event ids, per partition, for dropping redeliveries.

The window keeps 64-bit fingerprints of (merchant id, event id), never the ids themselves
(:mod:`mercato.aggregator.fingerprints`): one sorted ``uint64`` array of every fingerprint in
the window, and beside it each one's generation. A batch is checked with one sort of its
fingerprints and one ``searchsorted`` into the window, so there is no Python per event.

**Hash-only, with a bounded false-drop probability.** Two different events whose
fingerprints are equal are taken for one, so the second is dropped as a redelivery. XXH64
behaves as a random 64-bit function on distinct inputs, so a new event is dropped by mistake
with probability about ``(W + B) / 2**64``, where ``W`` is the window's size (at most
``1.25 * capacity``) and ``B`` the batch's: with the default window of 200,000 ids and
batches of 50,000, at most ``300,000 / 2**64 ≈ 1.6e-14`` per event, well within the
project's bound of 1e-12 (a billion events a day: one false drop in about 170 years). The
alternative, keeping every id to compare on a fingerprint match, would cost ~15 times the
memory and a Python comparison for every real redelivery, to remove a risk smaller than the
window's own (a redelivery older than the window is counted twice). Either way the speed
layer is provisional: the seal recounts every hour from the archive with exact
de-duplication by event id.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from numpy.typing import NDArray

from mercato.aggregator.fingerprints import Hashes, Strings, event_fingerprints

GENERATIONS = 4
# generation numbers are kept modulo 256 (one byte per id): at most a dozen are alive at once
_NUMBERS = 256


class DedupWindow:
    """At least the last ``capacity`` event ids of one partition (at most 25% more).

    Ids are kept with their merchant (a merchant's events all live in one partition), so the
    same id from two merchants is two events. Ids fill generations of a quarter of the
    capacity in arrival order; the oldest generation is dropped whole as soon as the newer
    ones hold ``capacity`` ids, so memory stays bounded without per-id bookkeeping.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a dedup window holds at least one id, not {capacity}")
        self.capacity = capacity
        self._generation_size = -(-capacity // GENERATIONS)
        self._keys: Hashes = np.empty(0, dtype=np.uint64)  # sorted
        self._generations: NDArray[np.uint8] = np.empty(0, dtype=np.uint8)  # of each key
        self._counts: deque[int] = deque([0])  # ids per generation, oldest first
        self._newest = 0  # the newest generation's number (modulo 256 in _generations)

    def __len__(self) -> int:
        return len(self._keys)

    def size_bytes(self) -> int:
        """The memory the window's arrays take (9 bytes per id)."""
        return self._keys.nbytes + self._generations.nbytes

    def check(self, merchant_ids: Strings, event_ids: Strings) -> NDArray[np.bool_]:
        """For each event: True if new, neither in the window nor earlier in the batch.
        Nothing is remembered: :meth:`remember` the new ones once they are counted for good.
        The ids are Arrow string arrays, numpy object arrays or sequences of str."""
        return self.check_fingerprints(event_fingerprints(merchant_ids, event_ids))

    def remember(self, merchant_ids: Strings, event_ids: Strings) -> None:
        """Add the ids of events counted for good (after a batch is stored, and on start
        from the log); ids already in the window, or earlier in the batch, are skipped."""
        self.remember_fingerprints(event_fingerprints(merchant_ids, event_ids))

    def check_fingerprints(self, keys: Hashes) -> NDArray[np.bool_]:
        """:meth:`check` for events given by their fingerprints."""
        verdicts = np.zeros(len(keys), dtype=np.bool_)
        _, first, _, known = self._lookup(keys)
        verdicts[first[~known]] = True
        return verdicts

    def remember_fingerprints(self, keys: Hashes) -> None:
        """:meth:`remember` for events given by their fingerprints."""
        distinct, first, at, known = self._lookup(keys)
        new, at, first = distinct[~known], at[~known], first[~known]
        if not len(new):
            return
        arrived = np.zeros(len(keys), dtype=np.bool_)
        arrived[first] = True
        rank = (np.cumsum(arrived) - 1)[first]  # each new key's place in arrival order
        if len(new) <= self.capacity:
            self._add(new, at, rank)
            return
        # more than the window holds: a few generations at a time, in arrival order
        arrival = new[np.argsort(rank)]
        for start in range(0, len(arrival), self.capacity):
            part = arrival[start : start + self.capacity]
            order = np.argsort(part)
            self._add(part[order], np.searchsorted(self._keys, part[order]), order)

    def _lookup(
        self, keys: Hashes
    ) -> tuple[Hashes, NDArray[np.intp], NDArray[np.intp], NDArray[np.bool_]]:
        """The distinct ``keys`` sorted; for each, its first place in ``keys``, its place in
        the window's sorted keys and whether it is there."""
        if not len(keys):
            nowhere = np.empty(0, dtype=np.intp)
            return keys, nowhere, nowhere, np.empty(0, dtype=np.bool_)
        order = np.argsort(keys)
        ordered = keys[order]
        starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        first = np.minimum.reduceat(order, starts)
        distinct = ordered[starts]
        at = np.searchsorted(self._keys, distinct)
        if not len(self._keys):
            return distinct, first, at, np.zeros(len(distinct), dtype=np.bool_)
        known: NDArray[np.bool_] = self._keys[np.minimum(at, len(self._keys) - 1)] == distinct
        return distinct, first, at, known

    def _add(self, new: Hashes, at: NDArray[np.intp], rank: NDArray[np.intp]) -> None:
        """Add ``new`` (distinct and sorted, none in the window; ``at``: their places in the
        window, ``rank``: their order of arrival) to the newest generation and the ones after
        it, then drop the generations no longer needed."""
        size = self._generation_size
        filled = self._counts[-1]
        steps = (filled + rank) // size  # generations after the newest
        numbers = ((self._newest + steps) % _NUMBERS).astype(np.uint8)
        self._keys = np.insert(self._keys, at, new)
        self._generations = np.insert(self._generations, at, numbers)
        total = filled + len(new)
        self._counts[-1] = min(total, size)
        while total > size:
            total -= size
            self._counts.append(min(total, size))
            self._newest += 1
        dropped = 0
        while len(self._counts) > 1 and len(self) - dropped - self._counts[0] >= self.capacity:
            dropped += self._counts.popleft()
        if dropped:
            oldest = np.uint8((self._newest - len(self._counts) + 1) % _NUMBERS)
            alive = (self._generations - oldest) < len(self._counts)  # age, modulo 256
            self._keys = self._keys[alive]
            self._generations = self._generations[alive]
