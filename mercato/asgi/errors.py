"""Errors an HTTP API answers itself, as JSON.

::

    MercatoError
    └── ApiError    a request ends with this status and ``{"error": {"code", "message"}}``
"""

from __future__ import annotations

from mercato.errors import MercatoError


class ApiError(MercatoError):
    """A request is answered ``status`` with a JSON error (and ``Retry-After`` if given)."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after
