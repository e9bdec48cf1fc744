"""Shared by the archive tests: events spread over hours, a settable clock, exactly-once
checks over what readers see, and storages that fail where a crash would strike."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import pytest

from mercato.archive.archiver import Archiver
from mercato.archive.layout import STATE_PATH
from mercato.archive.reader import read_committed
from mercato.archive.storage import ArchiveStorage
from mercato.config import ArchiveConfig
from mercato.events.model import NormalizedEvent, decode_event, encode_event
from mercato.log.base import Log, LogReader, Record

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def event(i: int, merchants: int = 7, spread: timedelta = timedelta(hours=3)) -> NormalizedEvent:
    """The ``i``-th test event; event times wander over ``spread`` so batches touch several
    hours, and go back now and then, as late events do."""
    seconds = (i * 7919) % int(spread.total_seconds())
    when = T0 + timedelta(seconds=seconds, microseconds=i % 1000)
    return NormalizedEvent(
        event_id=f"e{i}",
        merchant_id=f"m_{i % merchants}",
        type=("order_completed", "page_viewed", "refund")[i % 3],
        event_time=when,
        original_timestamp=when - timedelta(seconds=2) if i % 2 else None,
        sent_at=when + timedelta(seconds=1) if i % 2 else None,
        received_at=when + timedelta(seconds=3),
        properties={"amount": 100 + i, "currency": "EUR", "items": [{"sku": f"s{i}"}]},
        context={"channel": "web", "ip": "10.0.0.1"} if i % 4 else {},
        source="shop",
    )


def records(start: int, stop: int, **options: Any) -> list[Record]:
    out = []
    for i in range(start, stop):
        e = event(i, **options)
        out.append(Record(e.merchant_id, encode_event(e)))
    return out


class Clock:
    """Wall-clock seconds that move only when told."""

    def __init__(self, start: datetime = T0 + timedelta(hours=6)) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config(**overrides: Any) -> ArchiveConfig:
    return ArchiveConfig(**{"flush_interval_seconds": 0, **overrides})


def drain(archiver: Archiver) -> None:
    while archiver.poll():
        pass
    archiver.flush()


def log_events(log: Log) -> dict[tuple[int, int], NormalizedEvent]:
    """Every record of ``log`` that decodes, by (partition, offset)."""
    out = {}
    for p in range(log.partitions):
        for entry in LogReader(log, p, log.start_offset(p)):
            try:
                out[(p, entry.offset)] = decode_event(entry.value)
            except Exception:
                continue
    return out


def archived(root: Any) -> Counter[tuple[int, int]]:
    """How often readers see each (partition, offset)."""
    table = read_committed(root)
    return Counter(
        zip(
            table.column("log_partition").to_pylist(),
            table.column("log_offset").to_pylist(),
            strict=True,
        )
    )


def assert_exactly_once(root: Any, log: Log) -> None:
    seen = archived(root)
    twice = {k: n for k, n in seen.items() if n > 1}
    assert not twice, f"seen more than once: {sorted(twice)[:10]}"
    expected = set(log_events(log))
    assert set(seen) - expected == set()
    assert expected - set(seen) == set(), f"missing: {sorted(expected - set(seen))[:10]}"


class Crash(Exception):
    """Stands for the process dying at that point."""


class CrashingStorage(ArchiveStorage):
    """A local storage that fails the ``fail_at``-th atomic write of a matching path (1 =
    the first), as a kill would interrupt it; ``before_state`` picks the state file."""

    def __init__(self, root: Any, fail_at: int, *, state: bool) -> None:
        super().__init__(root)
        self.fail_at = fail_at
        self.state = state
        self.writes = 0

    def write_atomic(
        self, relative: str, write: Callable[[BinaryIO], object], **kwargs: Any
    ) -> None:
        if (relative == STATE_PATH) == self.state:
            self.writes += 1
            if self.writes == self.fail_at:
                raise Crash(relative)
        super().write_atomic(relative, write, **kwargs)


@pytest.fixture
def root(tmp_path):
    return tmp_path / "archive"
