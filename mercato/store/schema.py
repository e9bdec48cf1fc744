"""The tables both SQL stores keep alike, written once in each dialect's column types.

The bookkeeping tables have the same columns on SQLite and PostgreSQL; only the names of their
types differ (:class:`Types`). The rollup tables are each backend's own (SQLite keys them by
version first, ``WITHOUT ROWID``; PostgreSQL by merchant first, for Citus, and partitions them
by month), and so are the job runs (SQLite added their ``output`` column in a later
migration). Both backends' released migrations are made of these statements: a change is a new
migration in each backend, never an edit here.
"""

from __future__ import annotations

from typing import NamedTuple


class Types(NamedTuple):
    """A dialect's names of the column types the tables use."""

    serial: str  # an auto-numbered primary key
    integer: str  # 64 bits
    small: str  # 32 bits
    key: str  # text compared byte by byte, as keys are
    text: str
    keyed: str  # after a table with a primary key of its own


TABLES = {
    "definition_versions": """
        CREATE TABLE definition_versions (
            id         {serial},
            hash       {key} NOT NULL UNIQUE,
            text       {text} NOT NULL,
            created_at {integer} NOT NULL,  -- epoch milliseconds
            state      {text} NOT NULL DEFAULT 'registered'
        )
    """,
    "serving_version": """
        CREATE TABLE serving_version (
            singleton {small} PRIMARY KEY CHECK (singleton = 1),
            version   {integer} NOT NULL REFERENCES definition_versions (id)
        )
    """,
    "serving_changes": """
        CREATE TABLE serving_changes (
            id         {serial},
            version    {integer} NOT NULL,
            previous   {integer},
            changed_at {integer} NOT NULL  -- epoch milliseconds
        )
    """,
    "consumer_offsets": """
        CREATE TABLE consumer_offsets (
            consumer    {key} NOT NULL,
            partition   {small} NOT NULL,
            next_offset {integer} NOT NULL,
            PRIMARY KEY (consumer, partition)
        ){keyed}
    """,
    "merchants": """
        CREATE TABLE merchants (
            merchant_id {key} NOT NULL PRIMARY KEY,
            timezone    {text},
            updated_at  {integer} NOT NULL  -- epoch milliseconds
        ){keyed}
    """,
    "leases": """
        CREATE TABLE leases (
            name       {key} NOT NULL PRIMARY KEY,  -- e.g. "scheduler"
            holder     {text} NOT NULL,
            expires_at {integer} NOT NULL  -- epoch milliseconds
        ){keyed}
    """,
    "sealed_hours": """
        CREATE TABLE sealed_hours (
            version     {integer} NOT NULL,
            hour        {integer} NOT NULL,  -- epoch seconds at which the UTC hour starts
            fingerprint {text} NOT NULL,  -- of the archive files the seal read
            events      {integer} NOT NULL,  -- distinct events counted
            sealed_at   {integer} NOT NULL,  -- epoch milliseconds
            PRIMARY KEY (version, hour)
        ){keyed}
    """,
    "watermarks": """
        CREATE TABLE watermarks (
            name    {key} NOT NULL,  -- e.g. "sealed_through"
            version {integer} NOT NULL,
            value   {integer} NOT NULL,
            PRIMARY KEY (name, version)
        ){keyed}
    """,
}


def tables(types: Types, *names: str) -> tuple[str, ...]:
    """The ``CREATE TABLE`` statements of the tables ``names`` in ``types``."""
    return tuple(TABLES[name].format(**types._asdict()) for name in names)


def invalid_column(types: Types) -> tuple[str, ...]:
    """The migration giving the rollups the partials' ``invalid`` column."""
    return (
        *(
            f"ALTER TABLE {table} ADD COLUMN invalid {types.integer} NOT NULL DEFAULT 0"
            for table in ("speed_rollups", "final_rollups", "daily_rollups")
        ),
        # the few rows that have some, for totals across merchants
        "CREATE INDEX speed_rollups_invalid ON speed_rollups (version, bucket) WHERE invalid > 0",
        "CREATE INDEX final_rollups_invalid ON final_rollups (version, bucket) WHERE invalid > 0",
    )
