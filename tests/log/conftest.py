"""Fixtures of the log tests: a ``log_factory`` over every backend of the Log protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mercato.config import LogConfig
from mercato.log.base import Log
from mercato.log.file import FileLog
from mercato.log.memory import MemoryLog

LogFactory = Callable[..., Log]


@pytest.fixture(params=["memory", "file"])
def log_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogFactory]:
    """``make(partitions=4)`` opens a log of the parametrized backend; all are closed after."""
    opened: list[Log] = []

    def make(partitions: int = 4) -> Log:
        log: Log
        if request.param == "memory":
            log = MemoryLog(partitions)
        else:
            log = FileLog(tmp_path / "log", LogConfig(partitions=partitions, fsync=False))
        opened.append(log)
        return log

    yield make
    for log in opened:
        log.close()


@pytest.fixture(params=["file"])
def durable_log_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogFactory]:
    """Like ``log_factory`` for the backends that keep data across close and reopen."""
    opened: list[Log] = []

    def make(partitions: int = 4) -> Log:
        log = FileLog(tmp_path / "log", LogConfig(partitions=partitions, fsync=True))
        opened.append(log)
        return log

    yield make
    for log in opened:
        log.close()
