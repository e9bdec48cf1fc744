"""The rollup kernel against a plain-Python recomputation, and its merge laws."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from mercato.events.model import NormalizedEvent, ObjectEvent, encode_event
from mercato.metrics.batch import BatchBuilder
from mercato.metrics.definitions import load_definitions, parse_definitions
from mercato.metrics.kernel import (
    BUCKET_SECONDS,
    NONE_MEMBER,
    OVERFLOW,
    SUM_LIMIT,
    merge,
    rollup,
    sketch_estimate,
    sketch_quantile,
    sort_partials,
)

T0 = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
DEFINITIONS = load_definitions()


def make_event(i, kind, merchant, minutes, **properties) -> NormalizedEvent:
    at = T0 + timedelta(minutes=minutes)
    return NormalizedEvent(
        event_id=f"e{i}",
        merchant_id=merchant,
        type=kind,
        event_time=at,
        received_at=at + timedelta(seconds=3),
        properties=properties,
        context={"country": ["DE", "IN", "NP"][i % 3]} if i % 5 else {},
    )


def events_strategy():
    kinds = st.sampled_from(["order_completed", "refund", "page_viewed", "api_request"])
    return st.lists(
        st.tuples(
            kinds,
            st.sampled_from(["m_1", "m_2", "m_3"]),
            st.integers(0, 24 * 60),
            st.integers(1, 100_000),
            st.sampled_from(["web", "pos", None]),
            st.sampled_from([200, 404, 500, 503]),
            st.floats(0.1, 2000, allow_nan=False),
        ),
        max_size=60,
    ).map(
        lambda rows: [
            make_event(
                i, kind, merchant, minute,
                amount=amount, channel=channel, status=status, latency_ms=latency,
                customer_id=f"c{amount % 7}", session_id=f"s{amount % 11}",
            )
            for i, (kind, merchant, minute, amount, channel, status, latency) in enumerate(rows)
        ]
    )  # fmt: skip


def batch(events):
    return BatchBuilder(DEFINITIONS).batch([encode_event(e) for e in events])


def exact(partials):
    """Partials without sketches, in key order, as plain rows."""
    return sort_partials(partials).drop_columns(["sketch"]).to_pylist()


def sketches(partials):
    out = {}
    for row in sort_partials(partials).to_pylist():
        if row["sketch"] is not None:
            key = (
                row["merchant_id"],
                row["metric"],
                row["dimension"],
                row["member"],
                row["bucket"],
            )
            out[key] = row["sketch"]
    return out


def bucket_of(at: datetime) -> int:
    seconds = int(at.timestamp())
    return seconds - seconds % BUCKET_SECONDS


class Cell(TypedDict):
    count: int
    sum: int | None


# (merchant, metric, dimension, member, bucket)
CellKey = tuple[str, str, str, str, int]


def recompute(events: list[NormalizedEvent]) -> dict[CellKey, Cell]:
    """count, sum, min, max per (merchant, metric, dimension, member, bucket), in plain Python,
    straight from the definitions' meaning (independent of the kernel)."""
    out: dict[CellKey, Cell] = defaultdict(lambda: {"count": 0, "sum": None})
    for metric in DEFINITIONS.stored:
        if metric.kind not in ("count", "sum"):
            continue
        for e in events:
            if e.type not in metric.events:
                continue
            if metric.name == "api_errors" and not e.properties.get("status", 0) >= 500:
                continue
            value: int | None = None
            if metric.kind == "sum":
                amount = e.properties.get("amount")
                if not isinstance(amount, int):
                    continue
                value = amount
            rows = [("", "")]
            for name in metric.dimensions:
                path = DEFINITIONS.dimensions[name].field
                root, key = path.split(".")
                member = getattr(e, root).get(key)
                rows.append((name, NONE_MEMBER if member is None else str(member)))
            for dimension, member in rows:
                cell = out[(e.merchant_id, metric.name, dimension, member, bucket_of(e.event_time))]
                cell["count"] += 1
                if value is not None:  # a sum metric's integer amount
                    cell["sum"] = (cell["sum"] or 0) + value
    return out


