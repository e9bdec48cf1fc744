"""Errors of the scheduler role.

::

    MercatoError
    └── SchedulerError          the scheduler cannot do what was asked
        ├── CronError           a schedule that is not a valid five-field cron expression
        └── UnknownJobError     no job of that name is configured
"""

from mercato.errors import MercatoError


class SchedulerError(MercatoError):
    """Base class of the scheduler's errors."""


class CronError(SchedulerError):
    """A cron schedule does not parse; the message names the field."""


class UnknownJobError(SchedulerError):
    """No job of this name is configured."""

    def __init__(self, name: str, known: list[str]) -> None:
        listed = ", ".join(known) or "none"
        super().__init__(f"no job named {name!r} is configured (jobs: {listed})")
        self.name = name
