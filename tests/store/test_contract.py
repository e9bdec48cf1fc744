"""The Store contract, held against every backend (``store_factory``)."""

from __future__ import annotations

import inspect
import threading
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from mercato.metrics.kernel import (
    OVERFLOW,
    PARTIAL_SCHEMA,
    SUM_LIMIT,
    sketch_estimate,
    sketch_quantile,
)
from mercato.store.base import Store
from mercato.store.errors import (
    InvalidPartialsError,
    InvalidTimezoneError,
    OffsetConflictError,
    StoreClosedError,
    StoreError,
    StoreWriteError,
    UnknownJobRunError,
    UnknownVersionError,
)
from mercato.store.postgres import PostgresStore
from mercato.store.sqlite import SqliteStore

from .conftest import EVERYTHING, StoreFactory, hll, kll, partials, row


def read_rows(
    store: Store,
    version: int,
    merchant_id: str,
    metrics: list[str],
    dimension: str = "",
    start: int = EVERYTHING[0],
    end: int = EVERYTHING[1],
) -> list[dict[str, object]]:
    table = store.read(version, merchant_id, metrics, start, end, dimension)
    assert table.schema.equals(PARTIAL_SCHEMA)
    rows: list[dict[str, object]] = table.to_pylist()
    return rows


def versioned(store: Store) -> int:
    return store.register_version("v-hash", "metrics: []")


# -- rows -------------------------------------------------------------------------------------


def test_write_and_read_back_in_key_order(store_factory: StoreFactory) -> None:
    store = store_factory()
    assert isinstance(store, Store)
    v = versioned(store)
    written = [
        row("m1", "revenue", bucket=900, count=2, sum=500),
        row("m1", "orders", bucket=900, count=2),
        row("m1", "orders", bucket=0, count=1),
        row("m1", "orders", "channel", "web", bucket=0, count=1),
        row("m1", "orders", "channel", "pos", bucket=0, count=3),
        row("m2", "orders", bucket=0, count=7),
    ]
    store.write(v, "agg", partials(*written), {0: 10})
    assert read_rows(store, v, "m1", ["orders", "revenue"]) == [
        written[2],
        written[1],
        written[0],
    ]
    assert read_rows(store, v, "m1", ["orders"], "channel") == [written[4], written[3]]
    assert read_rows(store, v, "m2", ["orders"]) == [written[5]]