@settings(max_examples=60, deadline=None)
@given(events=events_strategy())
def test_counts_and_sums_equal_a_plain_recomputation(events):
    partials = rollup(batch(events), DEFINITIONS)
    got = {
        (r["merchant_id"], r["metric"], r["dimension"], r["member"], r["bucket"]): {
            "count": r["count"],
            "sum": r["sum"],
        }
        for r in partials.to_pylist()
        if DEFINITIONS.metrics[r["metric"]].kind in ("count", "sum")
    }
    assert got == dict(recompute(events))


@settings(max_examples=60, deadline=None)
@given(events=events_strategy(), data=st.data())
def test_merging_any_split_and_order_equals_the_whole(events, data):
    whole = rollup(batch(events), DEFINITIONS)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=4)))
    pieces = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    pieces = data.draw(st.permutations(pieces))
    partials = [rollup(batch(piece), DEFINITIONS) for piece in pieces if piece]
    # merge is associative: fold in a random tree shape
    while len(partials) > 1:
        i = data.draw(st.integers(0, len(partials) - 2))
        partials[i : i + 2] = [merge(partials[i : i + 2])]
    merged = partials[0] if partials else rollup(batch([]), DEFINITIONS)
    assert exact(merged) == exact(merge([whole]))
    got, want = sketches(merged), sketches(whole)
    assert got.keys() == want.keys()
    for key, blob in got.items():
        if blob[:1] == b"H":  # HLL in exact (list) mode for small counts: equal estimates
            assert sketch_estimate(blob) == sketch_estimate(want[key])
        else:  # KLL: a merged sketch is exact while under k items
            assert sketch_quantile(blob, 0.5) == sketch_quantile(want[key], 0.5)


def test_sketches_estimate_within_their_error():
    events = [
        make_event(i, "page_viewed", "m_1", 1, session_id=f"s{i % 5000}") for i in range(20_000)
    ] + [
        make_event(i, "api_request", "m_1", 1, latency_ms=float(i % 1000), status=200)
        for i in range(20_000)
    ]
    halves = [rollup(batch(events[::2]), DEFINITIONS), rollup(batch(events[1::2]), DEFINITIONS)]
    merged = {(r["metric"], r["dimension"]): r for r in merge(halves).to_pylist()}
    sessions = merged[("sessions", "")]
    assert abs(sketch_estimate(sessions["sketch"]) - 5000) / 5000 < 0.05
    latency = merged[("api_latency", "")]
    assert abs(sketch_quantile(latency["sketch"], 0.95) - 950) < 0.02 * 1000
    assert latency["count"] == 20_000


