"""The PostgreSQL store's schema: versioned migrations and the rollups' monthly partitions.

``schema_migrations`` holds one row per applied entry of :data:`MIGRATIONS`;
:func:`migrate` (``mercato db migrate``) applies the pending ones under an advisory lock, so
two migrating processes take turns. The store itself never changes the schema: it refuses a
database that is not migrated, or migrated by a newer Mercato (:func:`check_schema`).

Speed and final rollups are ``PARTITION BY RANGE (bucket)``, one partition per UTC calendar
month (``speed_rollups_197001`` …), created on demand by the first write into that month
(:func:`ensure_partitions`). There is no default partition: a month's partition can then be
created at any time, and an old month is dropped in one ``DROP TABLE``. Local-day rows are
96 times fewer and are not partitioned.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import psycopg

from mercato.store.dialect import first_line
from mercato.store.errors import InvalidPartialsError, StoreSchemaError
from mercato.store.schema import Types, invalid_column, tables

MIGRATE_COMMAND = "mercato db migrate"
PARTITIONED = ("speed_rollups", "final_rollups")
_LOCK = 0x6D65_7263_6174_6F  # advisory lock id of migrations ("mercato")

# merchant_id leads every rollup key, so the tables can be distributed by it (Citus).
_ROLLUP_COLUMNS = """
    merchant_id text COLLATE "C" NOT NULL,
    version     bigint NOT NULL,
    metric      text COLLATE "C" NOT NULL,
    dimension   text COLLATE "C" NOT NULL,
    member      text COLLATE "C" NOT NULL,
    {time}      bigint NOT NULL,
    count       bigint,
    sum         bigint,
    min         bigint,
    max         bigint,
    sketch      bytea,
    PRIMARY KEY (merchant_id, version, metric, dimension, member, {time})
"""


def _rollups(name: str) -> str:
    columns = _ROLLUP_COLUMNS.format(time="bucket")
    return f"CREATE TABLE {name} ({columns}) PARTITION BY RANGE (bucket)"


TYPES = Types(
    serial="bigserial PRIMARY KEY",
    integer="bigint",
    small="integer",
    key='text COLLATE "C"',  # compared byte by byte, as SQLite compares
    text="text",
    keyed="",
)

# Append only: a released migration is never edited, a change is a new entry.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        *tables(TYPES, "definition_versions", "serving_version", "serving_changes"),
        _rollups("speed_rollups"),
        _rollups("final_rollups"),
        # a seal replaces an hour of final rows across merchants
        "CREATE INDEX final_rollups_by_bucket ON final_rollups (version, bucket)",
        f"CREATE TABLE daily_rollups ({_ROLLUP_COLUMNS.format(time='day')})",
        *tables(TYPES, "consumer_offsets", "merchants", "sealed_hours", "watermarks"),
        """
        CREATE TABLE job_runs (
            id          bigserial PRIMARY KEY,
            job         text    NOT NULL,
            params      text    NOT NULL DEFAULT '{}',  -- JSON, kept as written
            attempt     integer NOT NULL DEFAULT 1,
            status      text    NOT NULL,
            started_at  bigint  NOT NULL,  -- epoch milliseconds
            finished_at bigint,
            error       text,
            output      text
        )
        """,
        "CREATE INDEX job_runs_by_job ON job_runs (job, id)",
        *tables(TYPES, "leases"),
    ),
    (  # 2: events a metric matched but could not use (see mercato.metrics.kernel)
        *invalid_column(TYPES),
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(dsn: str) -> tuple[int, int]:
    """Apply the pending migrations to the database at ``dsn``: (schema before, after).

    Idempotent; raises :class:`StoreSchemaError` for a schema newer than this code.
    """
    try:
        with psycopg.connect(dsn, autocommit=True) as db, db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            before = _applied(db, dsn)
            for number, statements in enumerate(MIGRATIONS[before:], start=before + 1):
                for statement in statements:
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (number,))
    except psycopg.Error as exc:
        raise StoreSchemaError(f"cannot migrate {where(dsn)}: {first_line(exc)}") from exc
    return before, SCHEMA_VERSION


def check_schema(db: psycopg.Connection[tuple[object, ...]], dsn: str) -> None:
    """Refuse a database that is not migrated to exactly :data:`SCHEMA_VERSION`."""
    row = db.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    current = _applied(db, dsn) if row and row[0] else 0
    if current < SCHEMA_VERSION:
        raise StoreSchemaError(
            f"the store {where(dsn)} has schema version {current}, this Mercato needs"
            f" {SCHEMA_VERSION}: run `{MIGRATE_COMMAND}`"
        )


def _applied(db: psycopg.Connection[tuple[object, ...]], dsn: str) -> int:
    row = db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    current = int(str(row[0])) if row else 0
    if current > SCHEMA_VERSION:
        raise StoreSchemaError(
            f"the store {where(dsn)} has schema version {current}, newer than this Mercato"
            f" knows ({SCHEMA_VERSION}): upgrade Mercato before `{MIGRATE_COMMAND}`"
        )
    return current


def month_of(bucket: int) -> int:
    """The partition month (``YYYYMM``) holding ``bucket`` (epoch seconds, UTC)."""
    try:
        moment = datetime.fromtimestamp(bucket, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidPartialsError(f"bucket {bucket} is outside years 1-9999") from None
    return moment.year * 100 + moment.month


def ensure_partitions(db: psycopg.Connection[tuple[object, ...]], months: Iterable[int]) -> None:
    """Create the monthly partitions of the rollups that ``months`` need, if missing."""
    for month in months:
        year, number = divmod(month, 100)
        low = int(datetime(year, number, 1, tzinfo=UTC).timestamp())
        after = (year + 1, 1) if number == 12 else (year, number + 1)
        high = int(datetime(*after, 1, tzinfo=UTC).timestamp()) if after[0] <= 9999 else 2**62
        for table in PARTITIONED:
            name = f"{table}_{month:06d}"
            with db.transaction():
                # racing creators take turns; the loser finds the partition there
                db.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK % 2**31, month))
                exists = db.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
                if not (exists and exists[0]):
                    db.execute(
                        f"CREATE TABLE {name} PARTITION OF {table}"
                        f" FOR VALUES FROM ({low}) TO ({high})"
                    )


def where(dsn: str) -> str:
    """The database ``dsn`` names, for messages (never its password)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "PostgreSQL"
    host, name = info.get("host") or "localhost", info.get("dbname") or "?"
    return f"postgresql database {name} on {host}"
