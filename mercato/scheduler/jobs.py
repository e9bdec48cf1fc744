"""Jobs: what runs, when, how often it may be retried, and how one attempt is run.

A job's ``command`` is the argument list of the ``mercato`` command line (``["seal"]``), run
as ``python -m mercato [--config FILE] seal`` with the scheduler's environment, so every job
is a command an operator (or Airflow, or a Kubernetes CronJob) can run by hand. A command
whose first item is an absolute path is run as it is instead (with ``MERCATO_CONFIG`` set
when the scheduler has a config file): a site's own script can be scheduled the same way.

The :class:`SubprocessRunner` starts each attempt in its own process group (a timeout or a
shutdown ends the command and anything it started) and keeps the last bytes of its output
for the run history. On Linux the child also dies with the scheduler: if the scheduler is
killed outright, the standby that takes over must not find the old leader's job still
running beside its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, TYPE_CHECKING, Literal, Protocol

from mercato.cron import CronSchedule, parse_cron
from mercato.errors import MercatoError
from mercato.scheduler.errors import UnknownJobError

if TYPE_CHECKING:
    from mercato.config import Config, JobConfig

SUCCEEDED = "succeeded"
FAILED = "failed"
ABANDONED = "abandoned"  # stopped by a shutdown, a lost lease, or a scheduler that died
OUTPUT_BYTES = 4096  # the tail of a job's output kept in its run record
KILL_GRACE_SECONDS = 5.0  # between SIGTERM and SIGKILL

# Run before the command on Linux: ask the kernel to SIGKILL this process when the thread that
# started it (the scheduler's) goes away, then become the command. The parent may already be
# gone by the time prctl runs, hence the check.
_LAUNCHER = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(137)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    print(f"cannot run {sys.argv[2]}: {exc}", file=sys.stderr)
    sys.exit(127)  # the shell's status for a command that cannot be run
"""


@dataclass(frozen=True)
class Job:
    """A configured job (``[scheduler.jobs.NAME]``) with its schedule parsed."""

    name: str
    schedule: CronSchedule
    command: tuple[str, ...]
    retries: int = 2
    backoff_seconds: float = 30
    timeout_seconds: float = 3600
    enabled: bool = True

    @classmethod
    def from_config(cls, name: str, config: JobConfig) -> Job:
        return cls(
            name=name,
            schedule=parse_cron(config.schedule),
            command=tuple(config.command),
            retries=config.retries,
            backoff_seconds=config.backoff_seconds,
            timeout_seconds=config.timeout_seconds,
            enabled=config.enabled,
        )

    @property
    def attempts(self) -> int:
        """The most attempts one run makes: the first and its retries."""
        return 1 + self.retries

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed ``attempt`` (1, 2, …) before the next one."""
        return float(self.backoff_seconds * 2 ** (attempt - 1))


def configured_jobs(config: Config) -> dict[str, Job]:
    """Every job of ``[scheduler.jobs]``, disabled ones included, by name."""
    return {name: Job.from_config(name, job) for name, job in config.scheduler.jobs.items()}


def find_job(jobs: Mapping[str, Job], name: str) -> Job:
    """The job called ``name``, or :class:`UnknownJobError` listing the ones there are."""
    try:
        return jobs[name]
    except KeyError:
        raise UnknownJobError(name, sorted(jobs)) from None


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended: the command's exit code (negative: killed by that signal)."""

    exit_code: int
    output: str = ""  # the tail of stdout and stderr, interleaved
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @property
    def exit_status(self) -> int:
        """The exit code as a shell reports it (128 + N when killed by signal N)."""
        return self.exit_code if self.exit_code >= 0 else 128 - self.exit_code

    def error(self, timeout: float) -> str | None:
        """One line saying why the attempt failed, or None if it succeeded."""
        if self.ok:
            return None
        if self.timed_out:
            reason = f"timed out after {timeout:g} s"
        elif self.exit_code < 0:
            reason = f"killed by {_signal_name(-self.exit_code)}"
        else:
            reason = f"exit status {self.exit_code}"
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        return f"{reason}: {lines[-1][:300]}" if lines else reason


