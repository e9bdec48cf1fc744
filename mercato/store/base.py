"""The serving store interface: rollups, the consumers' offsets, definitions versions.

The store holds what the query API serves and what the aggregator needs to resume:

* **rollups**: the kernel's partials (:data:`~mercato.metrics.kernel.PARTIAL_SCHEMA`), kept
  per definitions ``version`` with one row per key. :meth:`Store.write` merges new partials
  into the stored ones exactly as :func:`~mercato.metrics.kernel.merge` would: counts and sums
  add, minima and maxima take the extreme, sketches unite (NULL is "nothing yet").
* **consumer offsets**: the next log offset of each (consumer, partition). They are written in
  the *same transaction* as the rollups they account for, so after a crash a consumer resumes
  from offsets that match the stored data: nothing lost, nothing counted twice.
* **final rows and seals**: the batch layer's exact partials, replaced an hour at a time with
  a record of what was sealed, and named watermarks (``sealed_through``). Reads take final
  rows before ``sealed_through`` and speed rows after it, in one snapshot.
* **definitions versions** (content hash → id) and the *serving* pointer, which the query API
  reads and a promote swaps in one step.
* **merchants**: each merchant's IANA time zone (local days are derived in it).
* **job runs and leases**: the scheduler's run history, one row per attempt, and named
  leases (``scheduler``) that let one process of several act as the leader.

Every read of rollup rows names one merchant: :meth:`Store.read` and :meth:`Store.members`
are the merchant-scoped choke point the query API relies on, and no method returns rows of
several merchants.

The interface is cut by concern into narrow protocols, :class:`RollupStore`,
:class:`VersionStore`, :class:`BatchStore`, :class:`DayStore` and :class:`JobStore`; both
backends implement them all (one SQL implementation, :mod:`mercato.store.sql`) and
:class:`Store` is their union. A consumer is typed against the concerns it uses: the scheduler
needs a :class:`JobStore` and nothing else.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Protocol, Self, runtime_checkable

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from mercato.metrics.kernel import BUCKET_SECONDS, KEY, PARTIAL_SCHEMA, merge, sort_partials
from mercato.names import REGISTERED
from mercato.store.errors import (
    InvalidPartialsError,
    InvalidTimezoneError,
    OffsetConflictError,
    StoreWriteError,
)


class DefinitionVersion(msgspec.Struct, frozen=True):
    """A registered set of metric definitions; ``hash`` is its content hash."""

    id: int
    hash: str
    text: str
    created_at: datetime
    state: str = REGISTERED


class SealedHour(msgspec.Struct, frozen=True):
    """An hour the batch layer sealed: which archive content it read and what it counted."""

    hour: int  # epoch seconds at which the UTC hour starts
    fingerprint: str
    events: int
    sealed_at_ms: int


class JobRun(msgspec.Struct, frozen=True):
    """One attempt of a scheduled job, as recorded in the store."""

    id: int
    job: str
    params: dict[str, Any]
    attempt: int
    status: str  # "running" until finished, then what the scheduler recorded
    started_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    output: str | None = None  # the tail of what the job printed


Layer = Literal["final", "speed"]


class ServingChange(msgspec.Struct, frozen=True):
    """One switch of the serving pointer (a promote or a rollback)."""

    version: int
    previous: int | None
    changed_at: datetime


class VersionTotal(msgspec.Struct, frozen=True):
    """A merchant's final total of one metric over one period (for ``mercato diff``)."""

    merchant_id: str
    metric: str
    period: int  # epoch seconds at which the period starts
    count: int | None
    sum: int | None
    min: int | None
    max: int | None
    sketches: list[bytes]


