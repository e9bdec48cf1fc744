"""Where things are in an archive, and which files a reader may use.

::

    <root>/events/date=YYYY-MM-DD/hour=HH/p{partition:04d}-{first:016d}-{last:016d}.parquet
    <root>/_state/archiver.json            committed offsets and watermarks, replaced atomically
    <root>/_state/archiver-{owner}.json    the same, of an archiver owning some partitions only
    <root>/_state/archiver.lock            serialises updates of a state file (local roots)
    <root>/_state/archiver-p{partition:04d}.lock    held by the archiver owning that partition

Date and hour are the event time's, in UTC (Hive-style ``key=value`` directories, so DuckDB,
Spark and Trino read them as the ``date`` and ``hour`` columns). A file covers the records of
one log partition with offsets in ``[first, last]`` (inclusive) whose event time is in that
hour; the range is the archiver's batch, so every hour the batch touched gets a file of the
same name, and rewriting a range gives the same names again.

**The state** is every ``archiver*.json`` under ``_state/`` merged: an archiver owning every
partition writes ``archiver.json``; archivers that split the partitions (``[archive]
partitions``) each write a file named by their partitions, so on object storage, which has no
locks, no two processes ever replace the same object. Offsets only grow and a partition has
one owner at a time, so where files disagree on a partition (a file left by an earlier split)
the greatest next offset is the truth.

**The committed rule.** The state holds, per partition, the next offset to archive. A reader
may use a file only if ``last < next offset`` of its partition: files past it are leftovers of
a batch that crashed before its state was written, and the replay deletes or rewrites them.
Among the committed files of one partition and hour, a file whose range lies inside another
file's range is left out: it is an input of a compaction that was killed after writing its
merged file and before deleting all inputs. Two committed ranges that overlap without one
containing the other cannot come from the archiver or from compaction, and are refused with
:class:`~mercato.archive.errors.ArchiveLayoutError`. :func:`committed_files` applies the rule;
a plain ``**/*.parquet`` glob is only right for an archive with no archiver or compaction
interrupted since its last run.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

import msgspec

from mercato.archive.errors import ArchiveLayoutError
from mercato.archive.storage import ArchiveStorage
from mercato.config import ArchiveLocation

EVENTS_DIR = "events"
STATE_DIR = "_state"
STATE_PATH = "_state/archiver.json"
STATE_LOCK = "_state/archiver.lock"
HOUR = timedelta(hours=1)

_FILE_NAME = re.compile(r"p(\d{4})-(\d{16})-(\d{16})\.parquet")
_DATE_DIR = re.compile(r"date=(\d{4}-\d{2}-\d{2})")
_HOUR_DIR = re.compile(r"hour=(\d{2})")
_STATE_FILE = re.compile(r"archiver(-[0-9_-]+)?\.json")

Root = str | os.PathLike[str] | ArchiveStorage | ArchiveLocation


class ArchiveFile(msgspec.Struct, frozen=True, order=True):
    """One Parquet file of the archive: the hour it holds and its partition's offset range."""

    hour: datetime
    partition: int
    first: int
    last: int
    size: int = 0

    @property
    def name(self) -> str:
        return file_name(self.partition, self.first, self.last)

    @property
    def path(self) -> str:
        """The path relative to the archive root."""
        return f"{hour_dir(self.hour)}/{self.name}"

    def contains(self, other: ArchiveFile) -> bool:
        return self.first <= other.first and other.last <= self.last


class PartitionState(msgspec.Struct, frozen=True):
    """The archiver's committed progress on one partition.

    ``next_offset``: every record before it is in committed files. ``watermark``: the later of
    the newest ``received_at`` archived and the last time the archiver found the partition
    fully archived (None until either happened).
    """

    next_offset: int
    watermark: datetime | None = None


