"""Errors of the demo.

::

    MercatoError
    └── DemoError       the demo could not start
"""

from mercato.errors import MercatoError


class DemoError(MercatoError):
    """The demo could not start."""
