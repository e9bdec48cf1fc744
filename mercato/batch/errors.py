"""Errors of the batch layer::

MercatoError
└── BatchError
    ├── EngineError        an engine is missing (an extra not installed) or failed
    ├── SealError          a seal could not run (no archive state, bad range)
    ├── VersionError       a version cannot be switched to (nothing to roll back to)
    └── QueryError         ad-hoc SQL over the archive did not run
"""

from __future__ import annotations

from mercato.errors import MercatoError


class BatchError(MercatoError):
    """Base class of the batch layer's errors."""


class EngineError(BatchError):
    """A batch engine is not available or failed."""


class SealError(BatchError):
    """A seal could not run."""


class VersionError(BatchError):
    """A version cannot be switched to."""


class QueryError(BatchError):
    """Ad-hoc SQL over the archive did not run."""