class ArchiveState(msgspec.Struct, frozen=True):
    """The content of ``_state/archiver.json``."""

    partitions: dict[int, PartitionState] = msgspec.field(default_factory=dict)

    def next_offsets(self) -> dict[int, int]:
        return {p: s.next_offset for p, s in self.partitions.items()}

    def watermark(self, partitions: Iterable[int] | None = None) -> datetime | None:
        """The lowest watermark of ``partitions`` (default: all in the state); None if one
        of them has none yet."""
        chosen = list(self.partitions) if partitions is None else list(partitions)
        marks = [self.partitions[p].watermark if p in self.partitions else None for p in chosen]
        if not marks or any(m is None for m in marks):
            return None
        return min(m for m in marks if m is not None)


def open_storage(root: Root) -> ArchiveStorage:
    """The storage of ``root``: a path or URI, the configured location, or a storage."""
    if isinstance(root, ArchiveStorage):
        return root
    if isinstance(root, ArchiveLocation):
        return ArchiveStorage(root.url, s3_endpoint=root.s3_endpoint, s3_region=root.s3_region)
    return ArchiveStorage(root)


def partition_lock(partition: int) -> str:
    """The lock the archiver owning ``partition`` holds while it runs."""
    return f"_state/archiver-p{partition:04d}.lock"


def file_name(partition: int, first: int, last: int) -> str:
    """``p0003-0000000000001000-0000000000001999.parquet``."""
    return f"p{partition:04d}-{first:016d}-{last:016d}.parquet"


def parse_file_name(name: str) -> tuple[int, int, int] | None:
    """``(partition, first, last)`` of an archive file's name; None for any other name."""
    match = _FILE_NAME.fullmatch(name)
    if match is None:
        return None
    partition, first, last = (int(g) for g in match.groups())
    return (partition, first, last) if first <= last else None


def hour_start(moment: datetime) -> datetime:
    """The UTC hour ``moment`` is in."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hour_dir(hour: datetime) -> str:
    """``events/date=2026-11-26/hour=08`` for the UTC hour ``hour`` starts."""
    hour = hour_start(hour)
    return f"{EVENTS_DIR}/date={hour:%Y-%m-%d}/hour={hour:%H}"


def parse_hour(date: str, hour: int | str) -> datetime:
    """The UTC hour of a ``YYYY-MM-DD`` date and an hour 0..23, as users type them."""
    try:
        day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ArchiveLayoutError(f"a date is YYYY-MM-DD, not {date!r}") from None
    text = str(hour)
    if not text.isdigit() or not 0 <= int(text) <= 23:
        raise ArchiveLayoutError(f"an hour is 0..23, not {hour!r}")
    return day + timedelta(hours=int(text))


def list_hours(root: Root) -> list[datetime]:
    """Every hour that has a directory in the archive, oldest first."""
    storage = open_storage(root)
    hours = []
    for day in storage.list_dir(EVENTS_DIR):
        date = _DATE_DIR.fullmatch(day.name)
        if date is None:
            continue
        for entry in storage.list_dir(f"{EVENTS_DIR}/{day.name}"):
            hour = _HOUR_DIR.fullmatch(entry.name)
            if hour is not None and int(hour.group(1)) <= 23:
                hours.append(parse_hour(date.group(1), hour.group(1)))
    return sorted(hours)


def list_files(root: Root, hour: datetime) -> list[ArchiveFile]:
    """Every archive file in ``hour``'s directory, committed or not, by partition and range."""
    storage = open_storage(root)
    hour = hour_start(hour)
    files = []
    for entry in storage.list_dir(hour_dir(hour)):
        parsed = parse_file_name(entry.name)
        if parsed is not None:
            files.append(ArchiveFile(hour, *parsed, size=entry.size))
    return sorted(files)


_state_decoder = msgspec.json.Decoder(ArchiveState)
STATE_READS = 20  # reads of a state object that does not decode, STATE_READ_PAUSE apart
STATE_READ_PAUSE = 0.5
_state_encoder = msgspec.json.Encoder()


def state_path(owner: str | None = None) -> str:
    """The state file of the archiver ``owner`` (see :func:`owner_of`); None: of all."""
    return STATE_PATH if owner is None else f"{STATE_DIR}/archiver-{owner}.json"


