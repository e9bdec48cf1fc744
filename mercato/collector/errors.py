"""Errors of the collector role.

::

    MercatoError
    ├── KeyStoreError       the write-key file is unreadable, or a key id is unknown
    └── QuarantineError     a quarantine entry to act on is not open (replayed, purged, unknown)

    HttpError               a request ends with this status (control flow inside the app)
"""

from mercato.errors import MercatoError


class KeyStoreError(MercatoError):
    """The write-key store could not be read or changed as asked."""


class QuarantineError(MercatoError):
    """The quarantine cannot do what was asked; the message says why."""


class HttpError(Exception):
    """A request ends with this status and error body (internal control flow)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: int | None = None,
        detail: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, object] = detail or {"code": code, "message": message}
        self.retry_after = retry_after
