"""The Log contract, held against every backend (``log_factory``), and the partitioner."""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercato.log.base import Log, LogReader, Position, Record, partition_for
from mercato.log.errors import OffsetOutOfRangeError

from .conftest import LogFactory


def records(n: int, keys: int = 5, tag: str = "r") -> list[Record]:
    return [Record(f"merchant-{i % keys}", f"{tag}-{i}".encode()) for i in range(n)]


def read_all(log: Log, partition: int) -> list[tuple[int, str, bytes]]:
    return [(e.offset, e.key, e.value) for e in LogReader(log, partition, 0)]


# -- partitioner ------------------------------------------------------------------------------

# Expected values were computed once with zlib.crc32 and are frozen here: a change of the
# partitioner would silently re-route merchants, so it must fail this test.
KNOWN_PARTITIONS = [
    ("123456789", 2**32, 0xCBF43926),  # the CRC-32/ISO-HDLC check value
    ("merchant-1", 8, 3),
    ("merchant-2", 8, 1),
    ("m_8f3a2c", 16, 11),
    ("ünïcødé-shop", 12, 5),
    ("", 7, 0),
]


@pytest.mark.parametrize(("key", "partitions", "expected"), KNOWN_PARTITIONS)
def test_partition_for_known_vectors(key: str, partitions: int, expected: int) -> None:
    assert expected == zlib.crc32(key.encode("utf-8")) % partitions
    assert partition_for(key, partitions) == expected


@settings(max_examples=300, deadline=None)
@given(key=st.text(), partitions=st.integers(min_value=1, max_value=10_000))
def test_partition_for_is_crc32_and_in_range(key: str, partitions: int) -> None:
    p = partition_for(key, partitions)
    assert 0 <= p < partitions
    assert p == zlib.crc32(key.encode("utf-8")) % partitions
    assert partition_for(key, partitions) == p


# -- the contract -----------------------------------------------------------------------------


def test_append_read_round_trip(log_factory: LogFactory) -> None:
    log = log_factory(partitions=4)
    batch = records(40)
    positions = log.append(batch)
    assert len(positions) == len(batch)
    for record, position in zip(batch, positions, strict=True):
        assert position.partition == partition_for(record.key, 4)
        [entry] = log.read(position.partition, position.offset, 1)
        assert (entry.partition, entry.offset) == (position.partition, position.offset)
        assert (entry.key, entry.value) == (record.key, record.value)
        assert entry.timestamp_ms > 0


def test_positions_follow_input_order(log_factory: LogFactory) -> None:
    log = log_factory(partitions=3)
    first = log.append(records(30, keys=7, tag="a"))
    second = log.append(records(30, keys=7, tag="b"))
    for positions in (first, second):
        by_partition: dict[int, list[int]] = {}
        for position in positions:
            by_partition.setdefault(position.partition, []).append(position.offset)
        for offsets in by_partition.values():
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
    assert len(set(first) | set(second)) == 60


def test_per_key_order_is_kept(log_factory: LogFactory) -> None:
    log = log_factory(partitions=4)
    sent: dict[str, list[bytes]] = {}
    for round_ in range(5):
        batch = [Record(f"k{i % 3}", f"{round_}:{i}".encode()) for i in range(12)]
        log.append(batch)
        for record in batch:
            sent.setdefault(record.key, []).append(record.value)
    for key, values in sent.items():
        p = partition_for(key, 4)
        assert [v for _, k, v in read_all(log, p) if k == key] == values


def test_offsets_are_dense_from_zero(log_factory: LogFactory) -> None:
    log = log_factory(partitions=4)
    for i in range(10):
        log.append(records(7 + i, keys=9, tag=str(i)))
    for p in range(4):
        offsets = [offset for offset, _, _ in read_all(log, p)]
        assert offsets == list(range(log.end_offset(p)))
        assert log.start_offset(p) == 0


def test_read_at_and_beyond_the_end_is_empty(log_factory: LogFactory) -> None:
    log = log_factory(partitions=2)
    assert log.read(0, 0) == []
    log.append(records(10, keys=1))
    p = partition_for("merchant-0", 2)
    end = log.end_offset(p)
    assert end == 10
    assert log.read(p, end) == []
    assert log.read(p, end + 100) == []