class RollupStore(Protocol):
    """Rollups and the consumers' offsets: the speed layer's writes and every merchant-scoped
    read of rollup rows (the query API's choke point)."""

    def write(
        self,
        version: int,
        consumer: str,
        partials: pa.Table,
        offsets: Mapping[int, int],
        expect: Mapping[int, int | None] | None = None,
    ) -> None:
        """Merge ``partials`` into the rollups of ``version`` and record ``consumer``'s next
        offset for each partition in ``offsets``, all in one transaction.

        Either everything lands or nothing does: on failure the store raises
        :class:`~mercato.store.errors.StoreWriteError` (or, before touching anything,
        :class:`~mercato.store.errors.InvalidPartialsError` /
        :class:`~mercato.store.errors.UnknownVersionError`) and neither rows nor offsets
        change. Rows of one key may appear several times in ``partials``; all of them count.

        ``expect`` fences writers that share a consumer's partitions (aggregators in one
        group during a rebalance): for each partition in it, the offset the writer read
        (``None``: none stored). If the stored one differs, another writer has moved the
        partition on, and the store raises :class:`~mercato.store.errors.OffsetConflictError`
        and stores nothing. Concurrent writes of one partition are serialized, so of two
        writers expecting the same offset exactly one succeeds.
        """
        ...

    def offsets(self, consumer: str) -> dict[int, int]:
        """``consumer``'s next offset per partition; empty for a consumer never written."""
        ...

    def read(
        self,
        version: int,
        merchant_id: str,
        metrics: Sequence[str],
        start: int,
        end: int,
        dimension: str = "",
        sealed_through: int | None = None,
    ) -> pa.Table:
        """The stored partials of one merchant: rows of ``metrics`` and ``dimension`` with
        ``start <= bucket < end`` (epoch seconds), in key order, as PARTIAL_SCHEMA: final
        (batch-layer) rows for buckets before ``sealed_through``, speed rows from there on
        (``None``: speed rows only)."""
        ...

    def read_rows(
        self,
        version: int,
        merchant_id: str,
        metrics: Sequence[str],
        start: int,
        end: int,
        dimension: str = "",
        sealed_through: int | None = None,
    ) -> list[tuple[Any, ...]]:
        """What :meth:`read` returns, as tuples in PARTIAL_SCHEMA's column order (the query
        API's fast path: no table to build and take apart again)."""
        ...

    def read_rows_by_day(
        self,
        version: int,
        merchant_id: str,
        metrics: Sequence[str],
        start: int,
        end: int,
        dimension: str = "",
        sealed_through: int | None = None,
    ) -> list[tuple[Any, ...]]:
        """What :meth:`read_rows` returns, with the merchant's local-day rows standing for
        their buckets from ``start`` (a local midnight of its zone) up to its
        ``days_through`` watermark, all from one snapshot."""
        ...

    def members(
        self,
        version: int,
        merchant_id: str,
        metric: str,
        dimension: str,
        start: int,
        end: int,
        sealed_through: int | None = None,
    ) -> list[tuple[str, int]]:
        """The members of ``dimension`` seen for one merchant's ``metric`` in the range, with
        their total count, largest first (ties by member); layers as in :meth:`read`."""
        ...


class VersionStore(Protocol):
    """Definitions versions, the serving pointer and its history, and named watermarks."""

    def register_version(self, hash: str, text: str) -> int:
        """The id of the definitions with content hash ``hash``, registering them if new.

        Idempotent: the same hash always gets the same id (the first ``text`` is kept).
        """
        ...

    def versions(self) -> list[DefinitionVersion]:
        """Every registered definitions version, oldest first."""
        ...

    def serving_version(self) -> int | None:
        """The id of the version the query API serves, or None before one is set."""
        ...

    def set_serving_version(self, version: int) -> None:
        """Point the query API at ``version`` (one atomic swap of a single pointer).

        Raises :class:`~mercato.store.errors.UnknownVersionError` for an unregistered id.
        """
        ...

    def serving_history(self, limit: int = 20) -> list[ServingChange]:
        """The latest ``limit`` switches of the serving pointer, newest first; none for a
        ``limit`` of 0 or less (as :meth:`JobStore.job_runs`)."""
        ...

    def drop_version(self, version: int) -> int:
        """Delete every row, seal, watermark and aggregator offset of ``version`` and mark it
        dropped; return the rows deleted. Refuses the serving version."""
        ...

    def set_watermark(self, name: str, version: int, value: int) -> None:
        """Record a named watermark of ``version`` (``sealed_through``: epoch seconds before
        which every bucket is final)."""
        ...

    def watermark(self, name: str, version: int) -> int | None:
        """A named watermark of ``version``, or None if never set."""
        ...


