"""Shared by the benchmarks: min/median/max of repeated measurements."""

from __future__ import annotations

import statistics


def summary(values: list[float], digits: int = 0) -> dict[str, float]:
    """``{"min", "median", "max"}`` of ``values``, rounded to ``digits``."""
    return {
        "min": round(min(values), digits),
        "median": round(statistics.median(values), digits),
        "max": round(max(values), digits),
    }
