"""Errors of the collector role.

::

    MercatoError
    └── KeyStoreError       the write-key file is unreadable, or a key id is unknown
"""

from mercato.errors import MercatoError


class KeyStoreError(MercatoError):
    """The write-key store could not be read or changed as asked."""