class BatchStore(Protocol):
    """The batch layer: sealed hours of final rows, and operators' reads across merchants."""

    def write_sealed_hour(
        self, version: int, hour: int, partials: pa.Table, fingerprint: str, events: int
    ) -> list[str]:
        """Replace the final rows of ``version`` in the UTC hour starting at ``hour`` (epoch
        seconds) with ``partials`` and record the seal, in one transaction; return the
        merchants whose final rows it replaced (with rows in the hour before or after it),
        sorted.

        Rows of one key may appear several times in ``partials``; all of them count. Seals of
        one hour take turns: the last one's rows stand, never the sum of two. The merchants
        whose derived local days cover the hour are recorded as :meth:`DayStore.stale_days`
        in the same transaction. Raises
        :class:`~mercato.store.errors.InvalidPartialsError` for a bucket outside the hour, and
        what :meth:`write` raises otherwise.
        """
        ...

    def sealed_hours(self, version: int) -> dict[int, SealedHour]:
        """The hours of ``version`` sealed so far, by hour start."""
        ...

    def final_merchants(
        self, version: int, start: int, end: int, timezones: Sequence[str] | None = None
    ) -> list[str]:
        """The merchants with final rows in ``[start, end)``, sorted; only those in one of
        ``timezones`` if given (a merchant without one is in UTC). The batch layer's read
        across merchants, for deriving local days."""
        ...

    def layer_totals(
        self, version: int, start: int, end: int, period: int = 86_400, layer: Layer = "final"
    ) -> Iterator[VersionTotal]:
        """Every merchant's totals (``dimension = ""``) in ``layer`` (final or speed rows) per
        metric and UTC period of ``period`` seconds in ``[start, end)``, from one snapshot
        (sums and sketches of the same rows): an operator's read across merchants, for diffs
        and drift checks; the query API never calls it."""
        ...

    def invalid_totals(
        self, version: int, start: int, end: int, sealed_through: int | None = None
    ) -> dict[str, int]:
        """Per metric, the events of every merchant that the metric matched but could not use
        (the partials' ``invalid``) with buckets in ``[start, end)``: final rows before
        ``sealed_through``, speed rows from there on, both from one snapshot. An operator's
        read across merchants, cheap because only the rows that have some are indexed."""
        ...


class DayStore(Protocol):
    """Merchants' time zones and the local-day rows derived in them."""

    def replace_days(
        self,
        version: int,
        merchant_id: str,
        start: int,
        end: int,
        partials: pa.Table,
        days_through: int | None = None,
    ) -> None:
        """Replace one merchant's local-day rows with ``day`` in ``[start, end)`` by
        ``partials`` (their ``bucket`` column holds the day), and move its ``days_through``
        watermark, in one transaction; a :meth:`stale_days` hour in the range is forgotten."""
        ...

    def read_days(
        self,
        version: int,
        merchant_id: str,
        metrics: Sequence[str],
        start: int,
        end: int,
        dimension: str = "",
    ) -> list[tuple[Any, ...]]:
        """One merchant's local-day rows like :meth:`read_rows` (the day in the bucket
        position)."""
        ...

    def days_to_rederive(self, version: int) -> list[str]:
        """Merchants whose local days must all be derived again (their zone changed)."""
        ...

    def stale_days(self, version: int) -> dict[str, int]:
        """Merchants whose final rows a seal changed under their derived local days, with the
        first hour it changed them in: :meth:`BatchStore.write_sealed_hour` records them in
        its transaction, :meth:`replace_days` forgets a merchant's once it replaces the days
        from that hour's day on."""
        ...

    def set_merchant_timezone(self, merchant_id: str, timezone: str) -> None:
        """Record the merchant's IANA time zone; a change drops its local-day rows and sets
        their watermark to 0 (:meth:`days_to_rederive`: derived again in the new zone).

        Raises :class:`~mercato.store.errors.InvalidTimezoneError` for an unknown name.
        """
        ...

    def merchant_timezone(self, merchant_id: str) -> str | None:
        """The merchant's time zone, or None when none was set."""
        ...

    def merchant_timezones(self, merchant_ids: Sequence[str]) -> dict[str, str]:
        """The time zones of those of ``merchant_ids`` that have one, in a few reads."""
        ...

    def timezones_in_use(self) -> list[str]:
        """Every time zone a merchant is set to, sorted (merchants without one are in
        UTC)."""
        ...


class JobStore(Protocol):
    """The scheduler's run history and leases."""

    def start_job_run(self, job: str, params: Mapping[str, Any], attempt: int) -> int:
        """Record that an attempt of ``job`` started now (status ``running``); its run id."""
        ...

    def finish_job_run(
        self, run_id: int, status: str, error: str | None = None, output: str | None = None
    ) -> None:
        """Record how the attempt ``run_id`` ended, now.

        Raises :class:`~mercato.store.errors.UnknownJobRunError` for an id never started.
        """
        ...

    def job_runs(self, job: str | None = None, limit: int = 100) -> list[JobRun]:
        """The last ``limit`` attempts (of ``job``, or of every job), newest first; none for
        a ``limit`` of 0 or less."""
        ...

    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``holder`` until ``seconds`` from now.

        True if the lease was free, expired or already ``holder``'s (it is then held until
        now + ``seconds``); False, changing nothing, while another holder's lease lasts. One
        atomic step: of holders racing for a free lease exactly one gets it.
        """
        ...

    def release_lease(self, name: str, holder: str) -> None:
        """Free the lease ``name`` if ``holder`` holds it (otherwise do nothing)."""
        ...


@runtime_checkable
class Store(RollupStore, VersionStore, BatchStore, DayStore, JobStore, Protocol):
    """Every concern of the store together (:class:`~mercato.store.sqlite.SqliteStore`,
    :class:`~mercato.store.postgres.PostgresStore`); a consumer that needs one concern takes
    the narrow protocol of it instead."""

    def close(self) -> None:
        """Release connections; the store cannot be used afterwards."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


