"""Errors of the scheduler role.

::

    MercatoError
    └── SchedulerError          the scheduler cannot do what was asked
        └── UnknownJobError     no job of that name is configured

(a schedule that does not parse is a ``mercato.errors.CronError``: the configuration reads
schedules too)
"""

from mercato.errors import MercatoError


class SchedulerError(MercatoError):
    """Base class of the scheduler's errors."""


class UnknownJobError(SchedulerError):
    """No job of this name is configured."""

    def __init__(self, name: str, known: list[str]) -> None:
        listed = ", ".join(known) or "none"
        super().__init__(f"no job named {name!r} is configured (jobs: {listed})")
        self.name = name
