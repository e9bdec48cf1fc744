"""Errors of the serving store.

::

    MercatoError
    └── StoreError
        ├── StoreClosedError        the store was used after ``close()``
        ├── StoreSchemaError        the database is not a Mercato store, or newer than this code
        ├── StoreWriteError         a write did not land; none of it did (rows nor offsets)
        ├── StoreUnavailableError   the store cannot be reached now (connection lost, disk full)
        ├── OffsetConflictError     a write's expected offsets are not the stored ones (fenced)
        ├── InvalidPartialsError    the partials do not fit PARTIAL_SCHEMA (null key, bad type)
        ├── UnknownVersionError     no definitions version has that id
        ├── DroppedVersionError     that definitions version was dropped (its rows are gone)
        ├── InvalidTimezoneError    not an IANA time zone name
        └── UnknownJobRunError      no job run has that id
"""

from mercato.errors import MercatoError


class StoreError(MercatoError):
    """Base class of the store's errors."""


class StoreClosedError(StoreError):
    """The store was closed; open a new one."""


class StoreSchemaError(StoreError):
    """The database cannot be used by this version of Mercato."""


class StoreWriteError(StoreError):
    """A write failed and was rolled back: neither its rows nor its offsets were stored."""


class OffsetConflictError(StoreError):
    """A consumer's stored offsets are not the ones a write expected: another process has
    taken over the partition since the writer read them. Nothing of the write was stored."""

    def __init__(self, consumer: str, conflicts: dict[int, tuple[int | None, int | None]]):
        shown = ", ".join(
            f"partition {p}: expected {want}, stored {have}"
            for p, (want, have) in sorted(conflicts.items())
        )
        super().__init__(f"offsets of {consumer!r} moved under the writer ({shown})")
        self.consumer = consumer
        self.conflicts = conflicts


class StoreUnavailableError(StoreError):
    """The store could not be reached (a connection refused or lost, no free connection in
    time, an SQLite file whose disk is full or failing); the same call may succeed later."""


class InvalidPartialsError(StoreError):
    """The partials handed to ``write`` do not conform to the kernel's PARTIAL_SCHEMA."""


class UnknownVersionError(StoreError):
    """No metric definitions version is registered under this id."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"no definitions version {version} is registered (`mercato versions list` lists them)"
        )
        self.version = version


class DroppedVersionError(StoreError):
    """A definitions version was dropped: its rows, seals and watermarks are gone."""

    def __init__(self, version: int) -> None:
        super().__init__(f"definitions version {version} was dropped")
        self.version = version


class InvalidTimezoneError(StoreError):
    """A merchant's time zone must be an IANA name such as ``Europe/Berlin``."""

    def __init__(self, timezone: str) -> None:
        super().__init__(f"unknown time zone {timezone!r}: expected an IANA name like Asia/Kolkata")
        self.timezone = timezone


class UnknownJobRunError(StoreError):
    """No job run was started under this id."""

    def __init__(self, run_id: int) -> None:
        super().__init__(f"no job run {run_id} was started")
        self.run_id = run_id
