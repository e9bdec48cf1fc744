"""Names, hours, the state file and the committed rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from mercato.archive.errors import ArchiveLayoutError
from mercato.archive.layout import (
    STATE_PATH,
    ArchiveFile,
    PartitionState,
    committed_files,
    file_name,
    hour_dir,
    list_files,
    list_hours,
    owner_of,
    parse_file_name,
    parse_hour,
    read_state,
    select_committed,
    update_state,
)
from mercato.archive.storage import ArchiveStorage

H = datetime(2026, 11, 26, 8, tzinfo=UTC)


def test_file_names_round_trip():
    name = file_name(3, 1000, 1999)
    assert name == "p0003-0000000000001000-0000000000001999.parquet"
    assert parse_file_name(name) == (3, 1000, 1999)


@pytest.mark.parametrize(
    "name",
    [
        ".p0003-0000000000001000-0000000000001999.parquet.archiver-abc.tmp",
        "p3-1000-1999.parquet",
        "p0003-0000000000002000-0000000000001999.parquet",  # first after last
        "p0003-0000000000001000-0000000000001999.parquet.bak",
        "_SUCCESS",
    ],
)
def test_other_names_are_not_archive_files(name):
    assert parse_file_name(name) is None


def test_hours_are_hive_directories_in_utc():
    kolkata = timezone(timedelta(hours=5, minutes=30))
    assert hour_dir(datetime(2026, 11, 26, 14, 10, tzinfo=kolkata)) == (
        "events/date=2026-11-26/hour=08"
    )
    assert hour_dir(datetime(2026, 11, 27, 1, 59, tzinfo=kolkata)) == (
        "events/date=2026-11-26/hour=20"
    )
    assert parse_hour("2026-11-26", "8") == H
    assert ArchiveFile(H, 1, 0, 9).path == (
        "events/date=2026-11-26/hour=08/p0001-0000000000000000-0000000000000009.parquet"
    )


@pytest.mark.parametrize(("date", "hour"), [("2026-11-31", 1), ("26-11-2026", 1), ("x", 1)])
def test_bad_dates_are_refused(date, hour):
    with pytest.raises(ArchiveLayoutError, match="YYYY-MM-DD"):
        parse_hour(date, hour)


@pytest.mark.parametrize("hour", [24, -1, "8a"])
def test_bad_hours_are_refused(hour):
    with pytest.raises(ArchiveLayoutError, match=r"0\.\.23"):
        parse_hour("2026-11-26", hour)


def touch(root, f: ArchiveFile, data: bytes = b"x") -> None:
    path = root / f.path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_listing_hours_and_files_ignores_foreign_names(tmp_path):
    next_day = H + timedelta(days=1)
    files = [ArchiveFile(H, 0, 0, 9), ArchiveFile(H, 1, 0, 4), ArchiveFile(next_day, 0, 10, 19)]
    for f in files:
        touch(tmp_path, f)
    (tmp_path / "events/date=2026-11-26/hour=08/notes.txt").write_text("hi")
    (tmp_path / "events/date=2026-11-26/hour=08/.p0000-x.parquet.archiver-1.tmp").write_text("")
    (tmp_path / "events/date=2026-11-26/hour=99").mkdir()
    (tmp_path / "events/other").mkdir()
    assert list_hours(tmp_path) == [H, next_day]
    assert [(f.partition, f.first, f.last, f.size) for f in list_files(tmp_path, H)] == [
        (0, 0, 9, 1),
        (1, 0, 4, 1),
    ]
    assert list_hours(tmp_path / "nothing") == []


def test_state_updates_keep_the_other_partitions(tmp_path):
    assert read_state(tmp_path).partitions == {}
    update_state(tmp_path, {0: PartitionState(10, H)})
    update_state(tmp_path, {1: PartitionState(5)})
    state = update_state(tmp_path, {0: PartitionState(20, H + timedelta(hours=1))})
    assert read_state(tmp_path) == state
    assert state.next_offsets() == {0: 20, 1: 5}
    assert state.watermark() is None  # partition 1 has none yet
    assert state.watermark([0]) == H + timedelta(hours=1)
    assert sorted(p.name for p in (tmp_path / "_state").iterdir()) == [
        "archiver.json",
        "archiver.lock",
    ]


def test_a_state_file_that_does_not_parse_is_one_clear_error(tmp_path):
    (tmp_path / "_state").mkdir()
    (tmp_path / STATE_PATH).write_text('{"partitions": {"0": {"next_offset": "soon"}}}')
    with pytest.raises(ArchiveLayoutError, match="is not an archive state"):
        read_state(tmp_path)


def test_readers_see_only_files_below_the_committed_offsets():
    files = [ArchiveFile(H, 0, 0, 9), ArchiveFile(H, 0, 10, 19), ArchiveFile(H, 1, 0, 9)]
    assert select_committed(files, {0: 10}) == [files[0]]
    assert select_committed(files, {0: 20, 1: 9}) == files[:2]
    assert select_committed(files, {0: 20, 1: 10}) == files


def test_readers_prefer_the_widest_of_nested_files():
    merged = ArchiveFile(H, 0, 0, 29)
    inputs = [ArchiveFile(H, 0, 0, 9), ArchiveFile(H, 0, 10, 19), ArchiveFile(H, 0, 20, 29)]
    later = ArchiveFile(H, 0, 30, 39)
    assert select_committed([*inputs[1:], merged, later], {0: 40}) == [merged, later]
    # the same ranges in another hour or partition are other files
    other = [ArchiveFile(H, 1, 0, 9), ArchiveFile(H + timedelta(hours=1), 0, 0, 9)]
    assert select_committed([merged, *other], {0: 40, 1: 40}) == sorted([merged, *other])


def test_overlap_without_containment_is_refused():
    with pytest.raises(ArchiveLayoutError, match="overlap"):
        select_committed([ArchiveFile(H, 0, 0, 9), ArchiveFile(H, 0, 5, 14)], {0: 20})


def test_committed_files_reads_the_state_and_the_directories(tmp_path):
    for f in [ArchiveFile(H, 0, 0, 9), ArchiveFile(H, 0, 10, 19), ArchiveFile(H, 0, 10, 24)]:
        touch(tmp_path, f)
    assert committed_files(tmp_path) == []  # nothing committed yet
    update_state(tmp_path, {0: PartitionState(20)})
    assert [(f.first, f.last) for f in committed_files(tmp_path)] == [(0, 9), (10, 19)]
    assert committed_files(tmp_path, [H + timedelta(hours=1)]) == []


def test_roots_are_local_or_s3():
    with pytest.raises(ArchiveLayoutError, match="an archive root is local or s3://"):
        ArchiveStorage("mock:///archive")
    with pytest.raises(ArchiveLayoutError, match=r"s3://bucket\[/prefix\], not s3://"):
        ArchiveStorage("s3://")
    assert ArchiveStorage("file:///tmp/archive").root == "/tmp/archive"
    s3 = ArchiveStorage("s3://bucket/prefix/", s3_endpoint="http://127.0.0.1:9")  # no I/O yet
    assert (s3.root, str(s3), s3.local) == ("bucket/prefix", "s3://bucket/prefix", False)


def test_archivers_splitting_the_partitions_each_write_a_file_of_their_own(tmp_path):
    assert owner_of([3, 0, 1, 2, 8, 10, 11]) == "0-3_8_10-11"
    update_state(tmp_path, {0: PartitionState(10, H), 1: PartitionState(4)}, owner="0-1")
    update_state(tmp_path, {2: PartitionState(7, H)}, owner="2-3")
    update_state(tmp_path, {0: PartitionState(12, H)}, owner="0-1")
    assert sorted(p.name for p in (tmp_path / "_state").glob("*.json")) == [
        "archiver-0-1.json",
        "archiver-2-3.json",
    ]
    assert read_state(tmp_path).next_offsets() == {0: 12, 1: 4, 2: 7}
    # a file left by an earlier split: the greatest next offset of a partition is the truth
    update_state(tmp_path, {0: PartitionState(9), 2: PartitionState(30, H)}, owner="0-3")
    update_state(tmp_path, {1: PartitionState(2)})  # archiver.json, of an archiver of all
    state = read_state(tmp_path)
    assert state.next_offsets() == {0: 12, 1: 4, 2: 30}
    assert state.partitions[2].watermark == H