def check_expected_offsets(
    consumer: str, expect: Mapping[int, int | None] | None, stored: Mapping[int, int]
) -> None:
    """Raise :class:`OffsetConflictError` where ``stored`` (the consumer's offsets in the
    write's transaction) is not what ``expect`` says the writer read (see ``Store.write``)."""
    conflicts = {
        int(p): (want, stored.get(int(p)))
        for p, want in (expect or {}).items()
        if stored.get(int(p)) != want
    }
    if conflicts:
        raise OffsetConflictError(consumer, conflicts)


def conform_partials(partials: pa.Table) -> pa.Table:
    """``partials`` as exactly PARTIAL_SCHEMA, or :class:`InvalidPartialsError` saying why.

    Keys must be non-null and buckets on the 15-minute grid: the store trusts both.
    """
    if "invalid" not in partials.column_names:  # partials made before the column existed
        partials = partials.append_column("invalid", pa.repeat(0, partials.num_rows))
    names = set(partials.column_names)
    expected = set(PARTIAL_SCHEMA.names)
    if names != expected:
        missing, extra = sorted(expected - names), sorted(names - expected)
        raise InvalidPartialsError(f"partials columns differ: missing {missing}, extra {extra}")
    try:
        table = partials.select(PARTIAL_SCHEMA.names).cast(PARTIAL_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise InvalidPartialsError(f"partials do not fit PARTIAL_SCHEMA: {exc}") from None
    for name in KEY:
        if table[name].null_count:
            raise InvalidPartialsError(f"partials have a null {name}")
    if table["invalid"].null_count:  # "none" is 0: it adds up
        table = table.set_column(
            PARTIAL_SCHEMA.get_field_index("invalid"), "invalid", pc.fill_null(table["invalid"], 0)
        )
    bucket = table["bucket"]
    on_grid = pc.equal(pc.multiply(pc.divide(bucket, BUCKET_SECONDS), BUCKET_SECONDS), bucket)
    if table.num_rows and not pc.all(on_grid).as_py():
        raise InvalidPartialsError(f"partials have a bucket off the {BUCKET_SECONDS} s grid")
    return table


def in_key_order(partials: pa.Table) -> pa.Table:
    """``partials`` (as :func:`conform_partials` made them) sorted in key order with one row
    per key: the rows of a key given more than once are merged, as a write would add them."""
    table = sort_partials(partials)
    if table.num_rows < 2:
        return table
    repeated = None
    for name in KEY:
        column = table[name]
        same = pc.equal(column.slice(1), column.slice(0, table.num_rows - 1))
        repeated = same if repeated is None else pc.and_(repeated, same)
    if pc.any(repeated).as_py():
        table = sort_partials(merge([table]))
    return table


def conform_day_partials(partials: pa.Table, merchant_id: str) -> pa.Table:
    """One merchant's local-day rows as PARTIAL_SCHEMA in key order (see
    :func:`conform_partials`), or :class:`StoreWriteError` if a row names another merchant."""
    table = sort_partials(conform_partials(partials))
    if table.num_rows and set(table["merchant_id"].to_pylist()) != {merchant_id}:
        raise StoreWriteError(f"local-day rows of {merchant_id!r} name another merchant")
    return table


def metric_names(metrics: Sequence[str]) -> list[str]:
    """``metrics`` as a list, refusing a bare string (a Sequence[str] of its letters)."""
    if isinstance(metrics, str):
        raise TypeError("metrics must be a sequence of metric names, not one string")
    return list(metrics)


def check_timezone(timezone: str) -> str:
    """``timezone`` if it names an IANA zone, else :class:`InvalidTimezoneError`."""
    if timezone not in _iana_zones():
        raise InvalidTimezoneError(timezone)
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidTimezoneError(timezone) from None
    return timezone


@functools.cache
def _iana_zones() -> frozenset[str]:
    # ZoneInfo alone accepts any path that happens to exist under the zoneinfo directory
    # (case-insensitively on some file systems), and the system's directory may also hold
    # "localtime", which is the host's zone rather than a name.
    return frozenset(zoneinfo.available_timezones()) - {"localtime", "posixrules"}
