"""Cron schedules: the classic five fields, evaluated in UTC.

::

    ┌──────────── minute         0-59
    │ ┌────────── hour           0-23
    │ │ ┌──────── day of month   1-31
    │ │ │ ┌────── month          1-12 or jan-dec
    │ │ │ │ ┌──── day of week    0-7 or sun-sat (0 and 7 are both Sunday)
    * * * * *

A field is a comma-separated list of ``*``, ``n``, ``a-b``, ``*/n`` and ``a-b/n``. The macros
``@hourly``, ``@daily`` (``@midnight``), ``@weekly``, ``@monthly`` and ``@yearly``
(``@annually``) stand for their usual five fields.

Days follow Vixie cron (and so every cron in common use): if day of month and day of week are
both restricted, a day matches when *either* does (``0 0 1 * mon`` is the first of the month
and every Monday); if either field starts with ``*``, a day must match both. Schedules are
always UTC: a merchant-facing job has no local time, and UTC has no DST gaps or repeats.
"""

from __future__ import annotations

import bisect
import calendar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from mercato.errors import CronError

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
LONGEST_MONTH = {m: 29 if m == 2 else calendar.monthrange(2001, m)[1] for m in range(1, 13)}
SEARCH_YEARS = 400  # the Gregorian calendar repeats every 400 years


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    first_name: int = 0  # the number of names[0]


FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, MONTHS, 1),
    _Field("day-of-week", 0, 7, WEEKDAYS, 0),
)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed schedule; :func:`parse_cron` makes one, :meth:`next_after` evaluates it."""

    text: str
    minutes: tuple[int, ...] = field(repr=False)
    hours: tuple[int, ...] = field(repr=False)
    days: frozenset[int] = field(repr=False)
    months: frozenset[int] = field(repr=False)
    weekdays: frozenset[int] = field(repr=False)  # 0 = Sunday … 6 = Saturday
    either_day: bool = field(repr=False)  # both day fields restricted: Vixie's OR

    def matches(self, when: datetime) -> bool:
        """Whether the minute of ``when`` (UTC) is one the schedule fires at."""
        when = _utc(when)
        return (
            when.minute in self.minutes
            and when.hour in self.hours
            and when.month in self.months
            and self._day_matches(when)
        )

    def next_after(self, when: datetime) -> datetime:
        """The first minute strictly after ``when`` that the schedule fires at, in UTC.

        A naive ``when`` is taken as UTC; an aware one is converted.
        """
        t = _utc(when).replace(second=0, microsecond=0) + timedelta(minutes=1)
        last_year = t.year + SEARCH_YEARS
        while t.year <= last_year:
            if t.month not in self.months:
                t = datetime(t.year + t.month // 12, t.month % 12 + 1, 1, tzinfo=UTC)
                continue
            hour = _at_or_after(self.hours, t.hour) if self._day_matches(t) else None
            if hour is None:
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
            elif hour != t.hour:
                t = t.replace(hour=hour, minute=0)
            elif (minute := _at_or_after(self.minutes, t.minute)) is None:
                t = t.replace(minute=0) + timedelta(hours=1)
            else:
                return t.replace(minute=minute)
        raise CronError(f"cron schedule {self.text!r} never fires")  # parse_cron prevents it

    def _day_matches(self, when: datetime) -> bool:
        by_date = when.day in self.days
        by_weekday = when.isoweekday() % 7 in self.weekdays
        return (by_date or by_weekday) if self.either_day else (by_date and by_weekday)


def parse_cron(text: str) -> CronSchedule:
    """Parse a five-field cron expression (or a macro); :class:`CronError` names the field."""
    expression = MACROS.get(text.strip().lower(), text)
    if expression.startswith("@"):
        raise CronError(f"unknown cron macro {text!r}: use one of {', '.join(MACROS)}")
    parts = expression.split()
    if len(parts) != len(FIELDS):
        raise CronError(
            f"cron schedule {text!r} has {len(parts)} field(s), not 5: "
            "minute hour day-of-month month day-of-week"
        )
    minutes, hours, days, months, weekdays = (
        _parse_field(text, part, spec) for part, spec in zip(parts, FIELDS, strict=True)
    )
    either_day = not parts[2].startswith("*") and not parts[4].startswith("*")
    if not either_day and not any(d <= LONGEST_MONTH[m] for m in months for d in days):
        raise CronError(
            f"cron schedule {text!r} never fires: day-of-month {parts[2]} "
            f"does not occur in month {parts[3]}"
        )
    return CronSchedule(
        text=text,
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=frozenset(days),
        months=frozenset(months),
        weekdays=frozenset(d % 7 for d in weekdays),  # 7 is Sunday too
        either_day=either_day,
    )


class _Invalid(Exception):
    """Why one item of a field does not parse (the caller adds where it is)."""


def _parse_field(text: str, part: str, spec: _Field) -> set[int]:
    values: set[int] = set()
    for item in part.split(","):
        try:
            values.update(_parse_item(item, spec))
        except _Invalid as exc:
            raise CronError(f"cron schedule {text!r}: {spec.name} field {item!r}: {exc}") from None
    return values


def _parse_item(item: str, spec: _Field) -> range:
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) == 0:
            raise _Invalid("a step must be a whole number of 1 or more")
        step = int(step_text)
    if base == "*":
        low, high = spec.low, (6 if spec.name == "day-of-week" else spec.high)
    elif "-" in base:
        first, _, last = base.partition("-")
        low, high = _value(first, spec), _value(last, spec)
        if low > high:
            raise _Invalid(f"the range runs backwards ({low} > {high})")
    elif slash:
        raise _Invalid(f"a step needs a range or *, e.g. {base}-{spec.high}/{step}")
    else:
        low = high = _value(base, spec)
    return range(low, high + 1, step)


def _value(token: str, spec: _Field) -> int:
    lowered = token.lower()
    if lowered in spec.names:
        return spec.names.index(lowered) + spec.first_name
    if not token.isdigit():
        named = f" or a name ({spec.names[0]}-{spec.names[-1]})" if spec.names else ""
        raise _Invalid(f"{token!r} is not a number{named}")
    number = int(token)
    if not spec.low <= number <= spec.high:
        raise _Invalid(f"{number} is outside {spec.low}-{spec.high}")
    return number


def _at_or_after(values: tuple[int, ...], current: int) -> int | None:
    index = bisect.bisect_left(values, current)
    return values[index] if index < len(values) else None


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
