"""Errors of metric definitions and the rollup kernel.

::

    MercatoError
    └── DefinitionError     a definitions file is invalid; names the metric and the field
"""

from mercato.errors import MercatoError


class DefinitionError(MercatoError):
    """A metric definitions file is invalid."""
