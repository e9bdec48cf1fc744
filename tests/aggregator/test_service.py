"""The aggregator service's loop: it rides out a store or log that is away for a while, and
stops on errors no retry mends."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from mercato.aggregator import service
from mercato.aggregator.aggregator import Aggregator
from mercato.log.assignment import StaticAssignment
from mercato.log.errors import LogCorruptionError
from mercato.log.memory import MemoryLog
from mercato.store.errors import StoreUnavailableError, StoreWriteError
from mercato.store.sqlite import SqliteStore

from .test_aggregator import DEFINITIONS, order, totals


class AwayStore(SqliteStore):
    """Refuses the first ``failures`` writes as a database that is away would, alternating
    a lost connection and a write rolled back."""

    failures = 0
    refused = 0

    def write(self, *args: Any, **kwargs: Any) -> None:
        if self.refused < self.failures:
            self.refused += 1
            if self.refused % 2:
                raise StoreUnavailableError("PostgreSQL store: connection refused")
            raise StoreWriteError("write rolled back: server closed the connection")
        super().write(*args, **kwargs)


def run_until(aggregator: Aggregator, done: Any, seconds: float = 30) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            service._run(aggregator, StaticAssignment([], 2), stop, 0.01)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=loop)
    thread.start()
    for _ in range(int(seconds / 0.05)):
        if errors or done():
            break
        stop.wait(0.05)
    stop.set()
    thread.join(timeout=10)
    if errors:
        raise errors[0]


def test_the_loop_rides_out_a_store_that_is_away(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "retry_pause", lambda failures: 0.01)
    log, store = MemoryLog(2), AwayStore.temporary()
    store.failures = 5
    log.append([order(f"e{i}", f"m_{i % 3}", amount=i) for i in range(60)])
    aggregator = Aggregator(log, store, DEFINITIONS, max_batch_records=10)
    run_until(aggregator, lambda: not any(aggregator.lag().values()))
    assert store.refused == 5
    for m in range(3):
        ids = [i for i in range(60) if i % 3 == m]
        assert totals(store, aggregator.version, f"m_{m}") == {
            "orders": (len(ids), None),
            "revenue": (len(ids), sum(ids)),
        }


def test_the_loop_stops_on_a_corrupt_log(monkeypatch: pytest.MonkeyPatch) -> None:
    log, store = MemoryLog(2), SqliteStore.temporary()
    log.append([order("e1")])
    aggregator = Aggregator(log, store, DEFINITIONS)

    def corrupt(*_: Any) -> int:
        raise LogCorruptionError("partition 0: frame at 0 fails its checksum")

    monkeypatch.setattr(aggregator, "poll", corrupt)
    with pytest.raises(LogCorruptionError):
        run_until(aggregator, lambda: False, seconds=5)