def test_two_writes_to_one_key_add_up_and_take_extremes(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    store.write(v, "agg", partials(row(count=2, sum=100, min=5, max=50)), {0: 1})
    store.write(v, "agg", partials(row(count=3, sum=-40, min=-7, max=20)), {0: 2})
    store.write(v, "agg", partials(row(count=1, sum=1, min=0, max=90)), {0: 3})
    assert read_rows(store, v, "m1", ["orders"]) == [row(count=6, sum=61, min=-7, max=90)]


def test_sums_never_wrap_they_become_overflow_and_stay(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    near = SUM_LIMIT - 5
    store.write(v, "agg", partials(row(count=1, sum=near), row(bucket=900, sum=-near)), {0: 1})
    store.write(v, "agg", partials(row(count=1, sum=5), row(bucket=900, sum=-5)), {0: 2})
    assert [r["sum"] for r in read_rows(store, v, "m1", ["orders"])] == [SUM_LIMIT, -SUM_LIMIT]
    store.write(v, "agg", partials(row(count=1, sum=1), row(bucket=900, sum=-1)), {0: 3})
    # one more and each left 64 bits: never a wrapped number, never a failed write
    assert [r["sum"] for r in read_rows(store, v, "m1", ["orders"])] == [OVERFLOW, OVERFLOW]
    store.write(v, "agg", partials(row(count=1, sum=-100), row(bucket=900, sum=None)), {0: 4})
    rows = read_rows(store, v, "m1", ["orders"])
    assert [(r["count"], r["sum"]) for r in rows] == [(4, OVERFLOW), (4, OVERFLOW)]
    # totals over rows that overflowed, or whose total does, are OVERFLOW too, without an error
    store.write_sealed_hour(
        v,
        3600,
        partials(row(bucket=3600, sum=near), row(bucket=4500, sum=near), row(bucket=5400, sum=1)),
        "fp",
        3,
    )
    [hour] = store.layer_totals(v, 3600, 7200, period=3600)
    assert hour.sum == OVERFLOW
    [speed] = store.layer_totals(v, 0, 3600, period=3600, layer="speed")
    assert speed.sum == OVERFLOW


def test_rows_of_one_key_twice_in_one_write_both_count(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    a, b = hll(f"a{i}" for i in range(500)), hll(f"b{i}" for i in range(500))
    twice = partials(
        row(count=2, sum=10, min=3, max=3, sketch=a),
        row("m1", "orders", bucket=900),
        row(count=5, sum=20, min=1, max=9, sketch=b),
    )
    store.write(v, "agg", twice, {})
    [first, second] = read_rows(store, v, "m1", ["orders"])
    sketch = first["sketch"]
    assert isinstance(sketch, bytes)
    assert first == row(count=7, sum=30, min=1, max=9, sketch=sketch)
    assert second == row(bucket=900)
    assert sketch_estimate(sketch) == pytest.approx(1000, rel=0.05)


def test_nulls_are_nothing_yet(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    sketch = hll(["x", "y"])
    store.write(
        v,
        "agg",
        partials(
            row(bucket=0, count=None, sum=None, min=None, max=None, sketch=None),
            row(bucket=900, count=1, sum=4, min=4, max=4, sketch=sketch),
            row(bucket=1800, count=None, sum=None, min=None, max=None, sketch=None),
        ),
        {},
    )
    store.write(
        v,
        "agg",
        partials(
            row(bucket=0, count=2, sum=7, min=-3, max=8, sketch=sketch),
            row(bucket=900, count=None, sum=None, min=None, max=None, sketch=None),
            row(bucket=1800, count=None, sum=None, min=None, max=None, sketch=None),
        ),
        {},
    )
    assert read_rows(store, v, "m1", ["orders"]) == [
        row(bucket=0, count=2, sum=7, min=-3, max=8, sketch=sketch),
        row(bucket=900, count=1, sum=4, min=4, max=4, sketch=sketch),
        row(bucket=1800, count=None, sum=None, min=None, max=None, sketch=None),
    ]


def test_hll_sketches_unite(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    first = hll(f"customer-{i}" for i in range(1000))
    second = hll(f"shopper-{i}" for i in range(1000))
    assert sketch_estimate(first) == pytest.approx(1000, rel=0.05)
    store.write(v, "agg", partials(row(metric="customers", sketch=first)), {})
    store.write(v, "agg", partials(row(metric="customers", sketch=second)), {})
    [stored] = read_rows(store, v, "m1", ["customers"])
    assert isinstance(stored["sketch"], bytes)
    assert sketch_estimate(stored["sketch"]) == pytest.approx(2000, rel=0.05)


def test_kll_sketches_unite(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    store.write(v, "agg", partials(row(metric="latency", sketch=kll(range(0, 1000)))), {})
    store.write(v, "agg", partials(row(metric="latency", sketch=kll(range(1000, 2000)))), {})
    [stored] = read_rows(store, v, "m1", ["latency"])
    assert isinstance(stored["sketch"], bytes)
    assert sketch_quantile(stored["sketch"], 0.5) == pytest.approx(1000, rel=0.05)
    assert sketch_quantile(stored["sketch"], 0.1) == pytest.approx(200, abs=40)


def test_reads_are_merchant_scoped(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    store.write(
        v,
        "agg",
        partials(
            row("shop-a", count=1),
            row("shop-b", count=2),
            row("shop-a", "orders", "channel", "web", count=1),
            row("shop-ab", count=3),
            row("shop-", count=4),
        ),
        {},
    )
    a = read_rows(store, v, "shop-a", ["orders"])
    assert a == [row("shop-a", count=1)]
    assert read_rows(store, v, "shop-b", ["orders"]) == [row("shop-b", count=2)]
    assert read_rows(store, v, "shop-b", ["orders"], "channel") == []
    assert read_rows(store, v, "shop", ["orders"]) == []
    assert read_rows(store, v, "SHOP-A", ["orders"]) == []
    assert store.members(v, "shop-b", "orders", "channel", *EVERYTHING) == []


def test_reads_respect_metric_dimension_version_and_bucket_range(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    v1 = versioned(store)
    v2 = store.register_version("other-hash", "metrics: [x]")
    rows = [
        row(metric=metric, dimension=dimension, member=member, bucket=bucket, count=bucket + 1)
        for metric in ("orders", "refunds", "revenue")
        for dimension, member in (("", ""), ("channel", "web"), ("country", "DE"))
        for bucket in (-900, 0, 900, 1800, 2700)
    ]
    store.write(v1, "agg", partials(*rows), {})
    store.write(v2, "agg", partials(row(count=99)), {})

    got = read_rows(store, v1, "m1", ["revenue", "orders"], "channel", 0, 1800)
    assert [(r["metric"], r["dimension"], r["bucket"]) for r in got] == [
        ("orders", "channel", 0),
        ("orders", "channel", 900),
        ("revenue", "channel", 0),
        ("revenue", "channel", 900),
    ]
    assert [r["bucket"] for r in read_rows(store, v1, "m1", ["refunds"], "", -900, 901)] == [
        -900,
        0,
        900,
    ]
    assert read_rows(store, v1, "m1", ["refunds"], "", 901, 1800) == []
    assert read_rows(store, v1, "m1", ["nothing"]) == []
    assert read_rows(store, v1, "m1", []) == []
    assert read_rows(store, v2, "m1", ["orders"]) == [row(count=99)]
    assert read_rows(store, v2 + 1, "m1", ["orders"]) == []
    with pytest.raises(TypeError):
        store.read(v1, "m1", "orders", *EVERYTHING)


def test_members_with_their_total_counts(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    store.write(
        v,
        "agg",
        partials(
            row(dimension="channel", member="web", bucket=0, count=4),
            row(dimension="channel", member="web", bucket=900, count=4),
            row(dimension="channel", member="pos", bucket=0, count=9),
            row(dimension="channel", member="app", bucket=900, count=8),
            row(dimension="channel", member="mail", bucket=1800, count=50),
            row(dimension="country", member="DE", bucket=0, count=100),
            row("m2", dimension="channel", member="web", bucket=0, count=1000),
        ),
        {},
    )
    assert store.members(v, "m1", "orders", "channel", 0, 1800) == [
        ("pos", 9),
        ("app", 8),
        ("web", 8),
    ]
    assert store.members(v, "m1", "revenue", "channel", 0, 1800) == []


# -- atomicity --------------------------------------------------------------------------------


# -- final rows and seals ---------------------------------------------------------------------


def test_sealed_hour_rows_are_read_before_the_watermark_speed_rows_after(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    v = versioned(store)
    speed = [row(bucket=b, count=1) for b in (0, 900, 3600, 4500)]
    store.write(v, "agg", partials(*speed), {0: 1})
    assert store.sealed_hours(v) == {}
    final = [row(bucket=0, count=5), row(bucket=2700, count=6)]
    store.write_sealed_hour(v, 0, partials(*final), "fp-1", 11)
    assert read_rows(store, v, "m1", ["orders"]) == speed  # no watermark: speed only
    got = store.read(v, "m1", ["orders"], *EVERYTHING, "", 3600).to_pylist()
    assert got == [*final, speed[2], speed[3]]
    assert store.read_rows(v, "m1", ["orders"], *EVERYTHING, "", 3600) == [
        tuple(r.values()) for r in got
    ]
    assert store.members(v, "m1", "orders", "", *EVERYTHING, 3600) == [("", 13)]
    assert store.members(v, "m1", "orders", "", *EVERYTHING) == [("", 4)]
    sealed = store.sealed_hours(v)
    assert list(sealed) == [0]
    assert (sealed[0].fingerprint, sealed[0].events) == ("fp-1", 11)


def test_resealing_an_hour_replaces_its_final_rows_for_every_merchant(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    v = versioned(store)
    store.write_sealed_hour(
        v, 0, partials(row("m1", bucket=0, count=1), row("m2", bucket=900, count=2)), "a", 3
    )
    store.write_sealed_hour(v, 3600, partials(row("m1", bucket=3600, count=9)), "b", 9)
    store.write_sealed_hour(v, 0, partials(row("m1", bucket=0, count=4)), "c", 4)
    assert store.read(v, "m2", ["orders"], *EVERYTHING, "", 7200).num_rows == 0
    assert [
        r["count"] for r in store.read(v, "m1", ["orders"], *EVERYTHING, "", 7200).to_pylist()
    ] == [4, 9]
    assert {h: s.fingerprint for h, s in store.sealed_hours(v).items()} == {0: "c", 3600: "b"}
    with pytest.raises(InvalidPartialsError, match="outside"):
        store.write_sealed_hour(v, 0, partials(row(bucket=3600)), "d", 1)
    with pytest.raises(UnknownVersionError):
        store.write_sealed_hour(99, 0, partials(row(bucket=0)), "d", 1)


def test_a_seal_says_whose_final_rows_it_replaced(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    first = partials(row("m2", bucket=0), row("m1", bucket=900), row("m1", bucket=0))
    assert store.write_sealed_hour(v, 0, first, "a", 3) == ["m1", "m2"]
    assert store.write_sealed_hour(v, 3600, partials(row("m4", bucket=3600)), "b", 1) == ["m4"]
    # m2's rows go: it is named all the same, beside m3 whose rows come
    again = partials(row("m3", bucket=0), row("m1", bucket=0, count=7))
    assert store.write_sealed_hour(v, 0, again, "c", 2) == ["m1", "m2", "m3"]
    assert store.write_sealed_hour(v, 0, partials(), "d", 0) == ["m1", "m3"]
    assert store.write_sealed_hour(v, 0, partials(), "e", 0) == []
    assert store.final_merchants(v, 0, 7200) == ["m4"]


def test_rows_of_one_key_twice_in_a_seal_both_count(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    a, b = hll(["x", "y"]), hll(["y", "z"])
    rows = partials(
        row(bucket=900, count=2, sum=5, min=1, max=4, sketch=a),
        row("m0", bucket=0),
        row(bucket=900, count=3, sum=None, min=0, max=3, sketch=b),
    )
    store.write_sealed_hour(v, 0, rows, "f", 3)
    (stored,) = store.read(v, "m1", ["orders"], *EVERYTHING, "", 3600).to_pylist()
    assert (stored["count"], stored["sum"], stored["min"], stored["max"]) == (5, 5, 0, 4)
    assert round(sketch_estimate(stored["sketch"])) == 3
    assert store.read(v, "m0", ["orders"], *EVERYTHING, "", 3600).num_rows == 1
    broken = partials(row(bucket=0, sketch=a), row(bucket=0, sketch=b"H-not-a-sketch"))
    with pytest.raises(StoreWriteError, match="do not merge"):
        store.write_sealed_hour(v, 0, broken, "g", 2)
    assert store.sealed_hours(v)[0].fingerprint == "f"


def test_a_seal_failing_half_way_changes_nothing(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    store.write_sealed_hour(v, 0, partials(row("m1", bucket=0, count=4)), "f", 4)
    # the seal is recorded last, in the transaction that replaced the rows: make it fail
    with pytest.raises(StoreWriteError):
        store.write_sealed_hour(v, 0, partials(row("m2", bucket=0)), None, 1)  # type: ignore[arg-type]
    assert store.final_merchants(v, 0, 3600) == ["m1"]
    (kept,) = store.read(v, "m1", ["orders"], *EVERYTHING, "", 3600).to_pylist()
    assert kept["count"] == 4
    assert store.sealed_hours(v)[0].fingerprint == "f"


def test_watermarks_per_name_and_version(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    assert store.watermark("sealed_through", v) is None
    store.set_watermark("sealed_through", v, 3600)
    store.set_watermark("sealed_through", v, 7200)
    store.set_watermark("other", v, 1)
    assert store.watermark("sealed_through", v) == 7200
    assert store.watermark("sealed_through", v + 1) is None


def test_serving_switches_are_recorded_for_rollback(store_factory: StoreFactory) -> None:
    store = store_factory()
    v1, v2 = store.register_version("a", "{}"), store.register_version("b", "{}")
    store.set_serving_version(v1)
    store.set_serving_version(v1)  # not a change
    store.set_serving_version(v2)
    store.set_serving_version(v1)
    history = [(c.version, c.previous) for c in store.serving_history()]
    assert history == [(v1, v2), (v2, v1), (v1, None)]
    assert len(store.serving_history(limit=1)) == 1


def test_serving_history_gives_the_latest_limit_switches_and_none_for_no_limit(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    v1, v2 = store.register_version("a", "{}"), store.register_version("b", "{}")
    for version in (v1, v2, v1):
        store.set_serving_version(version)
    switches = [(v1, v2), (v2, v1), (v1, None)]
    for limit in (1, 2, 3, 20):
        got = [(c.version, c.previous) for c in store.serving_history(limit)]
        assert got == switches[:limit], limit
    assert store.serving_history(0) == []
    assert store.serving_history(-1) == []  # as job_runs: a limit of 0 or less is none


def test_layer_totals_read_their_sums_and_sketches_from_one_snapshot(
    store_factory: StoreFactory,
) -> None:
    # layer_totals reads the sums and the sketches of the rows in two statements. Every write
    # here adds a row with a count of 1 and a sketch to the one total, so in any one snapshot
    # the count is the number of sketches; a write landing between the statements breaks that.
    # Many rows make the first statement slow, so writes land in it whenever they can.
    store, writer = store_factory(), store_factory()
    v = versioned(store)
    sketch = hll(["x"])
    store.write(v, "agg", partials(*(row(bucket=900 * b, sketch=sketch) for b in range(3000))), {})
    reading, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            reading.wait(30)
            for b in range(3000, 3300):
                writer.write(v, "agg", partials(row(bucket=900 * b, sketch=sketch)), {})
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    seen: list[tuple[int | None, int]] = []
    try:
        while not done.is_set():
            (total,) = store.layer_totals(v, 0, 2**40, period=2**40, layer="speed")
            seen.append((total.count, len(total.sketches)))
            reading.set()
    finally:
        reading.set()
        thread.join(timeout=60)
    assert not errors, errors
    assert [(count, sketches) for count, sketches in seen if count != sketches] == []
    (total,) = store.layer_totals(v, 0, 2**40, period=2**40, layer="speed")
    assert (total.count, len(total.sketches)) == (3300, 3300)


def test_dropping_a_version_deletes_its_rows_and_keeps_the_others(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    v1, v2 = store.register_version("a", "{}"), store.register_version("b", "{}")
    store.set_serving_version(v1)
    for v in (v1, v2):
        store.write(v, "aggregator/b", partials(row(bucket=0, count=v)), {0: 5})
        store.write_sealed_hour(v, 0, partials(row(bucket=0, count=v)), "fp", 1)
        store.set_watermark("sealed_through", v, 3600)
    with pytest.raises(StoreError, match="serving"):
        store.drop_version(v1)
    assert store.drop_version(v2) == 2
    assert read_rows(store, v2, "m1", ["orders"]) == []
    assert store.sealed_hours(v2) == {}
    assert store.watermark("sealed_through", v2) is None
    assert store.offsets("aggregator/b") == {}
    assert [v.state for v in store.versions()] == ["registered", "dropped"]
    assert read_rows(store, v1, "m1", ["orders"]) == [row(bucket=0, count=v1)]


def test_layer_totals_per_merchant_metric_and_day(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    store.write_sealed_hour(
        v,
        0,
        partials(
            row("m1", "revenue", bucket=0, count=1, sum=10, min=10, max=10),
            row("m1", "revenue", bucket=900, count=2, sum=5, min=1, max=4),
            row("m1", "revenue", "channel", "web", bucket=0, count=1, sum=10),
            row("m2", "customers", bucket=0, count=3, sketch=hll(["a", "b"])),
        ),
        "fp",
        6,
    )
    store.write_sealed_hour(
        v, 86_400, partials(row("m1", "revenue", bucket=86_400, count=1, sum=7)), "fp", 1
    )
    totals = list(store.layer_totals(v, 0, 2 * 86_400))
    assert [(t.merchant_id, t.metric, t.period, t.count, t.sum, t.min, t.max) for t in totals] == [
        ("m1", "revenue", 0, 3, 15, 1, 10),
        ("m1", "revenue", 86_400, 1, 7, None, None),
        ("m2", "customers", 0, 3, None, None, None),
    ]
    assert [len(t.sketches) for t in totals] == [0, 0, 1]
    hourly = store.layer_totals(v, 0, 86_400, period=3600)
    assert [(t.merchant_id, t.period, t.count) for t in hourly] == [("m1", 0, 3), ("m2", 0, 3)]
    store.write(v, "agg", partials(row("m1", "revenue", bucket=0, count=4, sum=40)), {0: 1})
    speed = store.layer_totals(v, 0, 86_400, layer="speed")
    assert [(t.merchant_id, t.count, t.sum) for t in speed] == [("m1", 4, 40)]


def test_local_days_replace_read_and_go_with_a_timezone_change(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    v = versioned(store)
    day, next_day = 0, 86_400
    rows = partials(
        row("m1", bucket=day, count=3),
        row("m1", bucket=next_day, count=4),
        row("m1", "orders", "channel", "web", bucket=day, count=2),
    )
    store.replace_days(v, "m1", day, 2 * 86_400, rows, days_through=2 * 86_400)
    assert [r[4:6] for r in store.read_days(v, "m1", ["orders"], 0, 2 * 86_400)] == [
        (day, 3), (next_day, 4)
    ]  # fmt: skip
    assert [r[3] for r in store.read_days(v, "m1", ["orders"], 0, 86_400, "channel")] == ["web"]
    assert store.read_days(v, "m2", ["orders"], 0, 2 * 86_400) == []
    assert store.watermark("days_through/m1", v) == 2 * 86_400
    store.replace_days(v, "m1", next_day, 2 * 86_400, partials(row("m1", bucket=next_day, count=9)))
    assert [r[5] for r in store.read_days(v, "m1", ["orders"], 0, 2 * 86_400)] == [3, 9]
    with pytest.raises(StoreWriteError, match="another merchant"):
        store.replace_days(v, "m1", 0, 86_400, partials(row("m2", bucket=0)))
    store.set_merchant_timezone("m1", "UTC")  # the zone it had: nothing changes
    assert store.watermark("days_through/m1", v) == 2 * 86_400
    assert store.days_to_rederive(v) == []
    store.set_merchant_timezone("m1", "Asia/Kolkata")
    assert store.read_days(v, "m1", ["orders"], 0, 2 * 86_400) == []
    assert store.watermark("days_through/m1", v) == 0
    assert store.days_to_rederive(v) == ["m1"]


def test_a_seal_under_derived_days_marks_them_stale_until_they_are_replaced(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    v = versioned(store)
    day = 86_400
    store.replace_days(v, "m1", 0, day, partials(row("m1", bucket=0)), days_through=day)
    store.replace_days(v, "m2", 0, day, partials(row("m2", bucket=0)), days_through=day)
    store.write_sealed_hour(v, 2 * 3600, partials(row("m1", bucket=2 * 3600)), "a", 1)
    store.write_sealed_hour(v, 5 * 3600, partials(row("m1", bucket=5 * 3600)), "b", 1)
    store.write_sealed_hour(v, day, partials(row("m2", bucket=day), row("m3", bucket=day)), "c", 2)
    # m1's days cover its hours (the first one stands); m2's and m3's do not cover theirs
    assert store.stale_days(v) == {"m1": 2 * 3600}
    assert store.stale_days(v + 1) == {}
    store.replace_days(v, "m1", 3 * 3600, day, partials())  # not from that hour's day on
    assert store.stale_days(v) == {"m1": 2 * 3600}
    store.replace_days(v, "m1", 0, day, partials(row("m1", bucket=0, count=2)))
    assert store.stale_days(v) == {}
    store.write_sealed_hour(v, 5 * 3600, partials(), "d", 0)  # m1's rows go: stale all the same
    assert store.stale_days(v) == {"m1": 5 * 3600}


def test_reads_by_day_take_days_then_final_then_speed_rows(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    day = 86_400
    store.write(v, "agg", partials(*(row(bucket=b, count=1) for b in (0, day, 2 * day))), {0: 1})
    store.write_sealed_hour(v, day, partials(row(bucket=day, count=5)), "f", 5)
    store.replace_days(v, "m1", 0, day, partials(row(bucket=0, count=7)), days_through=day)
    got = store.read_rows_by_day(v, "m1", ["orders"], 0, 3 * day, "", 2 * day)
    assert [(r[4], r[5]) for r in got] == [(0, 7), (day, 5), (2 * day, 1)]
    assert store.read_rows_by_day(v, "m1", ["orders"], 0, 3 * day, "", None) == [
        tuple(r.values()) for r in partials(row(bucket=0, count=7)).to_pylist()
    ] + store.read_rows(v, "m1", ["orders"], day, 3 * day)
    # from a start past the derived days, or for another merchant: the plain read
    assert store.read_rows_by_day(v, "m1", ["orders"], day, 3 * day, "", 2 * day) == (
        store.read_rows(v, "m1", ["orders"], day, 3 * day, "", 2 * day)
    )
    assert store.read_rows_by_day(v, "m2", ["orders"], 0, 3 * day) == []


def test_merchants_with_final_rows_in_a_range(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    store.write_sealed_hour(v, 0, partials(row("m2", bucket=0), row("m1", bucket=900)), "f", 2)
    store.write_sealed_hour(v, 3600, partials(row("m3", bucket=3600)), "f", 1)
    assert store.final_merchants(v, 0, 3600) == ["m1", "m2"]
    assert store.final_merchants(v, 0, 7200) == ["m1", "m2", "m3"]
    assert store.final_merchants(v + 1, 0, 7200) == []
    # by time zone: a merchant without one is in UTC
    store.set_merchant_timezone("m2", "Asia/Kolkata")
    store.set_merchant_timezone("m3", "UTC")
    store.set_merchant_timezone("m9", "Asia/Kolkata")  # no final rows
    assert store.final_merchants(v, 0, 7200, ["UTC"]) == ["m1", "m3"]
    assert store.final_merchants(v, 0, 7200, ["Asia/Kolkata"]) == ["m2"]
    assert store.final_merchants(v, 0, 7200, ["Asia/Kolkata", "UTC"]) == ["m1", "m2", "m3"]
    assert store.final_merchants(v, 3600, 7200, ["Asia/Kolkata"]) == []
    assert store.final_merchants(v, 0, 7200, ["America/New_York"]) == []


def test_a_write_failing_half_way_changes_nothing(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    good = hll(["x"])
    store.write(v, "agg", partials(row("a", count=1), row("b", sketch=good)), {0: 5, 1: 7})
    before = (read_rows(store, v, "a", ["orders"]), read_rows(store, v, "b", ["orders"]))
    # In key order "a" is merged first; then "b"'s sketch, which is garbage, fails to merge.
    broken = partials(
        row("a", count=10),
        row("a", bucket=900, count=1),
        row("b", sketch=b"H-not-a-sketch"),
    )
    with pytest.raises(StoreWriteError):
        store.write(v, "agg", broken, {0: 8, 1: 9, 2: 1})
    assert (read_rows(store, v, "a", ["orders"]), read_rows(store, v, "b", ["orders"])) == before
    assert store.offsets("agg") == {0: 5, 1: 7}
    store.write(v, "agg", partials(row("a", count=10)), {0: 8})
    assert read_rows(store, v, "a", ["orders"]) == [row("a", count=11)]
    assert store.offsets("agg") == {0: 8, 1: 7}


@pytest.mark.parametrize(
    "bad",
    [
        pa.table({"merchant_id": ["m1"], "metric": ["orders"]}),
        partials(row(), row(bucket=900)).set_column(
            0, "merchant_id", pa.array(["m1", None], pa.string())
        ),
        partials(row(bucket=450)),
        partials(row()).set_column(5, "count", pa.array(["many"], pa.string())),
    ],
    ids=["missing-columns", "null-merchant", "off-grid-bucket", "text-count"],
)
def test_invalid_partials_change_nothing(store_factory: StoreFactory, bad: pa.Table) -> None:
    store = store_factory()
    v = versioned(store)
    store.write(v, "agg", partials(row(count=1)), {0: 1})
    with pytest.raises(InvalidPartialsError):
        store.write(v, "agg", bad, {0: 2})
    assert read_rows(store, v, "m1", ["orders"]) == [row(count=1)]
    assert store.offsets("agg") == {0: 1}


def test_partials_in_another_column_order_or_compatible_types(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    v = versioned(store)
    table = partials(row(count=3))
    reordered = table.select(list(reversed(table.column_names)))
    narrow = reordered.set_column(
        reordered.column_names.index("count"), "count", pa.array([3], pa.int32())
    )
    store.write(v, "agg", narrow, {})
    assert read_rows(store, v, "m1", ["orders"]) == [row(count=3)]


def test_write_to_an_unknown_version_is_refused(store_factory: StoreFactory) -> None:
    store = store_factory()
    with pytest.raises(UnknownVersionError):
        store.write(41, "agg", partials(row()), {0: 1})
    assert store.offsets("agg") == {}


# -- offsets ----------------------------------------------------------------------------------


def test_offsets_per_consumer_and_partition(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    assert store.offsets("agg") == {}
    store.write(v, "agg", partials(row()), {0: 10, 3: 4})
    store.write(v, "agg", PARTIAL_SCHEMA.empty_table(), {3: 9, 5: 1})
    store.write(v, "other", PARTIAL_SCHEMA.empty_table(), {0: 100})
    store.write(v, "agg", partials(row()), {})
    assert store.offsets("agg") == {0: 10, 3: 9, 5: 1}
    assert store.offsets("other") == {0: 100}
    assert store.offsets("nobody") == {}
    assert read_rows(store, v, "m1", ["orders"]) == [row(count=2)]


def test_a_write_expecting_other_offsets_is_refused_whole(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    store.write(v, "agg", partials(row()), {0: 10}, expect={0: None})
    with pytest.raises(OffsetConflictError) as refused:
        store.write(v, "agg", partials(row()), {0: 20, 1: 5}, expect={0: 10, 1: 3})
    assert refused.value.conflicts == {1: (3, None)}
    with pytest.raises(OffsetConflictError):
        store.write(v, "agg", partials(row()), {0: 20}, expect={0: None})
    assert store.offsets("agg") == {0: 10}
    assert read_rows(store, v, "m1", ["orders"]) == [row(count=1)]
    store.write(v, "agg", partials(row()), {0: 20, 1: 5}, expect={0: 10, 1: None})
    assert store.offsets("agg") == {0: 20, 1: 5}
    assert read_rows(store, v, "m1", ["orders"]) == [row(count=2)]


@pytest.mark.parametrize("stored", [None, 7])
def test_of_writers_expecting_the_same_offsets_exactly_one_lands(
    store_factory: StoreFactory, stored: int | None
) -> None:
    # Aggregators in one group while a partition moves between them: each read offset
    # ``stored`` and counted the same records; only one may count them.
    first = store_factory()
    v = versioned(first)
    if stored is not None:
        first.write(v, "agg", PARTIAL_SCHEMA.empty_table(), {0: stored, 1: stored})
    writers = [first, *(store_factory() for _ in range(3))]
    barrier = threading.Barrier(len(writers))
    outcomes: list[str] = []

    def write(store: Store, partition_order: list[int]) -> None:
        barrier.wait()
        try:
            store.write(
                v,
                "agg",
                partials(row()),
                {p: 100 for p in partition_order},
                expect={p: stored for p in partition_order},
            )
            outcomes.append("landed")
        except OffsetConflictError:
            outcomes.append("fenced")

    threads = [
        threading.Thread(target=write, args=(store, [0, 1] if i % 2 else [1, 0]))
        for i, store in enumerate(writers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["fenced"] * 3 + ["landed"]
    assert read_rows(first, v, "m1", ["orders"]) == [row(count=1)]
    assert first.offsets("agg") == {0: 100, 1: 100}


# -- versions, merchants, life cycle ----------------------------------------------------------


def test_version_registration_is_idempotent(store_factory: StoreFactory) -> None:
    store = store_factory()
    assert store.versions() == []
    first = store.register_version("aaa", "metrics: [a]")
    second = store.register_version("bbb", "metrics: [b]")
    assert first != second
    assert store.register_version("aaa", "metrics: [a]  # reformatted") == first
    versions = store.versions()
    assert [(x.id, x.hash, x.text, x.state) for x in versions] == [
        (first, "aaa", "metrics: [a]", "registered"),
        (second, "bbb", "metrics: [b]", "registered"),
    ]
    assert versions[0].created_at.tzinfo is not None


def test_serving_version_pointer(store_factory: StoreFactory) -> None:
    store = store_factory()
    assert store.serving_version() is None
    first = store.register_version("aaa", "a")
    second = store.register_version("bbb", "b")
    store.set_serving_version(first)
    assert store.serving_version() == first
    store.set_serving_version(second)
    assert store.serving_version() == second
    with pytest.raises(UnknownVersionError):
        store.set_serving_version(second + 100)
    assert store.serving_version() == second


def test_merchant_timezone(store_factory: StoreFactory) -> None:
    store = store_factory()
    assert store.merchant_timezone("m1") is None
    store.set_merchant_timezone("m1", "Asia/Kathmandu")
    store.set_merchant_timezone("m2", "UTC")
    assert store.merchant_timezone("m1") == "Asia/Kathmandu"
    store.set_merchant_timezone("m1", "America/St_Johns")
    assert store.merchant_timezone("m1") == "America/St_Johns"
    assert store.merchant_timezone("m2") == "UTC"
    for bad in ("Mars/Olympus_Mons", "", "../../etc/passwd", "localtime", "asia/kolkata"):
        with pytest.raises(InvalidTimezoneError, match="time zone"):
            store.set_merchant_timezone("m1", bad)
    assert store.merchant_timezone("m1") == "America/St_Johns"
    assert store.merchant_timezones(["m2", "m0", "m1"]) == {
        "m1": "America/St_Johns",
        "m2": "UTC",
    }
    many = [f"m{i:04d}" for i in range(1200)]  # more than one statement's worth
    for merchant in many[::300]:
        store.set_merchant_timezone(merchant, "Asia/Tokyo")
    assert store.merchant_timezones(many) == dict.fromkeys(many[::300], "Asia/Tokyo")
    assert store.merchant_timezones([]) == {}
    assert store.timezones_in_use() == ["America/St_Johns", "Asia/Tokyo", "UTC"]


def test_closed_store_refuses_work(store_factory: StoreFactory) -> None:
    store = store_factory()
    with store as same:
        assert same is store
        v = versioned(store)
    with pytest.raises(StoreClosedError):
        store.read(v, "m1", ["orders"], *EVERYTHING)
    with pytest.raises(StoreClosedError):
        store.write(v, "agg", partials(row()), {})


def test_readers_in_threads_see_whole_writes(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    writes = 150
    # Every write adds one to two buckets: a read that saw half a write would see them differ.
    pair = partials(row(bucket=0), row(bucket=900))
    done = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(writes):
                store.write(v, "agg", pair, {0: i + 1})
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def reader() -> None:
        try:
            last = 0
            while not done.is_set() or last < writes:
                rows = read_rows(store, v, "m1", ["orders"])
                counts = [r["count"] for r in rows]
                assert len(counts) in (0, 2)
                assert len(set(counts)) <= 1
                current = counts[0] if counts else 0
                assert isinstance(current, int)
                assert current >= last
                last = current
                seen.append(current)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert read_rows(store, v, "m1", ["orders"]) == [
        row(count=writes),
        row(bucket=900, count=writes),
    ]
    assert store.offsets("agg") == {0: writes}
    assert seen


# -- job runs and leases ---------------------------------------------------------------------


def test_job_runs_are_recorded_attempt_by_attempt(store_factory: StoreFactory) -> None:
    store = store_factory()
    assert store.job_runs() == []
    before = datetime.now(UTC) - timedelta(seconds=1)
    first = store.start_job_run("seal", {"scheduled_for": "2026-11-26T10:05:00Z"}, 1)
    second = store.start_job_run("compact", {}, 1)
    store.finish_job_run(first, "failed", error="exit status 3", output="x" * 5000)
    third = store.start_job_run("seal", {"scheduled_for": "2026-11-26T10:05:00Z"}, 2)
    store.finish_job_run(third, "succeeded", output="")
    assert len({first, second, third}) == 3

    runs = store.job_runs()
    assert [r.id for r in runs] == [third, second, first]  # newest first
    assert [(r.job, r.attempt, r.status) for r in runs] == [
        ("seal", 2, "succeeded"),
        ("compact", 1, "running"),
        ("seal", 1, "failed"),
    ]
    done, running, failed = runs
    assert failed.params == {"scheduled_for": "2026-11-26T10:05:00Z"}
    assert (failed.error, failed.output) == ("exit status 3", "x" * 5000)
    assert (done.error, done.output) == (None, "")
    assert (running.finished_at, running.error, running.output) == (None, None, None)
    after = datetime.now(UTC) + timedelta(seconds=1)
    for run in (done, failed):
        assert run.finished_at is not None
        assert before <= run.started_at <= run.finished_at <= after

    assert [r.id for r in store.job_runs("seal")] == [third, first]
    assert [r.id for r in store.job_runs(limit=2)] == [third, second]
    assert [r.id for r in store.job_runs("seal", limit=1)] == [third]
    assert store.job_runs("nothing") == []


def test_job_run_params_round_trip_as_json(store_factory: StoreFactory) -> None:
    store = store_factory()
    params = {"from": "2026-11-01", "to": "2026-11-02", "n": 3, "extra": ["a", 1], "x": None}
    run_id = store.start_job_run("seal", params, 1)
    params["n"] = 4  # the store keeps what it was given, not a live reference
    (run,) = store.job_runs()
    assert run.id == run_id
    assert run.params == {
        "from": "2026-11-01",
        "to": "2026-11-02",
        "n": 3,
        "extra": ["a", 1],
        "x": None,
    }


def test_finishing_an_unknown_run_is_refused(store_factory: StoreFactory) -> None:
    store = store_factory()
    run_id = store.start_job_run("seal", {}, 1)
    with pytest.raises(UnknownJobRunError, match=str(run_id + 7)):
        store.finish_job_run(run_id + 7, "succeeded")
    assert store.job_runs()[0].status == "running"


def test_lease_is_held_renewed_released_and_expires(store_factory: StoreFactory) -> None:
    store = store_factory()
    assert store.acquire_lease("scheduler", "a", 30)
    assert not store.acquire_lease("scheduler", "b", 30)
    assert store.acquire_lease("scheduler", "a", 30)  # renewed by its holder
    assert store.acquire_lease("other", "b", 30)  # leases are independent by name
    store.release_lease("scheduler", "b")  # not b's: nothing happens
    assert not store.acquire_lease("scheduler", "b", 30)
    store.release_lease("scheduler", "a")
    assert store.acquire_lease("scheduler", "b", 0.2)
    assert not store.acquire_lease("scheduler", "a", 30)
    time.sleep(0.3)
    assert store.acquire_lease("scheduler", "a", 30)  # b's expired
    assert not store.acquire_lease("scheduler", "b", 30)


def test_a_renewal_extends_the_lease(store_factory: StoreFactory) -> None:
    store = store_factory()
    assert store.acquire_lease("scheduler", "a", 0.3)
    time.sleep(0.2)
    assert store.acquire_lease("scheduler", "a", 0.3)
    time.sleep(0.2)  # 0.4 s after the first take, 0.2 s after the renewal
    assert not store.acquire_lease("scheduler", "b", 30)


def test_exactly_one_of_racing_holders_gets_a_lease(store_factory: StoreFactory) -> None:
    store = store_factory()
    holders = [f"h{i}" for i in range(8)]
    start = threading.Barrier(len(holders))
    won: list[str] = []

    def race(holder: str) -> None:
        start.wait()
        if store.acquire_lease("scheduler", holder, 30):
            won.append(holder)

    threads = [threading.Thread(target=race, args=(h,)) for h in holders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert all(store.acquire_lease("scheduler", h, 30) == (h == won[0]) for h in holders)


# -- the merchant-scoped choke point ----------------------------------------------------------


def _public_methods(cls: type) -> set[str]:
    # a class method makes a store (SqliteStore.temporary): what it makes has only these doors
    return {
        name
        for name in dir(cls)
        if not name.startswith("_")
        and callable(getattr(cls, name))
        and not isinstance(inspect.getattr_static(cls, name), classmethod)
    }


@pytest.mark.parametrize("backend", [SqliteStore, PostgresStore])
def test_every_rollup_read_requires_a_merchant(backend: type) -> None:
    # A backend may add no public method the Store protocol lacks (a side door), and every
    # protocol method that hands out rollup data takes the merchant it is scoped to.
    protocol = _public_methods(Store)
    assert _public_methods(backend) == protocol
    rollup_reads = {"read", "members"}
    assert rollup_reads <= protocol
    for name in protocol:
        parameters = inspect.signature(getattr(Store, name)).parameters
        returns = str(inspect.signature(getattr(Store, name)).return_annotation)
        if name in rollup_reads or "Table" in returns:
            assert list(parameters)[1:3] == ["version", "merchant_id"], name


def test_invalid_counts_add_up_and_total_across_merchants(store_factory: StoreFactory) -> None:
    store = store_factory()
    v = versioned(store)
    store.write(v, "agg", partials(row("m1", "revenue", bucket=0, count=2, sum=9, invalid=1)), {})
    store.write(v, "agg", partials(row("m1", "revenue", bucket=0, count=0, invalid=2)), {})
    store.write(v, "agg", partials(row("m2", "revenue", bucket=3600, count=1, sum=1)), {})
    store.write(v, "agg", partials(row("m2", "orders", bucket=3600, count=1, invalid=4)), {})
    # a dimension row repeats its total's events: not counted twice
    store.write(v, "agg", partials(row("m2", "orders", "channel", "web", 3600, invalid=4)), {})
    (stored,) = read_rows(store, v, "m1", ["revenue"])
    assert (stored["count"], stored["sum"], stored["invalid"]) == (2, 9, 3)
    assert store.invalid_totals(v, 0, 7200) == {"revenue": 3, "orders": 4}
    assert store.invalid_totals(v, 900, 7200) == {"orders": 4}
    # sealed: final rows before the watermark stand for their buckets, speed rows after
    final = partials(row("m1", "revenue", bucket=0, count=3, sum=9, invalid=5))
    store.write_sealed_hour(v, 0, final, "f", 8)
    assert store.invalid_totals(v, 0, 7200, sealed_through=3600) == {"revenue": 5, "orders": 4}
    assert store.invalid_totals(v + 1, 0, 7200) == {}


def test_concurrent_seals_of_one_hour_replace_never_add(store_factory: StoreFactory) -> None:
    # two seal processes of the same hour (the scheduler's and an operator's) once both
    # deleted the hour's rows, then both inserted theirs: the counts doubled on PostgreSQL
    store = store_factory()
    v = versioned(store)
    rows = partials(*(row(f"m{i}", bucket=900 * (i % 4), count=5) for i in range(200)))
    failures: list[BaseException] = []

    def seal() -> None:
        try:
            for _ in range(5):
                store.write_sealed_hour(v, 0, rows, "f", 1000)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=seal) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    for i in (0, 1, 199):
        (stored,) = store.read(v, f"m{i}", ["orders"], 0, 3600, "", 3600).to_pylist()
        assert stored["count"] == 5