def test_min_max_where_operators_and_time_fields():
    definitions = parse_definitions(
        """
        dimensions: [{name: tier, field: properties.tier}]
        metrics:
          - {name: biggest, kind: max, events: [o], value: properties.amount}
          - {name: smallest, kind: min, events: [o], value: properties.amount}
          - {name: gold, kind: count, events: [o], where: [{field: properties.tier, value: gold}]}
          - {name: not_gold, kind: count, events: [o],
             where: [{field: properties.tier, op: ne, value: gold}]}
          - {name: some_tiers, kind: count, events: [o],
             where: [{field: properties.tier, op: in, value: [gold, silver]}]}
          - {name: tierless, kind: count, events: [o],
             where: [{field: properties.tier, op: missing}]}
          - {name: large, kind: count, events: [o],
             where: [{field: properties.amount, op: gt, value: 100}]}
          - {name: exactly_5, kind: count, events: [o],
             where: [{field: properties.amount, value: 5}]}
          - {name: by_arrival, kind: count, events: [o], time: received_at}
          - {name: by_order_day, kind: count, events: [o], time: properties.ordered_at}
          - {name: tiers, kind: count, events: [o], dimensions: [tier]}
        """
    )
    at = T0 + timedelta(minutes=14, seconds=59)
    rows: list[dict[str, Any]] = [
        {"amount": 5, "tier": "gold", "ordered_at": "2026-03-01T10:07:00+05:45"},
        {"amount": 500, "tier": "silver"},
        {"amount": 50},
        {"amount": 1.5, "tier": "bronze", "ordered_at": "yesterday"},  # not an integer amount
        {"amount": "7", "tier": "gold"},
    ]
    events = [
        ObjectEvent(
            event_id=f"o{i}", merchant_id="m", type="o", event_time=at,
            received_at=at + timedelta(seconds=2), properties=properties,
        )
        for i, properties in enumerate(rows)
    ]  # fmt: skip
    values = [encode_event(e) for e in events]
    result = rollup(BatchBuilder(definitions).batch(values), definitions)
    by_metric: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in result.to_pylist():
        by_metric[r["metric"]].append(r)
    assert by_metric["biggest"][0]["max"] == 500
    assert by_metric["smallest"][0]["min"] == 5
    assert by_metric["biggest"][0]["count"] == 3  # non-integer amounts are left out
    assert by_metric["biggest"][0]["invalid"] == 2  # and counted as invalid: 1.5 and "7"
    assert by_metric["gold"][0]["invalid"] == 0
    assert by_metric["gold"][0]["count"] == 2
    assert by_metric["not_gold"][0]["count"] == 3
    assert by_metric["some_tiers"][0]["count"] == 3
    assert by_metric["tierless"][0]["count"] == 1
    assert by_metric["large"][0]["count"] == 1
    assert by_metric["exactly_5"][0]["count"] == 1
    (arrival,) = by_metric["by_arrival"]
    assert arrival["bucket"] == bucket_of(at) + BUCKET_SECONDS  # 2 s later: the next bucket
    order_day, unusable = sorted(by_metric["by_order_day"], key=lambda r: r["bucket"])
    assert order_day["bucket"] == bucket_of(datetime(2026, 3, 1, 4, 22, tzinfo=UTC))
    assert (order_day["count"], order_day["invalid"]) == (1, 0)
    # "yesterday" is no time: counted as invalid in the event's own bucket, not silently lost
    assert (unusable["bucket"], unusable["count"], unusable["invalid"]) == (bucket_of(at), 0, 1)
    members = {r["member"]: r["count"] for r in by_metric["tiers"] if r["dimension"] == "tier"}
    assert members == {"gold": 2, "silver": 1, "bronze": 1, NONE_MEMBER: 1}
    assert [r["count"] for r in by_metric["tiers"] if r["dimension"] == ""] == [5]


def test_values_in_both_record_forms_decode_the_same():
    event = make_event(1, "order_completed", "m_1", 3, amount=10, channel="web")
    as_object = msgspec.json.encode(ObjectEvent(**msgspec.structs.asdict(event)))
    builder = BatchBuilder(DEFINITIONS)
    a = rollup(builder.batch([encode_event(event)]), DEFINITIONS)
    b = rollup(builder.batch([as_object]), DEFINITIONS)
    assert exact(a) == exact(b)
    assert a.num_rows > 0


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_sums_are_exact_or_overflow_never_wrapped(data):
    big = 2**53 - 1
    amounts = data.draw(
        st.lists(st.sampled_from([big, big - 1, 1, 2**52]), min_size=1, max_size=3000)
    )
    events = [
        NormalizedEvent(
            event_id=f"e{i}", merchant_id="m_1", type="order_completed", event_time=T0,
            received_at=T0, properties={"amount": amount},
        )
        for i, amount in enumerate(amounts)
    ]  # fmt: skip
    cut = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=4)))
    pieces = [events[a:b] for a, b in zip([0, *cut], [*cut, len(events)], strict=True)]
    merged = merge([rollup(batch(piece), DEFINITIONS) for piece in pieces if piece])
    [gross] = [
        r["sum"]
        for r in merged.to_pylist()
        if r["metric"] == "gross_revenue" and r["dimension"] == ""
    ]
    exact = sum(amounts)
    assert gross == (exact if exact <= SUM_LIMIT else OVERFLOW)