def owner_of(partitions: Iterable[int]) -> str:
    """A name for an archiver owning ``partitions``: their ranges, as ``0-3_8_10-11``."""
    ranges: list[list[int]] = []
    for p in sorted(set(partitions)):
        if ranges and p == ranges[-1][1] + 1:
            ranges[-1][1] = p
        else:
            ranges.append([p, p])
    return "_".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def read_state(root: Root) -> ArchiveState:
    """The committed state, merged from every archiver's state file; empty if no archiver
    has committed anything yet."""
    storage = open_storage(root)
    names = sorted(
        e.name for e in storage.list_dir(STATE_DIR) if _STATE_FILE.fullmatch(e.name) is not None
    )
    merged: dict[int, PartitionState] = {}
    for name in names:
        for p, state in _read_state_file(storage, f"{STATE_DIR}/{name}").partitions.items():
            known = merged.get(p)
            if known is None or (state.next_offset, _time_key(state)) > (
                known.next_offset,
                _time_key(known),
            ):
                merged[p] = state
    return ArchiveState(dict(sorted(merged.items())))


def _time_key(state: PartitionState) -> float:
    return state.watermark.timestamp() if state.watermark is not None else float("-inf")


def _read_state_file(storage: ArchiveStorage, relative: str) -> ArchiveState:
    """The state in ``relative``. One that does not decode is read again for a while before
    it is an error: S3 shows an object whole or not at all, but S3-compatible stores may not
    (moto's server has shown another archiver's state half written), and that archiver
    writes it again."""
    for attempt in range(STATE_READS):
        data = storage.read_bytes(relative)
        if data is None:  # deleted since the listing
            return ArchiveState()
        try:
            return _state_decoder.decode(data)
        except msgspec.MsgspecError as exc:
            if attempt == STATE_READS - 1 or storage.local:  # a local write is atomic
                message = f"{storage.path(relative)} is not an archive state: {exc}"
                raise ArchiveLayoutError(message) from None
            time.sleep(STATE_READ_PAUSE)
    raise AssertionError("unreachable")


def update_state(
    root: Root,
    changes: Mapping[int, PartitionState],
    *,
    tag: str = "state",
    owner: str | None = None,
) -> ArchiveState:
    """Replace the state of the ``changes`` partitions in ``owner``'s state file (see
    :func:`state_path`), keeping the file's other partitions, and return the merged state."""
    storage = open_storage(root)
    relative = state_path(owner)
    with storage.locked(STATE_LOCK):
        current = _read_state_file(storage, relative)
        state = ArchiveState(dict(sorted({**current.partitions, **changes}.items())))
        encoded = _state_encoder.encode(state)
        storage.write_atomic(relative, lambda out: out.write(encoded), tag=tag)
    return read_state(storage)


def select_committed(
    files: Iterable[ArchiveFile], next_offsets: Mapping[int, int]
) -> list[ArchiveFile]:
    """The files a reader may use, by the committed rule (see the module docstring)."""
    by_key: dict[tuple[datetime, int], list[ArchiveFile]] = {}
    for f in files:
        if f.last < next_offsets.get(f.partition, 0):
            by_key.setdefault((f.hour, f.partition), []).append(f)
    chosen = []
    for group in by_key.values():
        group.sort(key=lambda f: (f.first, -f.last))
        kept: list[ArchiveFile] = []
        for f in group:
            if kept and f.first <= kept[-1].last:
                if kept[-1].contains(f):
                    continue
                raise ArchiveLayoutError(
                    f"{hour_dir(f.hour)}: {kept[-1].name} and {f.name} overlap and neither "
                    "contains the other"
                )
            kept.append(f)
        chosen += kept
    return sorted(chosen)


def committed_files(root: Root, hours: Iterable[datetime] | None = None) -> list[ArchiveFile]:
    """The files a reader may use, of ``hours`` (default: every hour), by the committed rule.

    Each committed log record with an event time in those hours is in exactly one of them.
    """
    storage = open_storage(root)
    next_offsets = read_state(storage).next_offsets()
    chosen = list_hours(storage) if hours is None else [hour_start(h) for h in hours]
    files = [f for hour in chosen for f in list_files(storage, hour)]
    return select_committed(files, next_offsets)