class Runner(Protocol):
    """Runs one attempt of a job's command (a subprocess; a fake in unit tests)."""

    def run(self, command: Sequence[str], timeout: float) -> Outcome:
        """Run ``command`` to its end, ending it after ``timeout`` seconds."""
        ...

    def stop(self) -> None:
        """End every command running now (their ``run`` calls then return)."""
        ...


class SubprocessRunner:
    """Runs commands as subprocesses: ``mercato`` ones through this Python, with the
    scheduler's config file and environment."""

    def __init__(
        self,
        config_path: str | None = None,
        env: Mapping[str, str] | None = None,
        *,
        output_bytes: int = OUTPUT_BYTES,
        kill_grace: float = KILL_GRACE_SECONDS,
    ) -> None:
        self.config_path = config_path
        self.env = dict(os.environ if env is None else env)
        self.output_bytes = output_bytes
        self.kill_grace = kill_grace
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()

    def argv(self, command: Sequence[str]) -> list[str]:
        """The full argument list a job's ``command`` runs as."""
        if command and os.path.isabs(command[0]):
            return list(command)
        config = ["--config", self.config_path] if self.config_path else []
        return [sys.executable, "-m", "mercato", *config, *command]

    def run(self, command: Sequence[str], timeout: float) -> Outcome:
        argv = self.argv(command)
        env = dict(self.env)
        if self.config_path:
            env["MERCATO_CONFIG"] = self.config_path
        if sys.platform == "linux":
            argv = [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *argv]
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: a kill reaches its children
            )
        except OSError as exc:
            return Outcome(127, f"cannot run {command[0] if command else '(nothing)'}: {exc}")
        assert process.stdout is not None
        tail = _Tail(process.stdout, self.output_bytes)
        with self._lock:
            self._running.add(process)
        timed_out = False
        try:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                self._end(process)
        except BaseException:  # e.g. Ctrl-C in `mercato jobs run`: take the command along
            self._end(process)
            raise
        finally:
            with self._lock:
                self._running.discard(process)
            tail.join()
        return Outcome(process.returncode, tail.text(), timed_out)

    def stop(self) -> None:
        with self._lock:
            running = list(self._running)
        threads = [threading.Thread(target=self._end, args=(p,)) for p in running]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _end(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM the command's process group, SIGKILL it if it is still there after the
        grace period."""
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(self.kill_grace)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


class _Tail:
    """Reads a pipe to its end in a thread, keeping only the last ``size`` bytes."""

    def __init__(self, pipe: IO[bytes], size: int) -> None:
        self._pipe = pipe
        self._size = size
        self._data = bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._pipe:
            for chunk in iter(lambda: os.read(self._pipe.fileno(), 65536), b""):
                self._data += chunk
                if len(self._data) > 2 * self._size:
                    del self._data[: -self._size]

    def join(self) -> None:
        self._thread.join()

    def text(self) -> str:
        return bytes(self._data[-self._size :]).decode("utf-8", "replace")


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.poll() is not None:  # reaped: its group id may belong to someone else by now
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# -- backfill windows -----------------------------------------------------------------------------

Step = Literal["hour", "day"]


def backfill_windows(start: datetime, end: datetime, step: Step) -> Iterator[tuple[str, str]]:
    """The windows ``[a, b)`` of one ``step`` from ``start`` to ``end`` (the last one cut at
    ``end``), as the ``--from``/``--to`` values a job is run with: dates for whole days,
    ``YYYY-MM-DDTHH`` otherwise."""
    if end <= start:
        raise MercatoError(f"--to ({_label(end)}) must be after --from ({_label(start)})")
    size = timedelta(hours=1) if step == "hour" else timedelta(days=1)
    whole_days = step == "day" and start.hour == 0 and end.hour == 0
    current = start
    while current < end:
        upper = min(current + size, end)
        if whole_days:
            yield current.strftime("%Y-%m-%d"), upper.strftime("%Y-%m-%d")
        else:
            yield _label(current), _label(upper)
        current = upper


def _label(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H")
