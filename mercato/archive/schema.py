"""What an archive file holds: one row per log record that decoded as a normalized event.

=========================== ====================== ==============================================
column                      type                   value
=========================== ====================== ==============================================
``event_id``                string                 as in :mod:`mercato.events.model`
``merchant_id``             string
``type``                    string
``event_time``              timestamp[us, UTC]     the corrected client time; picks the hour
``original_timestamp``      timestamp[us, UTC]     null when the client sent none
``sent_at``                 timestamp[us, UTC]     null when the client sent none
``received_at``             timestamp[us, UTC]
``properties``              string                 JSON, keys sorted (msgspec, ``order="sorted"``)
``context``                 string                 JSON, keys sorted
``source``                  string
``log_partition``           int32                  where the record is in the log
``log_offset``              int64
=========================== ====================== ==============================================

Files are Parquet with zstd compression, rows sorted by ``(merchant_id, event_time,
log_offset)`` so a merchant's rows are contiguous and row-group statistics prune by merchant.
The same log records always give the same rows in the same order. A redelivered event (the
same id at another offset) is archived again: exact de-duplication is the batch layer's job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any, BinaryIO

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from mercato.events.model import NormalizedEvent

TIMESTAMP = pa.timestamp("us", tz="UTC")
_NAIVE = pa.timestamp("us")

SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("event_time", TIMESTAMP, nullable=False),
        pa.field("original_timestamp", TIMESTAMP),
        pa.field("sent_at", TIMESTAMP),
        pa.field("received_at", TIMESTAMP, nullable=False),
        pa.field("properties", pa.string(), nullable=False),
        pa.field("context", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("log_partition", pa.int32(), nullable=False),
        pa.field("log_offset", pa.int64(), nullable=False),
    ]
)
"""The columns of every archive file (see the module docstring)."""

SORT_KEYS = [
    ("merchant_id", "ascending"),
    ("event_time", "ascending"),
    ("log_offset", "ascending"),
]

_encoder = msgspec.json.Encoder(order="sorted")


def events_batch(
    events: Sequence[NormalizedEvent], partition: int, offsets: Sequence[int]
) -> pa.RecordBatch:
    """The archive rows of ``events``, read from ``partition`` at ``offsets``."""
    encode = _encoder.encode
    columns: list[Any] = [
        pa.array([e.event_id for e in events], pa.string()),
        pa.array([e.merchant_id for e in events], pa.string()),
        pa.array([e.type for e in events], pa.string()),
        _times([e.event_time for e in events]),
        _times([e.original_timestamp for e in events]),
        _times([e.sent_at for e in events]),
        _times([e.received_at for e in events]),
        pa.array([encode(e.properties) for e in events], pa.string()),
        pa.array([encode(e.context) for e in events], pa.string()),
        pa.array([e.source for e in events], pa.string()),
        pa.array([partition] * len(events), pa.int32()),
        pa.array(offsets, pa.int64()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def _times(values: list[datetime | None]) -> pa.Array:
    # Aware datetimes converted to naive UTC, then labelled UTC (a metadata-only cast): half
    # the time of converting straight to a zoned timestamp type.
    return pa.array(values, _NAIVE).cast(TIMESTAMP)


def sort_rows(table: pa.Table) -> pa.Table:
    """``table`` in the archive's row order."""
    return table.sort_by(SORT_KEYS)


def write_parquet(table: pa.Table, out: BinaryIO, compression_level: int) -> None:
    """Write ``table`` (already in row order) as one zstd Parquet file."""
    pq.write_table(
        table.cast(SCHEMA),
        out,
        compression="zstd",
        compression_level=compression_level,
    )


def read_parquet(source: Any) -> pa.Table:
    """An archive file's rows, from a path or an open pyarrow file."""
    table: pa.Table = pq.ParquetFile(source).read()
    return table


def event_checksum(table: pa.Table) -> int:
    """The sum, modulo 2**64, of a 64-bit hash of ``merchant_id \\0 event_id`` over rows.

    A sum rather than an xor, so a row that appears twice does not cancel itself out; with
    the row count, it tells whether two tables hold the same multiset of events.
    """
    total = 0
    merchants = table.column("merchant_id").to_pylist()
    ids = table.column("event_id").to_pylist()
    for merchant, event_id in zip(merchants, ids, strict=True):
        digest = hashlib.blake2b(f"{merchant}\0{event_id}".encode(), digest_size=8).digest()
        total += int.from_bytes(digest, "little")
    return total % 2**64
