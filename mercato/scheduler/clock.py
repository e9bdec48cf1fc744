"""The scheduler's sense of time, injected so tests neither sleep nor wait for the minute."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time in UTC, and waiting that a stop event can cut short."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        """Wait ``seconds`` or until ``stop`` is set; True if it was set."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        return stop.wait(seconds)


class ManualClock:
    """A clock that moves only when told to: :meth:`advance`, or :meth:`wait`, which moves it
    at once by the time waited and remembers each wait in :attr:`waits`."""

    def __init__(self, start: datetime) -> None:
        self._lock = threading.Lock()
        self._now = start.astimezone(UTC)
        self.waits: list[float] = []

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when.astimezone(UTC)

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        with self._lock:
            self.waits.append(seconds)
            self._now += timedelta(seconds=seconds)
        return stop.is_set()
