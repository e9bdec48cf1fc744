"""The names the roles share: consumers, watermarks, and the states of versions and job runs.

Each is written by one role and read by others through the store (the aggregator's offsets
by retention and the console, the seal's watermark by the query API and the aggregator), so
one module spells them all, below every role.
"""

from __future__ import annotations

SEALED_THROUGH = "sealed_through"
"""Watermark of a version: epoch seconds before which every bucket is final (the seal's)."""
DAYS_DERIVED_THROUGH = "days_derived_through"
"""Watermark of a version: the ``sealed_through`` up to which the local days that completed
have been derived (:mod:`mercato.batch.days`)."""
DRIFT_PPM = "drift_ppm"
"""Watermark: speed vs final difference of recently sealed hours, in parts per million."""
DRIFT_CHECKED_AT = "drift_checked_at"
"""Watermark: when the drift was last checked (epoch seconds)."""

REGISTERED = "registered"
"""A definitions version that may serve (its rows are kept)."""
DROPPED = "dropped"
"""A definitions version whose rows, seals, watermarks and offsets were deleted."""

RUNNING = "running"
"""The status of a job run that has started and not finished."""


def aggregator_consumer(definitions_hash: str) -> str:
    """The consumer id under which the aggregator of a definitions version stores offsets."""
    return f"aggregator/{definitions_hash}"


def days_watermark(merchant_id: str) -> str:
    """The watermark name of how far a merchant's local-day rows are derived."""
    return f"days_through/{merchant_id}"


def stale_days_watermark(merchant_id: str) -> str:
    """The watermark name of the first hour whose final rows a seal changed under the
    merchant's derived local days (they are derived again, and it goes)."""
    return f"days_stale/{merchant_id}"
