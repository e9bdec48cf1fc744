"""Local calendar periods as exact unions of 15-minute UTC buckets.

Every offset any IANA time zone has used since 1979-10-01 (and every DST transition) is a
multiple of 15 minutes (before, local mean times such as Kiritimati's -10:40 or Monrovia's
-0:44:30 were not), so from :data:`EARLIEST` on the boundaries of local hours, days, weeks
and months always fall on a 15-minute UTC boundary, and each stored bucket belongs to exactly
one local period. Ranges are limited to ``[EARLIEST, LATEST)``, and :func:`periods` stops
after ``limit`` periods, so the cost of a request is bounded before any work starts. A day in
Europe/Berlin's spring-forward is 23 hours (92 buckets), Asia/Kolkata's days start at 18:30
UTC and Asia/Kathmandu's at 18:15 UTC. :func:`periods` gives the periods of a range as
``[start, end)`` epoch seconds; :func:`assign` maps buckets to them.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from mercato.metrics.errors import TooManyPeriods

Granularity = Literal["15m", "hour", "day", "week", "month"]
GRANULARITIES: tuple[str, ...] = ("15m", "hour", "day", "week", "month")
BUCKET = 900
# the nominal length of a period, for bounding a range's period count before building it
NOMINAL_SECONDS = {"15m": 900, "hour": 3600, "day": 86_400, "week": 7 * 86_400,
                   "month": 30 * 86_400}  # fmt: skip
EARLIEST = datetime(1980, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
# a local hour holds at most 8 quarter hours (Lord Howe's is 90 minutes long when its clocks
# skip from 2:00 to 2:30): how far to search for the next or last local :00
_STEPS = 8


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The first instant of ``day`` in ``zone`` (a day may start at 01:00 if 00:00 is skipped)."""
    naive = datetime(day.year, day.month, day.day)
    for minutes in range(0, 24 * 60, 15):
        candidate = (naive + timedelta(minutes=minutes)).replace(tzinfo=zone)
        # a wall time inside a spring-forward gap does not survive the round trip
        if candidate.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == candidate.replace(
            tzinfo=None
        ):
            return candidate
    raise ValueError(f"{day} has no instant in {zone}")  # pragma: no cover - no such zone


def _epoch(at: datetime) -> int:
    return int(at.astimezone(UTC).timestamp())


def period_start(at: datetime, granularity: str, zone: ZoneInfo) -> int:
    """Epoch seconds of the start of the local period containing ``at``."""
    seconds = _epoch(at)
    if granularity == "15m":
        return seconds - seconds % BUCKET
    local = at.astimezone(zone)
    if granularity == "hour":
        # a local hour starts where the local clock shows :00; with a :30 or :45 offset that
        # is not a UTC hour boundary, so step back through the quarter hours
        start = seconds - seconds % BUCKET
        for _ in range(_STEPS):
            if datetime.fromtimestamp(start, zone).minute == 0:
                return start
            start -= BUCKET
        raise ValueError(f"{zone.key} has no whole local hour near {at}")
    day = local.date()
    if granularity == "week":
        day -= timedelta(days=day.weekday())  # ISO weeks start on Monday
    elif granularity == "month":
        day = day.replace(day=1)
    return _epoch(local_midnight(day, zone))


def next_start(start: int, granularity: str, zone: ZoneInfo) -> int:
    """Epoch seconds of the start of the period after the one starting at ``start``."""
    if granularity == "15m":
        return start + BUCKET
    if granularity == "hour":
        end = start + BUCKET
        for _ in range(_STEPS):
            if datetime.fromtimestamp(end, zone).minute == 0:
                return end
            end += BUCKET
        raise ValueError(f"{zone.key} has no whole local hour after {start}")
    local = datetime.fromtimestamp(start, zone).date()
    if granularity == "day":
        following = local + timedelta(days=1)
    elif granularity == "week":
        following = local + timedelta(days=7)
    else:
        following = (local.replace(day=28) + timedelta(days=4)).replace(day=1)
    return _epoch(local_midnight(following, zone))


def periods(
    start: datetime, end: datetime, granularity: str, zone: ZoneInfo, limit: int | None = None
) -> list[int]:
    """Boundaries ``[p0, p1, …, pn]`` of the periods covering ``[start, end)``: period ``i``
    is ``[p_i, p_(i+1))``. The first starts at or before ``start``.

    Raises :class:`TooManyPeriods` if there are more than ``limit``, having computed at most
    ``limit + 1`` of them (none if their count is over the limit by arithmetic alone).
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}")
    first = period_start(start, granularity, zone)
    stop = _epoch(end)
    estimate = -(-(stop - first) // NOMINAL_SECONDS[granularity])
    # local periods are at most 10% shorter than nominal (a 23-hour day, a 28-day month)
    if limit is not None and estimate > limit + limit // 8 + 2:
        raise TooManyPeriods(estimate, limit)
    bounds = [first]
    while bounds[-1] < stop:
        if limit is not None and len(bounds) > limit:
            raise TooManyPeriods(estimate, limit)
        bounds.append(next_start(bounds[-1], granularity, zone))
    return bounds


def max_range(granularity: str, limit: int) -> timedelta:
    """About the longest range ``limit`` periods of ``granularity`` cover (for messages)."""
    return timedelta(seconds=NOMINAL_SECONDS[granularity] * limit)


def assign(buckets: Sequence[int], bounds: Sequence[int]) -> list[int]:
    """For each bucket (epoch seconds), the index of its period, or -1 outside them all."""
    last = len(bounds) - 1
    out = []
    for bucket in buckets:
        i = bisect.bisect_right(bounds, bucket) - 1
        out.append(i if 0 <= i < last else -1)
    return out
