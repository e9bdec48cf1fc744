"""Errors of the operator console.

::

    MercatoError
    └── ConsoleError            the console cannot do what was asked
        └── OperationRunning    the same action is running already (the endpoint answers 409)
"""

from mercato.errors import MercatoError


class ConsoleError(MercatoError):
    """Base class of the console's errors."""


class OperationRunning(ConsoleError):
    """The same action is running already."""
