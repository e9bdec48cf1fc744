"""Errors of the aggregator role.

::

    MercatoError
    └── AggregatorError     the aggregator cannot run as configured (e.g. a partition that
                            does not exist)
"""

from mercato.errors import MercatoError


class AggregatorError(MercatoError):
    """The aggregator cannot run as configured."""
