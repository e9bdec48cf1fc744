"""The aggregator's redelivery window: vectorized fingerprints against the per-event sets it
replaced, on 50,000-event batches over 100,000 merchants (issue: dedup was ~15% of ingest).

Setup (not timed): ``--batches`` batches of ``--batch`` events, merchant ids like the demo's
(``m_00042``) drawn from ``--merchants``, random UUID event ids; 2% of each batch are
redeliveries of the previous batches' events and 0.5% repeats from earlier in the same batch.
Both windows (capacity ``--window``) are first filled with 5 batches, then each timed batch
goes through what the aggregator does with it: check it, then remember the new ones.

- ``vectorized``: ``DedupWindow`` on the ids as Python lists (as the aggregator holds them
  today: turned into Arrow columns, fingerprinted, checked, remembered), and on Arrow columns
  (as a columnar decoder hands them over);
- ``sets``: the previous window (kept here as the baseline): a ``merchant\\0event`` string per
  event and Python sets of generations, checked one event at a time;
- ``hashing``: the fingerprint alone, next to DuckDB's ``hash(merchant, event)`` over the same
  Arrow table and the xxhash binding called once per event (if installed), the alternatives
  the window's hash was chosen among.

Both windows must give the same verdicts. Prints one JSON document: ms per batch and events/s,
min/median/max over the timed batches and ``--runs``.

    python bench/dedup_window.py [--batch 50000] [--merchants 100000] [--window 200000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from benchstats import summary

from mercato.aggregator.dedup import DedupWindow
from mercato.aggregator.fingerprints import event_fingerprints

Batch = tuple[list[str], list[str]]
Columns = tuple[pa.Array, pa.Array]


class SetWindow:
    """The window before it was vectorized: ``merchant\\0event`` strings in Python sets."""

    def __init__(self, capacity: int) -> None:
        self._generation_size = max(1, capacity // 4)
        self._generations: deque[set[str]] = deque([set()])

    def check(self, keys: Iterable[str]) -> list[bool]:
        verdicts = []
        seen: set[str] = set()
        for key in keys:
            new = key not in seen and not any(key in g for g in self._generations)
            if new:
                seen.add(key)
            verdicts.append(new)
        return verdicts

    def remember(self, keys: Iterable[str]) -> None:
        generations = self._generations
        newest = generations[-1]
        for key in keys:
            if any(key in g for g in generations):
                continue
            newest.add(key)
            if len(newest) >= self._generation_size:
                newest = set()
                generations.append(newest)
                if len(generations) > 5:
                    generations.popleft()

    def __len__(self) -> int:
        return sum(len(g) for g in self._generations)

    def size_bytes(self) -> int:
        """The sets and their strings (what the old window reported)."""
        keys = sum(sys.getsizeof(k) for g in self._generations for k in g)
        return keys + sum(sys.getsizeof(g) for g in self._generations)


def batches(count: int, size: int, merchants: int, seed: int) -> list[Batch]:
    rnd = random.Random(seed)
    out: list[Batch] = []
    for _ in range(count):
        ms = [f"m_{rnd.randrange(1, merchants + 1):05d}" for _ in range(size)]
        ids = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(size)]
        for i in rnd.sample(range(size), size // 50) if out else []:  # redeliveries
            earlier, j = rnd.choice(out), rnd.randrange(size)
            ms[i], ids[i] = earlier[0][j], earlier[1][j]
        for i in rnd.sample(range(1, size), size // 200):  # repeats inside the batch
            j = rnd.randrange(i)
            ms[i], ids[i] = ms[j], ids[j]
        out.append((ms, ids))
    return out


def vectorized_lists(window: DedupWindow, batch: Batch) -> np.ndarray:
    merchants = pa.array(batch[0], type=pa.large_string())
    event_ids = pa.array(batch[1], type=pa.large_string())
    return vectorized_columns(window, (merchants, event_ids))


def vectorized_columns(window: DedupWindow, columns: Columns) -> np.ndarray:
    keys = event_fingerprints(*columns)
    new = window.check_fingerprints(keys)
    window.remember_fingerprints(keys[new])
    return new


def sets(window: SetWindow, batch: Batch) -> list[bool]:
    keys = [f"{m}\x00{e}" for m, e in zip(*batch, strict=True)]
    new = window.check(keys)
    window.remember([k for k, n in zip(keys, new, strict=True) if n])
    return new


def duckdb_hash(connection: duckdb.DuckDBPyConnection, columns: Columns) -> np.ndarray:
    table = pa.table({"m": columns[0], "e": columns[1]})
    hashes: np.ndarray = connection.from_arrow(table).project("hash(m, e) as h").fetchnumpy()["h"]
    return hashes


def xxhash_per_event(batch: Batch) -> np.ndarray:
    import xxhash

    digest = xxhash.xxh64_intdigest
    pairs = zip(*batch, strict=True)
    keys = (digest(e.encode(), digest(m.encode())) for m, e in pairs)
    return np.fromiter(keys, dtype=np.uint64, count=len(batch[0]))


def timed(function: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function(*args)
    return (time.perf_counter() - started) * 1e3, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--batches", type=int, default=15, help="5 to fill, the rest timed")
    parser.add_argument("--merchants", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    windows = ("vectorized_lists", "vectorized_columns", "sets")
    hashes = ["fingerprint", "duckdb_hash"]
    if importlib.util.find_spec("xxhash"):
        hashes.append("xxhash_per_event")
    ms: dict[str, list[float]] = {k: [] for k in (*windows, *hashes)}
    connection = duckdb.connect()
    for run in range(args.runs):
        data = batches(args.batches, args.batch, args.merchants, seed=run)
        columns = [
            (pa.array(m, pa.large_string()), pa.array(e, pa.large_string())) for m, e in data
        ]
        lists, arrow = DedupWindow(args.window), DedupWindow(args.window)
        old = SetWindow(args.window)
        for i, (batch, column) in enumerate(zip(data, columns, strict=True)):
            took = {
                "vectorized_lists": timed(vectorized_lists, lists, batch),
                "vectorized_columns": timed(vectorized_columns, arrow, column),
                "sets": timed(sets, old, batch),
                "fingerprint": timed(event_fingerprints, *column),
                "duckdb_hash": timed(duckdb_hash, connection, column),
            }
            if "xxhash_per_event" in ms:
                took["xxhash_per_event"] = timed(xxhash_per_event, batch)
                assert (took["xxhash_per_event"][1] == took["fingerprint"][1]).all()
            verdicts = [np.asarray(took[k][1], dtype=bool) for k in windows]
            assert all((v == verdicts[0]).all() for v in verdicts), "the windows disagree"
            if i >= 5:
                for name, (elapsed, _) in took.items():
                    ms[name].append(elapsed)
    median = {k: statistics.median(v) for k, v in ms.items()}
    report = {
        "benchmark": "dedup_window",
        "unit": "ms per batch",
        "batch": args.batch,
        "merchants": args.merchants,
        "window": args.window,
        "runs": args.runs,
        **{k: summary(v, 2) for k, v in ms.items()},
        "events_per_s": {k: round(args.batch / (v / 1e3)) for k, v in median.items()},
        "speedup_lists": round(median["sets"] / median["vectorized_lists"], 1),
        "speedup_columns": round(median["sets"] / median["vectorized_columns"], 1),
        "window_ids": {"vectorized": len(lists), "sets": len(old)},
        "window_bytes": {"vectorized": lists.size_bytes(), "sets": old.size_bytes()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
