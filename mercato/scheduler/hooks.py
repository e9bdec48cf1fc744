"""The error hook: tells someone when a job failed for good (after its last attempt).

Two kinds, both optional and both run when configured (``[scheduler]``):

* ``on_error_command``: an argument list run with the environment plus ``MERCATO_JOB``,
  ``MERCATO_RUN_ID`` (the failed attempt's id in ``mercato jobs runs``), ``MERCATO_ATTEMPT``
  and ``MERCATO_ERROR``; it gets 60 seconds.
* ``on_error_webhook``: an HTTP POST of ``{"job", "run_id", "attempt", "error", "params"}``
  as JSON, with a 5 second timeout (Slack, PagerDuty and Alertmanager relays take this).

A hook that fails is logged and otherwise ignored: telling is best effort, and the failure is
in the run history either way.
"""

from __future__ import annotations

import logging
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec

from mercato import __version__

logger = logging.getLogger("mercato.scheduler")

WEBHOOK_TIMEOUT_SECONDS = 5.0
COMMAND_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Failure:
    """A job run that failed on its last attempt."""

    job: str
    run_id: int
    attempt: int
    error: str
    params: Mapping[str, Any] = field(default_factory=dict)


class ErrorHook:
    """Runs the configured command and/or posts to the configured webhook for a failure."""

    def __init__(
        self,
        command: Sequence[str] = (),
        webhook: str = "",
        *,
        webhook_timeout: float = WEBHOOK_TIMEOUT_SECONDS,
        command_timeout: float = COMMAND_TIMEOUT_SECONDS,
    ) -> None:
        self.command = list(command)
        self.webhook = webhook
        self.webhook_timeout = webhook_timeout
        self.command_timeout = command_timeout

    def __call__(self, failure: Failure) -> None:
        """Tell everyone configured; never raises."""
        if self.command:
            self._run_command(failure)
        if self.webhook:
            self._post(failure)

    def _run_command(self, failure: Failure) -> None:
        env = {
            **os.environ,
            "MERCATO_JOB": failure.job,
            "MERCATO_RUN_ID": str(failure.run_id),
            "MERCATO_ATTEMPT": str(failure.attempt),
            "MERCATO_ERROR": failure.error,
        }
        try:
            result = subprocess.run(
                self.command,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.command_timeout,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            logger.error("error hook command %s for %s failed: %s", self.command, failure.job, exc)
            return
        if result.returncode != 0:
            said = result.stderr.decode("utf-8", "replace").strip()[-500:]
            logger.error(
                "error hook command %s for %s exited with %d: %s",
                self.command,
                failure.job,
                result.returncode,
                said,
            )

    def _post(self, failure: Failure) -> None:
        body = msgspec.json.encode({**asdict(failure), "params": dict(failure.params)})
        request = urllib.request.Request(
            self.webhook,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"mercato/{__version__}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.webhook_timeout) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            logger.error("error hook webhook %s for %s failed: %s", self.webhook, failure.job, exc)
