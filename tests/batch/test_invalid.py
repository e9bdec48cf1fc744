"""Values a metric cannot use never vanish from a figure and never corrupt one.

Amounts of 2^63, ``"100"`` and ``1.5`` were counted as orders but silently left out of
revenue; two amounts of 2^62 wrapped revenue to -2^63. Now such an event is left out of the
metric's value and counted in its ``invalid`` figure, the same in the stream and the batch
layer, served with the answer, totalled for operators, and findable by id.
"""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mercato.batch.drift import check_drift, invalid_values
from mercato.batch.engine import Engine
from mercato.batch.invalid import find_invalid
from mercato.batch.seal import seal
from mercato.config import StoreConfig
from mercato.events.model import NormalizedEvent, encode_event
from mercato.log.base import Record
from mercato.log.memory import MemoryLog
from mercato.metrics.batch import MAX_INTEGER
from mercato.metrics.kernel import OVERFLOW
from mercato.names import SEALED_THROUGH
from mercato.query.series import MerchantView, timeseries
from mercato.store.sqlite import SqliteStore

from .test_seal import DEFINITIONS, EVERYTHING, T0, run_archiver, run_stream

UNUSABLE_AMOUNTS: list[Any] = [2**62, 2**63, -(2**62), MAX_INTEGER + 1, "100", 1.5, True,
                               {"value": 1}, [5], 1e300]  # fmt: skip
USABLE_AMOUNTS: list[Any] = [0, 1, 1999, -(MAX_INTEGER), MAX_INTEGER]
UNUSABLE_LATENCIES: list[Any] = ["fast", True, {"ms": 3}, [1]]


def order(i: int, merchant: str, amount: Any, minutes: int) -> NormalizedEvent:
    properties: dict[str, Any] = {"channel": "web", "customer_id": f"c{i % 7}"}
    if amount is not ...:
        properties["amount"] = amount
    when = T0 + timedelta(minutes=minutes)
    return NormalizedEvent(event_id=f"o{i}", merchant_id=merchant, type="order_completed",
                           event_time=when, received_at=when, properties=properties)  # fmt: skip


def request(i: int, merchant: str, latency: Any, minutes: int) -> NormalizedEvent:
    when = T0 + timedelta(minutes=minutes)
    properties = {"path": "/x", "status": 200, "latency_ms": latency}
    return NormalizedEvent(event_id=f"a{i}", merchant_id=merchant, type="api_request",
                           event_time=when, received_at=when, properties=properties)  # fmt: skip


def pipeline(tmp_path: Path, events: list[NormalizedEvent]) -> tuple[SqliteStore, int]:
    """The events through the stream (aggregator), the archiver and the seal."""
    log = MemoryLog(partitions=2)
    log.append([Record(e.merchant_id, encode_event(e)) for e in events])
    store = SqliteStore(tmp_path / "store.sqlite3", StoreConfig())
    aggregator = run_stream(log, store)
    run_archiver(log, tmp_path / "archive")
    return store, aggregator.version


def totals(store: SqliteStore, version: int, merchant: str, final: bool) -> dict[str, Any]:
    through = EVERYTHING[1] if final else None
    names = ["gross_revenue", "orders", "api_latency", "unique_customers"]
    rows = store.read(version, merchant, names, *EVERYTHING, "", through).to_pylist()
    out: dict[str, Any] = {}
    for r in rows:
        cell = out.setdefault(r["metric"], {"count": 0, "sum": 0, "invalid": 0})
        cell["count"] += r["count"]
        cell["sum"] += r["sum"] or 0
        cell["invalid"] += r["invalid"]
    return out


def test_unusable_amounts_are_counted_as_invalid_in_stream_and_batch(tmp_path: Path) -> None:
    events = [order(i, "m_1", a, i) for i, a in enumerate(UNUSABLE_AMOUNTS)]
    events += [order(100 + i, "m_1", a, i) for i, a in enumerate(USABLE_AMOUNTS)]
    events.append(order(200, "m_1", ..., 3))  # no amount at all: not invalid, not summed
    events += [request(i, "m_1", v, i) for i, v in enumerate(UNUSABLE_LATENCIES)]
    events.append(request(99, "m_1", 12.5, 1))
    store, version = pipeline(tmp_path, events)
    speed = totals(store, version, "m_1", final=False)
    assert speed["gross_revenue"] == {
        "count": len(USABLE_AMOUNTS),
        "sum": sum(USABLE_AMOUNTS),  # no wrap, no 2^62 + 2^62
        "invalid": len(UNUSABLE_AMOUNTS),
    }
    # every order still counts as an order
    assert speed["orders"] == {"count": len(events) - 5, "sum": 0, "invalid": 0}
    assert speed["api_latency"]["count"] == 1
    assert speed["api_latency"]["invalid"] == len(UNUSABLE_LATENCIES)

    report = seal(store, tmp_path / "archive", DEFINITIONS, _engine(), grace=timedelta(0))
    assert report.sealed
    assert totals(store, version, "m_1", final=True) == speed

    # the merchant sees it with the answer
    view = MerchantView(store, version, "m_1", store.watermark(SEALED_THROUGH, version),
                        DEFINITIONS)  # fmt: skip
    bounds = [int(T0.timestamp()), int((T0 + timedelta(hours=1)).timestamp())]
    (series,) = timeseries(view, DEFINITIONS, DEFINITIONS.metrics["gross_revenue"], bounds)
    assert series.values == [sum(USABLE_AMOUNTS)]
    assert series.invalid == len(UNUSABLE_AMOUNTS)
    # operators see the totals across merchants
    counts = invalid_values(store, version, (T0 + timedelta(hours=2)).timestamp())
    assert counts["gross_revenue"] == len(UNUSABLE_AMOUNTS)
    assert counts["api_latency"] == len(UNUSABLE_LATENCIES)
    # and can find each event again
    found = find_invalid(
        tmp_path / "archive", DEFINITIONS, DEFINITIONS.metrics["gross_revenue"],
        T0, T0 + timedelta(hours=1),
    )  # fmt: skip
    assert sorted(e.event_id for e in found) == sorted(f"o{i}" for i in range(10))
    assert {tuple(e.fields) for e in found} == {("properties.amount",)}
    store.close()


