"""The cron parser: fields, Vixie's day rule, next_after across boundaries, clear errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercato.cron import parse_cron
from mercato.errors import CronError


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def firings(schedule: str, start: str, count: int) -> list[str]:
    cron = parse_cron(schedule)
    when, seen = at(start), []
    for _ in range(count):
        when = cron.next_after(when)
        seen.append(when.strftime("%Y-%m-%d %a %H:%M"))
    return seen


@pytest.mark.parametrize(
    ("schedule", "start", "expected"),
    [
        ("*/5 * * * *", "2026-11-26 10:03:59", ["2026-11-26 Thu 10:05", "2026-11-26 Thu 10:10"]),
        # strictly after: a time that fires itself is not returned again
        ("*/5 * * * *", "2026-11-26 10:05:00", ["2026-11-26 Thu 10:10", "2026-11-26 Thu 10:15"]),
        ("7 * * * *", "2026-11-26 23:59:00", ["2026-11-27 Fri 00:07", "2026-11-27 Fri 01:07"]),
        ("30 3 * * *", "2026-12-31 04:00", ["2027-01-01 Fri 03:30", "2027-01-02 Sat 03:30"]),
        ("0 9-17/4 * * *", "2026-11-26 10:00", ["2026-11-26 Thu 13:00", "2026-11-26 Thu 17:00"]),
        ("0,30 8 * * *", "2026-11-26 08:15", ["2026-11-26 Thu 08:30", "2026-11-27 Fri 08:00"]),
        ("0 0 31 * *", "2026-11-26 00:00", ["2026-12-31 Thu 00:00", "2027-01-31 Sun 00:00"]),
        ("0 0 29 2 *", "2026-11-26 00:00", ["2028-02-29 Tue 00:00", "2032-02-29 Sun 00:00"]),
        ("0 12 * * 1-5", "2026-11-27 13:00", ["2026-11-30 Mon 12:00", "2026-12-01 Tue 12:00"]),
        ("0 12 * * sat,sun", "2026-11-26 00:00", ["2026-11-28 Sat 12:00", "2026-11-29 Sun 12:00"]),
        ("0 0 * * 7", "2026-11-26 00:00", ["2026-11-29 Sun 00:00", "2026-12-06 Sun 00:00"]),
        ("0 0 1 jan-mar/2 *", "2026-11-26 00:00", ["2027-01-01 Fri 00:00", "2027-03-01 Mon 00:00"]),
        ("@hourly", "2026-11-26 10:00", ["2026-11-26 Thu 11:00", "2026-11-26 Thu 12:00"]),
        ("@weekly", "2026-11-26 10:00", ["2026-11-29 Sun 00:00", "2026-12-06 Sun 00:00"]),
        ("@yearly", "2026-11-26 10:00", ["2027-01-01 Fri 00:00", "2028-01-01 Sat 00:00"]),
    ],
)
def test_next_after(schedule: str, start: str, expected: list[str]) -> None:
    assert firings(schedule, start, len(expected)) == expected


def test_both_day_fields_restricted_match_either() -> None:
    # Vixie cron: the 13th of the month OR any Friday
    assert firings("0 0 13 * 5", "2026-11-26 00:00", 4) == [
        "2026-11-27 Fri 00:00",
        "2026-12-04 Fri 00:00",
        "2026-12-11 Fri 00:00",
        "2026-12-13 Sun 00:00",
    ]


def test_a_day_field_starting_with_a_star_makes_both_required() -> None:
    # "*/2" is restricted, but starts with "*": odd days of the month that are also Mondays
    assert firings("0 0 */2 * mon", "2026-11-26 00:00", 3) == [
        "2026-12-07 Mon 00:00",
        "2026-12-21 Mon 00:00",
        "2027-01-11 Mon 00:00",
    ]


def test_times_are_utc_whatever_zone_they_come_in() -> None:
    cron = parse_cron("30 3 * * *")
    berlin = timezone(timedelta(hours=1))
    assert cron.next_after(datetime(2026, 11, 26, 4, 0, tzinfo=berlin)) == at("2026-11-26 03:30")
    assert cron.next_after(datetime(2026, 11, 26, 4, 0)) == at("2026-11-27 03:30")  # naive: UTC
    assert cron.next_after(at("2026-11-26 00:00")).tzinfo == UTC


def test_matches() -> None:
    cron = parse_cron("15 * * * *")
    assert cron.matches(at("2026-11-26 10:15:59"))
    assert not cron.matches(at("2026-11-26 10:16:00"))


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("* * * *", "has 4 field(s), not 5"),
        ("* * * * * *", "has 6 field(s), not 5"),
        ("", "has 0 field(s)"),
        ("60 * * * *", "minute field '60': 60 is outside 0-59"),
        ("* 24 * * *", "hour field '24': 24 is outside 0-23"),
        ("* * 0 * *", "day-of-month field '0': 0 is outside 1-31"),
        ("* * * 13 *", "month field '13': 13 is outside 1-12"),
        ("* * * * 8", "day-of-week field '8': 8 is outside 0-7"),
        ("*/0 * * * *", "minute field '*/0': a step must be a whole number of 1 or more"),
        ("*/x * * * *", "minute field '*/x': a step must be"),
        ("5/15 * * * *", "minute field '5/15': a step needs a range or *, e.g. 5-59/15"),
        ("30-10 * * * *", "minute field '30-10': the range runs backwards (30 > 10)"),
        ("1,,2 * * * *", "minute field '': '' is not a number"),
        ("-5 * * * *", "minute field '-5': '' is not a number"),
        ("* * * * mo", "day-of-week field 'mo': 'mo' is not a number or a name (sun-sat)"),
        ("* * * foo *", "month field 'foo': 'foo' is not a number or a name (jan-dec)"),
        ("* mon * * *", "hour field 'mon': 'mon' is not a number"),
        ("0 0 30 2 *", "never fires: day-of-month 30 does not occur in month 2"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("@reboot", "unknown cron macro '@reboot'"),
    ],
)
def test_errors_name_the_field(schedule: str, message: str) -> None:
    with pytest.raises(CronError) as raised:
        parse_cron(schedule)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_day_that_exists_in_only_some_months_is_fine() -> None:
    assert firings("0 0 31 2,3 *", "2026-11-26 00:00", 2) == [
        "2027-03-31 Wed 00:00",
        "2028-03-31 Fri 00:00",
    ]
    # with both day fields restricted the weekday alone can fire it
    assert firings("0 0 30 2 sun", "2026-11-26 00:00", 1) == ["2027-02-07 Sun 00:00"]


# -- property: next_after is the first firing minute after the given time ---------------------


def field_text(values: set[int]) -> str:
    return ",".join(str(v) for v in sorted(values))


@st.composite
def schedules(draw: st.DrawFn) -> str:
    minutes = draw(st.sets(st.integers(0, 59), min_size=1, max_size=4))
    hours = draw(st.one_of(st.just(None), st.sets(st.integers(0, 23), min_size=1, max_size=3)))
    days = draw(st.one_of(st.just(None), st.sets(st.integers(1, 28), min_size=1, max_size=3)))
    weekdays = draw(st.one_of(st.just(None), st.sets(st.integers(0, 7), min_size=1, max_size=3)))
    return " ".join(
        [
            field_text(minutes),
            "*" if hours is None else field_text(hours),
            "*" if days is None else field_text(days),
            "*",
            "*" if weekdays is None else field_text(weekdays),
        ]
    )


def fires(schedule: str, when: datetime) -> bool:
    """An independent reading of the five fields, minute by minute."""
    minute, hour, day, _, weekday = schedule.split()

    def hit(field: str, value: int) -> bool:
        return field == "*" or value in {int(v) for v in field.split(",")}

    weekdays = weekday if weekday == "*" else ",".join(str(int(v) % 7) for v in weekday.split(","))
    by_day, by_weekday = hit(day, when.day), hit(weekdays, when.isoweekday() % 7)
    days_ok = (by_day or by_weekday) if "*" not in (day, weekday) else (by_day and by_weekday)
    return hit(minute, when.minute) and hit(hour, when.hour) and days_ok


@settings(max_examples=60, deadline=None)
@given(
    schedule=schedules(),
    start=st.datetimes(datetime(2020, 1, 1), datetime(2030, 12, 31)),
)
def test_next_after_is_the_first_firing_minute(schedule: str, start: datetime) -> None:
    start = start.replace(tzinfo=UTC)
    found = parse_cron(schedule).next_after(start)
    assert found > start
    assert found.second == found.microsecond == 0
    assert fires(schedule, found)
    minute = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while minute < found:
        assert not fires(schedule, minute), minute
        minute += timedelta(minutes=1)
