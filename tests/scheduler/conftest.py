"""Fixtures of the scheduler tests: a fake runner, a manual clock, configs with only test jobs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from mercato.config import Config
from mercato.scheduler.clock import ManualClock
from mercato.scheduler.jobs import Outcome
from mercato.store.base import JobStore
from mercato.store.sqlite import SqliteStore

START = datetime(2026, 11, 26, 10, 2, tzinfo=UTC)


def job(
    schedule: str = "* * * * *", command: Sequence[str] = ("work",), **keys: Any
) -> dict[str, Any]:
    return {"schedule": schedule, "command": list(command), **keys}


def make_config(jobs: dict[str, dict[str, Any]], **scheduler: Any) -> Config:
    """A config whose [scheduler.jobs] holds exactly ``jobs`` (no default jobs)."""
    return msgspec.convert({"scheduler": {**scheduler, "jobs": jobs}}, Config, strict=False)


class FakeRunner:
    """Answers each command with ``respond(command)`` (default: success), records the calls,
    and holds a command whose first word is blocked until it is released or stopped."""

    def __init__(self, respond: Callable[[list[str]], Outcome] | None = None) -> None:
        self.respond = respond or (lambda command: Outcome(0, "ok\n"))
        self.calls: list[tuple[list[str], float]] = []
        self.stops = 0
        self._lock = threading.Lock()
        self._gates: dict[str, threading.Event] = {}
        self._entered: dict[str, threading.Event] = {}

    def block(self, word: str) -> None:
        self._gates[word] = threading.Event()
        self._entered[word] = threading.Event()

    def release(self, word: str) -> None:
        self._gates.pop(word).set()

    def wait_entered(self, word: str, timeout: float = 5) -> bool:
        return self._entered[word].wait(timeout)

    def run(self, command: Sequence[str], timeout: float) -> Outcome:
        with self._lock:
            self.calls.append((list(command), timeout))
            stops = self.stops
        gate = self._gates.get(command[0])
        if gate is not None:
            self._entered[command[0]].set()
            while not gate.wait(0.01):
                if self.stops != stops:
                    return Outcome(-15, "terminated\n")
        return self.respond(list(command))

    def stop(self) -> None:
        with self._lock:
            self.stops += 1

    def commands(self) -> list[list[str]]:
        with self._lock:
            return [command for command, _ in self.calls]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def store() -> Iterator[JobStore]:
    """The scheduler's part of a real store: SQLite in a temporary directory."""
    with SqliteStore.temporary() as store:
        yield store
