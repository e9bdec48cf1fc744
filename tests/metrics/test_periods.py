import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercato.metrics.periods import BUCKET, assign, local_midnight, periods


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def day_lengths(zone_name, start, days):
    zone = ZoneInfo(zone_name)
    begin = local_midnight(start, zone)
    bounds = periods(begin, begin + timedelta(days=days), "day", zone)
    return [(b - a) // 3600 for a, b in itertools.pairwise(bounds)], bounds


def test_dst_days_have_23_and_25_hours():
    from datetime import date

    spring, _ = day_lengths("Europe/Berlin", date(2026, 3, 28), 3)
    assert spring == [24, 23, 24]
    autumn, _ = day_lengths("Europe/Berlin", date(2026, 10, 24), 3)
    assert autumn == [24, 25, 24]
    new_york, _ = day_lengths("America/New_York", date(2026, 3, 7), 3)
    assert new_york == [24, 23, 24]


@pytest.mark.parametrize(
    ("zone", "utc_start"),
    [
        ("Asia/Kolkata", utc(2026, 11, 25, 18, 30)),
        ("Asia/Kathmandu", utc(2026, 11, 25, 18, 15)),
        ("Australia/Eucla", utc(2026, 11, 25, 15, 15)),  # +8:45
        ("UTC", utc(2026, 11, 26, 0, 0)),
    ],
)
def test_days_start_at_the_local_midnight_instant(zone, utc_start):
    from datetime import date

    start = local_midnight(date(2026, 11, 26), ZoneInfo(zone))
    assert start.astimezone(UTC) == utc_start
    bounds = periods(start, start + timedelta(hours=1), "day", ZoneInfo(zone))
    assert bounds[0] == int(utc_start.timestamp())


def test_local_hours_in_a_half_hour_zone_start_at_half_past_utc():
    zone = ZoneInfo("Asia/Kolkata")
    at = utc(2026, 11, 26, 10, 50)  # 16:20 in Kolkata
    bounds = periods(at, at + timedelta(hours=2), "hour", zone)
    assert [datetime.fromtimestamp(b, UTC).strftime("%H:%M") for b in bounds] == [
        "10:30",
        "11:30",
        "12:30",
        "13:30",
    ]


def test_a_day_that_skips_midnight_starts_at_one():
    from datetime import date

    zone = ZoneInfo("America/Havana")  # clocks go from 00:00 to 01:00 on this day
    start = local_midnight(date(2024, 3, 10), zone)
    assert (start.hour, start.minute) == (1, 0)


def test_weeks_start_on_monday_and_months_on_the_first():
    zone = ZoneInfo("Europe/Berlin")
    at = datetime(2026, 11, 26, 12, 0, tzinfo=zone)  # a Thursday
    week = periods(at, at, "week", zone)
    assert datetime.fromtimestamp(week[0], zone) == datetime(2026, 11, 23, tzinfo=zone)
    months = periods(at, datetime(2027, 1, 15, tzinfo=zone), "month", zone)
    assert [datetime.fromtimestamp(b, zone).strftime("%Y-%m-%d %H:%M") for b in months] == [
        "2026-11-01 00:00",
        "2026-12-01 00:00",
        "2027-01-01 00:00",
        "2027-02-01 00:00",
    ]


ZONES = ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu",
         "Australia/Lord_Howe", "America/St_Johns", "Pacific/Chatham", "UTC"]  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    granularity=st.sampled_from(["15m", "hour", "day", "week", "month"]),
    start=st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1), timezones=st.just(UTC)),
    hours=st.integers(1, 24 * 40),
)
def test_every_bucket_falls_in_exactly_one_local_period(zone, granularity, start, hours):
    tz = ZoneInfo(zone)
    end = start + timedelta(hours=hours)
    bounds = periods(start, end, granularity, tz)
    assert all(b % BUCKET == 0 for b in bounds)
    assert bounds == sorted(set(bounds))
    assert bounds[0] <= int(start.timestamp())
    assert bounds[-1] >= int(end.timestamp())
    first = bounds[0]
    buckets = list(range(first, bounds[-1], BUCKET))
    index = assign(buckets, bounds)
    assert -1 not in index
    assert index == sorted(index)
    if granularity in ("day", "week", "month"):
        for b in bounds:  # every boundary is a local midnight
            local = datetime.fromtimestamp(b, tz)
            assert local.minute == 0
            assert local.hour in (0, 1)
