"""Errors of the collector role.

::

    MercatoError
    ├── KeyStoreError       the write-key file is unreadable, or a key id is unknown
    └── QuarantineError     a quarantine entry to act on is not open (replayed, purged, unknown)
"""

from mercato.errors import MercatoError


class KeyStoreError(MercatoError):
    """The write-key store could not be read or changed as asked."""


class QuarantineError(MercatoError):
    """The quarantine cannot do what was asked; the message says why."""