def test_max_records_is_respected(log_factory: LogFactory) -> None:
    log = log_factory(partitions=1)
    for _ in range(5):
        log.append(records(9, keys=2))
    assert len(log.read(0, 0, max_records=1)) == 1
    assert [e.offset for e in log.read(0, 4, max_records=7)] == list(range(4, 11))
    assert len(log.read(0, 0, max_records=10_000)) == 45
    assert log.read(0, 40, max_records=100)[-1].offset == 44
    seen = []
    offset = 0
    while chunk := log.read(0, offset, max_records=4):
        assert len(chunk) <= 4
        seen += [e.offset for e in chunk]
        offset = chunk[-1].offset + 1
    assert seen == list(range(45))


def test_start_and_end_offsets(log_factory: LogFactory) -> None:
    log = log_factory(partitions=4)
    assert [log.end_offset(p) for p in range(4)] == [0, 0, 0, 0]
    assert [log.start_offset(p) for p in range(4)] == [0, 0, 0, 0]
    positions = log.append(records(50, keys=11))
    for p in range(4):
        assert log.end_offset(p) == sum(1 for pos in positions if pos.partition == p)
    stats = log.stats()
    assert [s.partition for s in stats] == [0, 1, 2, 3]
    assert [s.end_offset for s in stats] == [log.end_offset(p) for p in range(4)]
    assert all(s.start_offset == 0 for s in stats)


def test_negative_offset_is_out_of_range(log_factory: LogFactory) -> None:
    log = log_factory(partitions=1)
    log.append(records(3))
    with pytest.raises(OffsetOutOfRangeError):
        log.read(0, -1)


def test_empty_append(log_factory: LogFactory) -> None:
    log = log_factory(partitions=2)
    assert log.append([]) == []
    assert log.end_offset(0) == log.end_offset(1) == 0


def test_log_reader_iterates_and_polls(log_factory: LogFactory) -> None:
    log = log_factory(partitions=1)
    log.append(records(2500, keys=3))
    reader = LogReader(log, 0, 100)
    assert [e.offset for e in reader] == list(range(100, 2500))
    assert reader.position == 2500
    assert reader.poll(timeout=0) == []

    def later() -> None:
        time.sleep(0.2)
        log.append([Record("late", b"x")])

    thread = threading.Thread(target=later)
    thread.start()
    try:
        started = time.monotonic()
        entries = reader.poll(timeout=10)
        assert [(e.offset, e.key, e.value) for e in entries] == [(2500, "late", b"x")]
        assert time.monotonic() - started < 10
    finally:
        thread.join()
    assert reader.position == 2501


def test_concurrent_appends_from_threads(log_factory: LogFactory) -> None:
    log = log_factory(partitions=3)
    results: list[Sequence[Position]] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        for i in range(20):
            positions = log.append(records(6, keys=4, tag=f"t{t}-{i}"))
            with lock:
                results.append(positions)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [pos for positions in results for pos in positions]
    assert len(set(everything)) == len(everything) == 8 * 20 * 6
    for p in range(3):
        assert sorted(pos.offset for pos in everything if pos.partition == p) == list(
            range(log.end_offset(p))
        )


# -- durability -------------------------------------------------------------------------------


def test_reopen_keeps_everything(durable_log_factory: LogFactory) -> None:
    log = durable_log_factory(partitions=3)
    written = []
    for i in range(6):
        batch = records(25, keys=8, tag=str(i))
        written += list(zip(log.append(batch), batch, strict=True))
    before = [read_all(log, p) for p in range(3)]
    log.close()
    reopened = durable_log_factory(partitions=3)
    assert [read_all(reopened, p) for p in range(3)] == before
    for position, record in written:
        [entry] = reopened.read(position.partition, position.offset, 1)
        assert (entry.key, entry.value) == (record.key, record.value)
    more = reopened.append(records(5, keys=1, tag="after"))
    p = more[0].partition
    assert [pos.offset for pos in more] == list(range(len(before[p]), len(before[p]) + 5))


def test_submit_resolves_to_positions(log_factory: LogFactory) -> None:
    log = log_factory(partitions=3)
    batches = [records(10, keys=4, tag=f"s{i}") for i in range(50)]
    futures = [log.submit(batch) for batch in batches]
    for batch, future in zip(batches, futures, strict=True):
        positions = future.result(timeout=60)
        for record, position in zip(batch, positions, strict=True):
            [entry] = log.read(position.partition, position.offset, 1)
            assert (entry.key, entry.value) == (record.key, record.value)
    for p in range(3):
        assert [offset for offset, _, _ in read_all(log, p)] == list(range(log.end_offset(p)))
    assert sum(log.end_offset(p) for p in range(3)) == 500
    assert log.submit([]).result(timeout=60) == []
