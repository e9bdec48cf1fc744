"""The archiver with the in-memory log: rows, files, batching, restarts and watermarks."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import msgspec
import pyarrow.parquet as pq
import pytest

from mercato.archive.archiver import Archiver
from mercato.archive.errors import ArchiveError, PartitionBusyError
from mercato.archive.layout import (
    ArchiveFile,
    committed_files,
    hour_start,
    list_files,
    list_hours,
    read_state,
)
from mercato.archive.reader import read_committed
from mercato.archive.schema import SCHEMA, SORT_KEYS
from mercato.log.base import Record
from mercato.log.memory import MemoryLog

from .conftest import T0, Clock, assert_exactly_once, config, drain, log_events, records


def test_rows_are_the_decoded_events_field_by_field(root):
    log = MemoryLog(3)
    log.append(records(0, 300))
    with Archiver(log, root, config(max_batch_records=64)) as archiver:
        drain(archiver)
    rows = {(r["log_partition"], r["log_offset"]): r for r in read_committed(root).to_pylist()}
    events = log_events(log)
    assert rows.keys() == events.keys()
    for key, e in events.items():
        row = rows[key]
        assert row["event_id"] == e.event_id
        assert row["merchant_id"] == e.merchant_id
        assert row["type"] == e.type
        assert row["event_time"] == e.event_time
        assert row["original_timestamp"] == e.original_timestamp
        assert row["sent_at"] == e.sent_at
        assert row["received_at"] == e.received_at
        assert msgspec.json.decode(row["properties"]) == e.properties
        assert msgspec.json.decode(row["context"]) == e.context
        assert row["source"] == e.source
    sample = rows[(0, 0)] if (0, 0) in rows else next(iter(rows.values()))
    assert sample["properties"].index('"amount"') < sample["properties"].index('"currency"')


def test_object_form_records_and_non_utc_times_are_archived_alike(root):
    log = MemoryLog(1)
    value = msgspec.json.encode(
        {
            "event_id": "obj",
            "merchant_id": "m_1",
            "type": "order_completed",
            "event_time": "2026-11-26T08:10:00Z",
            "original_timestamp": "2026-11-26T13:39:58+05:30",
            "received_at": "2026-11-26T08:10:02Z",
            "properties": {"z": 1, "a": {"y": 2, "b": 3}},
        }
    )
    log.append([Record("m_1", value)])
    with Archiver(log, root, config()) as archiver:
        drain(archiver)
    (row,) = read_committed(root).to_pylist()
    assert row["original_timestamp"] == datetime(2026, 11, 26, 8, 9, 58, tzinfo=UTC)
    assert row["properties"] == '{"a":{"b":3,"y":2},"z":1}'
    assert row["context"] == "{}"
    assert row["sent_at"] is None


def test_files_are_per_partition_and_event_hour_named_by_the_batch_range(root):
    log = MemoryLog(2)
    log.append(records(0, 500))
    with Archiver(log, root, config(max_batch_records=100)) as archiver:
        drain(archiver)
    events = log_events(log)
    expected = set()
    for (p, offset), e in events.items():
        first = offset - offset % 100
        last = min(first + 99, log.end_offset(p) - 1)
        expected.add(ArchiveFile(hour_start(e.event_time), p, first, last))
    found = {
        ArchiveFile(f.hour, f.partition, f.first, f.last)
        for hour in list_hours(root)
        for f in list_files(root, hour)
    }
    assert found == expected
    assert len(list_hours(root)) == 3
    for f in committed_files(root):
        parquet = pq.ParquetFile(root / f.path)
        assert parquet.schema_arrow == SCHEMA
        assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
        table = parquet.read()
        assert table.equals(table.sort_by(SORT_KEYS))
        assert set(table.column("log_partition").to_pylist()) == {f.partition}
        offsets = table.column("log_offset").to_pylist()
        assert f.first <= min(offsets)
        assert max(offsets) <= f.last
        times = table.column("event_time").to_pylist()
        assert {hour_start(t) for t in times} == {f.hour}
    assert not list(root.rglob("*.tmp"))


def test_records_that_are_not_events_are_skipped_counted_and_logged(root, caplog):
    log = MemoryLog(1)
    log.append(records(0, 2))
    log.append([Record("m_1", b"not json"), Record("m_1", b'{"event_id": "x"}')])
    log.append(records(2, 4))
    with (
        caplog.at_level(logging.WARNING, "mercato.archive"),
        Archiver(log, root, config()) as archiver,
    ):
        drain(archiver)
    assert archiver.stats.invalid == 2
    assert archiver.stats.events == 4
    assert archiver.lag() == {0: 0}
    assert sorted(archived_offsets(root)) == [0, 1, 4, 5]
    messages = [r.getMessage() for r in caplog.records]
    assert any("partition 0 offset 2" in m for m in messages)
    assert any("partition 0 offset 3" in m for m in messages)


def test_a_batch_of_only_invalid_records_still_moves_on(root):
    log = MemoryLog(1)
    log.append([Record("m", b"[]"), Record("m", b"{}")])
    with Archiver(log, root, config()) as archiver:
        drain(archiver)
    assert read_state(root).next_offsets() == {0: 2}
    assert list_hours(root) == []


def archived_offsets(root) -> list[int]:
    offsets: list[int] = read_committed(root).column("log_offset").to_pylist()
    return offsets


def test_a_restart_resumes_from_the_state_file(root):
    log = MemoryLog(2)
    log.append(records(0, 200))
    with Archiver(log, root, config(max_batch_records=50)) as first:
        drain(first)
    names = {f.path for f in committed_files(root)}
    log.append(records(200, 300))
    with Archiver(log, root, config(max_batch_records=50)) as second:
        assert second.committed == read_state(root).next_offsets()
        assert second.positions == second.committed
        assert sum(second.lag().values()) == 100
        drain(second)
        assert second.stats.records == 100
    assert names <= {f.path for f in committed_files(root)}
    assert_exactly_once(root, log)


def test_a_fresh_archiver_starts_at_the_oldest_record_the_log_keeps(root):
    log = MemoryLog(1)
    log.append(records(0, 20))
    log.truncate_before(0, 5)
    with Archiver(log, root, config()) as archiver:
        drain(archiver)
    assert sorted(archived_offsets(root)) == list(range(5, 20))


def test_records_are_gathered_until_the_flush_interval(root):
    log, clock = MemoryLog(1), Clock()
    with Archiver(log, root, config(flush_interval_seconds=10), clock=clock) as archiver:
        for i in range(5):
            log.append(records(i * 10, i * 10 + 10))
            assert archiver.poll() == 10
            assert committed_files(root) == []
            clock.advance(1.5)
        assert archiver.lag() == {0: 50}
        clock.advance(3)
        assert archiver.poll() == 0
        assert archiver.lag() == {0: 0}
    files = committed_files(root)
    assert {(f.first, f.last) for f in files} == {(0, 49)}
    assert len(files) == len(list_hours(root))


def test_a_partition_with_max_batch_records_waiting_is_written_at_once(root):
    log, clock = MemoryLog(1), Clock()
    log.append(records(0, 250))
    with Archiver(
        log, root, config(max_batch_records=100, flush_interval_seconds=3600), clock=clock
    ) as archiver:
        assert archiver.poll() == 100
        assert archiver.poll() == 100
        assert archiver.poll() == 50
        assert archiver.poll() == 0
        assert read_state(root).next_offsets() == {0: 200}
        assert archiver.flush() == 50
    assert {(f.first, f.last) for f in committed_files(root)} == {(0, 99), (100, 199), (200, 249)}


def test_watermark_is_the_newest_received_at_or_when_found_caught_up(root):
    log, clock = MemoryLog(2), Clock(T0 - timedelta(days=1))
    log.append(records(0, 40))
    newest = {
        q: max(e.received_at for (p, _), e in log_events(log).items() if p == q) for q in (0, 1)
    }
    assert newest[0] != newest[1]
    with Archiver(log, root, config(flush_interval_seconds=5), clock=clock) as archiver:
        assert archiver.watermark() is None
        archiver.poll()
        clock.advance(5)
        archiver.poll()  # flushes; the clock is a day behind the events
        assert archiver.watermarks == newest
        assert archiver.watermark() == min(newest.values())
        assert read_state(root).watermark() == min(newest.values())

        clock.advance(2 * 86_400)  # long after the events; nothing new arrives
        archiver.poll()
        assert archiver.watermark() == datetime.fromtimestamp(clock.now, UTC)
        assert read_state(root).watermark() == archiver.watermark()
        clock.advance(1)
        archiver.poll()
        assert archiver.watermark() == datetime.fromtimestamp(clock.now, UTC)
        stored, current = read_state(root).watermark(), archiver.watermark()
        assert stored is not None
        assert current is not None
        assert stored < current  # stored at most every 5 s
        clock.advance(4)
        archiver.poll()
        assert read_state(root).watermark() == datetime.fromtimestamp(clock.now, UTC)


def test_a_partition_behind_holds_the_watermark_back(root):
    log, clock = MemoryLog(2), Clock()
    with Archiver(log, root, config(), clock=clock, partitions=[0]) as first:
        first.poll()
        clock.advance(60)
        with Archiver(log, root, config(), clock=clock, partitions=[1]) as second:
            second.poll()
            first_watermark = first.watermark()
            assert first_watermark is not None
            assert second.watermark() == first_watermark + timedelta(seconds=60)
            assert read_state(root).watermark() == first.watermark()


def test_lag_counts_records_not_yet_committed(root):
    log = MemoryLog(2)
    log.append(records(0, 30))
    with Archiver(log, root, config(flush_interval_seconds=60), clock=Clock()) as archiver:
        archiver.poll()
        assert sum(archiver.lag().values()) == 30
        archiver.flush()
        assert archiver.lag() == {0: 0, 1: 0}


def test_unknown_partition_is_refused(root):
    with pytest.raises(ArchiveError, match="partition 5"):
        Archiver(MemoryLog(2), root, config(), partitions=[5])


def test_two_archivers_of_one_partition_are_refused_and_disjoint_ones_share_the_state(root):
    log = MemoryLog(4)
    log.append(records(0, 100))
    with Archiver(log, root, config(partitions=[0, 1])) as low:
        with pytest.raises(PartitionBusyError, match="partition 1"):
            Archiver(log, root, config(), partitions=[1, 2])
        with Archiver(log, root, config(), partitions=[2, 3]) as high:
            drain(low)
            drain(high)
    assert set(read_state(root).partitions) == {0, 1, 2, 3}
    assert_exactly_once(root, log)
    with Archiver(log, root, config()) as everything:  # the locks were released
        assert everything.lag() == {p: 0 for p in range(4)}