def _engine() -> Engine:
    from mercato.batch.duckdb import DuckDbEngine

    return DuckDbEngine(chunk_rows=3)  # several chunks: their partials merge


AMOUNT = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
    st.just(...),
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(amounts=st.lists(AMOUNT, min_size=1, max_size=40), seed=st.integers(0, 10**6))
def test_every_order_is_summed_or_counted_invalid_or_has_no_amount(
    tmp_path_factory: pytest.TempPathFactory, amounts: list[Any], seed: int
) -> None:
    rnd = random.Random(seed)
    tmp = tmp_path_factory.mktemp("invalid")
    events = [order(i, rnd.choice(["m_1", "m_2"]), a, rnd.randrange(120)) for i, a in
              enumerate(amounts)]  # fmt: skip
    store, version = pipeline(tmp, events)
    seal(store, tmp / "archive", DEFINITIONS, _engine(), grace=timedelta(0))
    usable = [a for a in amounts if type(a) is int and abs(a) <= MAX_INTEGER]
    absent = [a for a in amounts if a is None or a is ...]
    for final in (False, True):
        got = [totals(store, version, m, final).get("gross_revenue") for m in ("m_1", "m_2")]
        cells = [c for c in got if c is not None]
        assert sum(c["count"] for c in cells) == len(usable)
        assert sum(c["sum"] for c in cells) == sum(usable)
        assert sum(c["invalid"] for c in cells) == len(amounts) - len(usable) - len(absent)
    store.close()


@pytest.mark.slow
def test_mercato_invalid_lists_the_events(tmp_path: Path) -> None:
    events = [order(i, "m_1", a, i) for i, a in enumerate(["100", 7, 2**63])]
    store, _ = pipeline(tmp_path, events)
    store.close()
    env = {"MERCATO_DATA_DIR": str(tmp_path)}
    hours = ["--from", f"{T0:%Y-%m-%dT%H}", "--to", f"{T0 + timedelta(hours=1):%Y-%m-%dT%H}"]
    command = [sys.executable, "-m", "mercato", "invalid", "gross_revenue", *hours]
    done = subprocess.run(
        [*command, "--format", "json"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    listed = msgspec.json.decode(done.stdout)
    assert sorted(e["event_id"] for e in listed) == ["o0", "o2"]
    assert all(e["merchant_id"] == "m_1" for e in listed)
    table = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert table.returncode == 0, table.stderr
    assert "o0" in table.stdout
    unknown = subprocess.run(
        [sys.executable, "-m", "mercato", "invalid", "no_such_metric"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert unknown.returncode != 0
    assert "no metric named 'no_such_metric'" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_a_sum_beyond_64_bits_is_an_overflow_in_stream_batch_days_and_answers(
    tmp_path: Path,
) -> None:
    # each amount is usable, but 1,100 of them in one quarter hour leave int64 (wrapped before)
    events = [order(i, "m_1", MAX_INTEGER, i % 10) for i in range(1_100)]
    events += [order(5_000 + i, "m_2", 250, i % 10) for i in range(3)]
    store, version = pipeline(tmp_path, events)
    assert totals_of_sums(store, version, "m_1", final=False) == [OVERFLOW]
    report = seal(store, tmp_path / "archive", DEFINITIONS, _engine(), grace=timedelta(0))
    assert report.sealed
    assert totals_of_sums(store, version, "m_1", final=True) == [OVERFLOW]
    assert totals_of_sums(store, version, "m_2", final=True) == [750]
    view = MerchantView(store, version, "m_1", store.watermark(SEALED_THROUGH, version),
                        DEFINITIONS)  # fmt: skip
    hour = [int(T0.timestamp()), int((T0 + timedelta(hours=1)).timestamp())]
    midnight = T0.replace(hour=0)
    day = [int(midnight.timestamp()), int((midnight + timedelta(days=1)).timestamp())]
    for bounds, by_day in ((hour, False), (day, True)):
        for name in ("gross_revenue", "net_revenue", "average_order_value"):
            metric = DEFINITIONS.metrics[name]
            (series,) = timeseries(view, DEFINITIONS, metric, bounds, by_day=by_day)
            assert series.values == [None], name  # no number rather than a wrong one
    drift = check_drift(store, version, DEFINITIONS, now=T0 + timedelta(hours=2))
    assert drift.ratio == 0  # both layers agree that it overflowed
    store.close()


def totals_of_sums(
    store: SqliteStore, version: int, merchant: str, final: bool
) -> list[int | None]:
    through = EVERYTHING[1] if final else None
    rows = store.read(version, merchant, ["gross_revenue"], *EVERYTHING, "", through)
    sums: list[int | None] = rows.column("sum").to_pylist()
    return sums
