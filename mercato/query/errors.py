"""Errors of the query role.

::

    MercatoError
    └── TokenError      a merchant token is missing, malformed, forged or expired
"""

from mercato.errors import MercatoError


class TokenError(MercatoError):
    """A token is missing, malformed, forged or expired."""
