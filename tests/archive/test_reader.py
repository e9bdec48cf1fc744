"""Reading the archive: the committed files in pyarrow, and the same archive in DuckDB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mercato.archive.archiver import Archiver
from mercato.archive.layout import hour_start, parse_hour
from mercato.archive.reader import committed_paths, read_committed
from mercato.archive.schema import SCHEMA
from mercato.log.memory import MemoryLog

from .conftest import Crash, CrashingStorage, config, drain, log_events, records


def test_an_empty_archive_reads_as_no_rows_of_the_schema(root):
    table = read_committed(root)
    assert table.num_rows == 0
    assert table.schema == SCHEMA


def test_reading_some_hours(root):
    log = MemoryLog(2)
    log.append(records(0, 300))
    with Archiver(log, root, config(max_batch_records=50)) as archiver:
        drain(archiver)
    hour = datetime(2026, 11, 26, 9, tzinfo=UTC)
    table = read_committed(root, [hour + timedelta(minutes=30)])
    expected = [e for e in log_events(log).values() if hour_start(e.event_time) == hour]
    assert 0 < table.num_rows == len(expected)
    assert sorted(table.column("event_id").to_pylist()) == sorted(e.event_id for e in expected)


def test_duckdb_reads_the_archive_with_hive_partitioning(root):
    duckdb = pytest.importorskip("duckdb")
    log = MemoryLog(3)
    log.append(records(0, 900))
    with Archiver(log, root, config(max_batch_records=100)) as archiver:
        drain(archiver)
    rows = duckdb.sql(
        f"""
        select date, hour, epoch_us(event_time), log_partition, log_offset, event_id
        from read_parquet('{root}/events/**/*.parquet', hive_partitioning = true)
        """
    ).fetchall()
    events = log_events(log)
    assert len(rows) == len(events)
    for date, hour, event_us, partition, offset, event_id in rows:
        event_time = datetime.fromtimestamp(event_us / 1e6, UTC)
        assert parse_hour(date.isoformat(), hour) == hour_start(event_time)
        assert events[(partition, offset)].event_id == event_id
        assert events[(partition, offset)].event_time == event_time


def test_duckdb_reads_exactly_once_from_the_committed_files_after_a_crash(root):
    duckdb = pytest.importorskip("duckdb")
    log = MemoryLog(2)
    log.append(records(0, 400))
    with Archiver(log, CrashingStorage(root, fail_at=2, state=True), config()) as first:
        first.poll()
        log.append(records(400, 500))
        with pytest.raises(Crash):
            first.poll()
    glob = f"read_parquet('{root}/events/**/*.parquet', hive_partitioning = true)"
    committed = f"read_parquet({committed_paths(root)!r}, hive_partitioning = true)"
    count = "select count(*), count(distinct (log_partition, log_offset)) from "
    seen, distinct = duckdb.sql(count + committed).fetchall()[0]
    assert seen == distinct == 400  # the first batch: committed before the crash
    assert duckdb.sql(count + glob).fetchall()[0][0] > seen  # the crashed batch's files too
