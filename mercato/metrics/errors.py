"""Errors of metric definitions and the rollup kernel.

::

    MercatoError
    ├── DefinitionError     a definitions file is invalid; names the metric and the field
    └── TooManyPeriods      a range holds more periods than allowed
"""

from mercato.errors import MercatoError


class DefinitionError(MercatoError):
    """A metric definitions file is invalid."""


class TooManyPeriods(MercatoError):
    """A range holds more periods than allowed."""

    def __init__(self, estimate: int, limit: int) -> None:
        super().__init__(f"about {estimate} periods; at most {limit}")
        self.estimate, self.limit = estimate, limit
