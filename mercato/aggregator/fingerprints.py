"""64-bit fingerprints of (merchant id, event id), computed a whole column at a time.

An event's fingerprint is XXH64 of its event id's UTF-8 bytes, seeded with XXH64 of its
merchant id's: ``xxh64(event_id, seed=xxh64(merchant_id))``, exactly what the reference
``xxhash`` binding gives for one pair (the tests hold this module to it). XXH64 is a fixed,
published algorithm with no per-process key, so a fingerprint is the same in every process,
after every restart and on every machine; seeding with the merchant's hash keeps the same
event id of two merchants apart, with no separator an id could contain.

The hash runs in numpy over the Arrow string column's offsets and data buffers: each step of
XXH64 is one vectorized operation over every string at once (strings of different lengths
take different branches through masks), so there is no Python per string. Why not a library
(``bench/dedup_window.py`` measures all three on 50,000 events): the ``xxhash`` binding takes
one bytes object per call, which is exactly the per-event loop this replaces (about 1.5
times slower than this module even so); DuckDB's ``hash(merchant_id, event_id)`` over the
Arrow table is about twice as fast, but its algorithm is internal to DuckDB, has changed between
DuckDB versions and is built for hash tables, not as a fingerprint whose collision rate the
window's false-drop bound (:mod:`mercato.aggregator.dedup`) can rest on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

Strings = Any  # a pyarrow (chunked) string array, a numpy object array or a sequence of str
Hashes = NDArray[np.uint64]

_MASK = (1 << 64) - 1
_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5
P1, P2, P3, P4, P5 = (np.uint64(p) for p in (_P1, _P2, _P3, _P4, _P5))
SEED_V1 = np.uint64((_P1 + _P2) & _MASK)
LOW32 = np.uint64(0xFFFFFFFF)
BYTE = np.uint64(0xFF)
# rows hashed per pass: arrays of this many uint64 stay in the CPU's cache between steps
CHUNK = 8192


def event_fingerprints(merchant_ids: Strings, event_ids: Strings) -> Hashes:
    """The 64-bit fingerprint of each (merchant id, event id) pair."""
    return xxh64(event_ids, xxh64(merchant_ids))


def xxh64(values: Strings, seeds: Hashes | int = 0) -> Hashes:
    """XXH64 of each string's UTF-8 bytes, each with its own seed (or one for all)."""
    array = _strings(values)
    n = len(array)
    offsets, words = _buffers(array)
    per_row = np.broadcast_to(np.asarray(seeds, dtype=np.uint64), (n,))
    out = np.empty(n, dtype=np.uint64)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        out[start:stop] = _xxh64(words, offsets[start : stop + 1], per_row[start:stop])
    return out


def _strings(values: Strings) -> Any:
    if isinstance(values, pa.ChunkedArray):
        values = values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    if not isinstance(values, pa.Array):
        values = pa.array(values, type=pa.large_string())
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = values.cast(pa.large_string())
    if values.null_count:
        raise ValueError("ids to fingerprint must not be null")
    return values


def _buffers(array: Any) -> tuple[NDArray[np.int64], NDArray[np.uint64]]:
    """The string offsets (into the data buffer) and a view of the data buffer as a little-
    endian uint64 starting at every byte, so any 8 bytes of any string are one element."""
    _, offset_buffer, data_buffer = array.buffers()
    width = np.int64 if pa.types.is_large_string(array.type) else np.int32
    offsets = np.frombuffer(
        offset_buffer, dtype=width, count=len(array) + 1, offset=array.offset * width().itemsize
    ).astype(np.int64)
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else None
    if data is None or len(data) < 8:  # too short for one word: pad a copy
        padded = np.zeros(8, dtype=np.uint8)
        if data is not None:
            padded[: len(data)] = data
        data = padded
    words = np.ndarray(shape=(len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))
    return offsets, words.view(np.uint64)


def _rotl(x: Hashes, r: int) -> Hashes:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _round(acc: Hashes | np.uint64, lane: Hashes) -> Hashes:
    return _rotl(acc + lane * P2, 31) * P1


def _xxh64(words: Hashes, offsets: NDArray[np.int64], seeds: Hashes) -> Hashes:
    """XXH64 (the reference algorithm, step by step) of the rows whose bytes start at
    ``offsets[:-1]`` in ``words``. A row that skips a step keeps its value through a mask;
    a read past a row's end is clamped into the buffer and its extra bytes never used."""
    last = len(words) - 1
    starts = offsets[:-1]
    lengths = (offsets[1:] - starts).astype(np.uint64)
    stripes = lengths >> np.uint64(5)  # whole 32-byte stripes
    h = seeds + P5
    most = int(stripes.max(initial=0))
    if most:
        fewest = int(stripes.min())
        lanes = [seeds + SEED_V1, seeds + P2, seeds.copy(), seeds - P1]
        for stripe in range(most):
            for i, acc in enumerate(lanes):
                at = starts + (32 * stripe + 8 * i)
                if stripe < fewest:
                    lanes[i] = _round(acc, words[at])
                else:
                    lanes[i] = np.where(
                        stripes > stripe, _round(acc, words[np.minimum(at, last)]), acc
                    )
        v1, v2, v3, v4 = lanes
        long = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        for acc in lanes:
            long = (long ^ _round(np.uint64(0), acc)) * P1 + P4
        h = long if fewest else np.where(stripes > 0, long, h)
    h = h + lengths
    at = starts + (stripes << np.uint64(5)).astype(np.int64)
    rest = lengths & np.uint64(31)
    for i in range(3):  # the rest's whole 8-byte words
        live = rest >= np.uint64(8 * (i + 1))
        if not live.any():
            break
        k = _round(np.uint64(0), words[np.minimum(at + 8 * i, last)])
        h = np.where(live, _rotl(h ^ k, 27) * P1 + P4, h)
    at = at + (rest >> np.uint64(3)).astype(np.int64) * 8
    rest = rest & np.uint64(7)
    clamped = np.minimum(at, last)  # the last bytes of the buffer: shift them down instead
    tail = words[clamped] >> ((at - clamped).astype(np.uint64) << np.uint64(3))
    four = rest >= np.uint64(4)
    if four.any():
        h = np.where(four, _rotl(h ^ ((tail & LOW32) * P1), 23) * P2 + P3, h)
        tail = np.where(four, tail >> np.uint64(32), tail)
        rest = np.where(four, rest - np.uint64(4), rest)
    for i in range(3):  # the last bytes, one at a time
        live = rest > np.uint64(i)
        if not live.any():
            break
        byte = (tail >> np.uint64(8 * i)) & BYTE
        h = np.where(live, _rotl(h ^ (byte * P5), 11) * P1, h)
    h = h ^ (h >> np.uint64(33))
    h = h * P2
    h = h ^ (h >> np.uint64(29))
    h = h * P3
    return h ^ (h >> np.uint64(32))
