"""Series from stored partials equal a plain recomputation in the merchant's time zone."""

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mercato.events.model import NormalizedEvent, encode_event
from mercato.metrics.batch import BatchBuilder
from mercato.metrics.definitions import load_definitions
from mercato.metrics.kernel import rollup
from mercato.metrics.periods import local_midnight, periods
from mercato.query.series import MerchantView, Series, timeseries
from mercato.store.sqlite import SqliteStore

DEFINITIONS = load_definitions()
START = datetime(2026, 3, 27, 0, 0, tzinfo=UTC)


def orders(n=3000):
    events = []
    for i in range(n):
        at = START + timedelta(minutes=7 * i)  # about 14.5 days, across a DST change
        events.append(
            NormalizedEvent(
                event_id=f"o{i}",
                merchant_id="m_1" if i % 4 else "m_2",
                type="order_completed",
                event_time=at,
                received_at=at,
                properties={"amount": 100 + i % 50, "channel": ["web", "pos", "app"][i % 3]},
            )
        )
    return events


def numbers(series: Series) -> list[float]:
    """The values of a series of counts or sums: a number for every period."""
    out: list[float] = []
    for value in series.values:
        assert isinstance(value, int | float), value
        out.append(value)
    return out


@pytest.fixture(scope="module")
def loaded():
    events = orders()
    store = SqliteStore.temporary()
    version = store.register_version(DEFINITIONS.version, "{}")
    table = BatchBuilder(DEFINITIONS).batch([encode_event(e) for e in events])
    store.write(version, "test", rollup(table, DEFINITIONS), {})
    return store, version, events


@pytest.mark.parametrize("zone_name", ["Asia/Kolkata", "Asia/Kathmandu", "Europe/Berlin", "UTC"])
def test_daily_orders_and_revenue_equal_a_plain_recomputation(loaded, zone_name):
    store, version, events = loaded
    zone = ZoneInfo(zone_name)
    first = local_midnight(date(2026, 3, 28), zone)
    bounds = periods(first, first + timedelta(days=10), "day", zone)
    view = MerchantView(store, version, "m_1")
    count = timeseries(view, DEFINITIONS, DEFINITIONS.metrics["orders"], bounds)[0].values
    revenue = timeseries(view, DEFINITIONS, DEFINITIONS.metrics["gross_revenue"], bounds)[0].values
    aov = timeseries(view, DEFINITIONS, DEFINITIONS.metrics["average_order_value"], bounds)
    want_count: defaultdict[date, int] = defaultdict(int)
    want_revenue: defaultdict[date, int] = defaultdict(int)
    for e in events:
        if e.merchant_id == "m_1":
            day = e.event_time.astimezone(zone).date()
            want_count[day] += 1
            want_revenue[day] += e.properties["amount"]
    days = [datetime.fromtimestamp(b, zone).date() for b in bounds[:-1]]
    assert count == [want_count[d] for d in days]
    assert revenue == [want_revenue[d] for d in days]
    assert aov[0].values == [
        round(want_revenue[d] / want_count[d], 4) if want_count[d] else None for d in days
    ]


def test_group_by_gives_top_members_and_other(loaded):
    store, version, _events = loaded
    zone = ZoneInfo("UTC")
    bounds = periods(START, START + timedelta(days=3), "day", zone)
    view = MerchantView(store, version, "m_1")
    series = timeseries(
        view, DEFINITIONS, DEFINITIONS.metrics["orders"], bounds, group_by="channel", top=2
    )
    assert [s.member for s in series][-1] == "other"
    assert len(series) == 3
    total = timeseries(view, DEFINITIONS, DEFINITIONS.metrics["orders"], bounds)[0].values
    assert [sum(numbers(s)[i] for s in series) for i in range(len(total))] == total


def test_a_view_sees_only_its_merchant(loaded):
    store, version, events = loaded
    zone = ZoneInfo("UTC")
    bounds = periods(START, START + timedelta(days=20), "month", zone)
    m2 = timeseries(
        MerchantView(store, version, "m_2"), DEFINITIONS, DEFINITIONS.metrics["orders"], bounds
    )
    nobody = timeseries(
        MerchantView(store, version, "m_9"), DEFINITIONS, DEFINITIONS.metrics["orders"], bounds
    )
    assert sum(numbers(m2[0])) == sum(1 for e in events if e.merchant_id == "m_2")
    assert sum(numbers(nobody[0])) == 0
