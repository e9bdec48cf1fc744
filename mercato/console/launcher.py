"""The console's actions (run a job now, promote a version, roll back), run in child processes.

An :class:`Action` is a library call, the one the ``mercato`` command of the same name makes
(:mod:`mercato.console.actions`), together with that command's words: they are how the
console shows it, and two actions with the same words never run at once. The API process
never makes the call itself: a promote seals hours and replays the log for minutes, and in
the API's interpreter it would hold the GIL the event loop serving merchants needs.

:class:`SpawnRunner` makes the call in a child process started with multiprocessing's
*spawn* method (a fresh interpreter: none of the API's threads, locks or sockets), handing it
the API's configuration. The child's stdout and stderr, library logging included, come back
through a pipe while it runs; what the call returned comes back through another when it
ends. :class:`Launcher` keeps the last :data:`MAX_OPERATIONS` of them for
``GET /v1/admin/operations``.

A child ends with the API: ``stop`` (the API shutting down) and a timeout send it SIGTERM,
on which the call unwinds as from Ctrl-C (a job's run is recorded abandoned and its command
ended), then SIGKILL after a grace period; on Linux the kernel sends SIGTERM to a child whose
API process died outright.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import io
import itertools
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, NamedTuple, Protocol

import msgspec

from mercato.config import Config
from mercato.console.errors import OperationRunning
from mercato.errors import MercatoError

logger = logging.getLogger("mercato.console")

OPERATION_TIMEOUT = 6 * 3600.0
MAX_OPERATIONS = 50
OUTPUT_CHARS = 4096  # the tail of an operation's output that is kept
KILL_GRACE_SECONDS = 5.0  # between SIGTERM and SIGKILL
OUTPUT_GRACE_SECONDS = 2.0  # for output after the child ended (from processes it started)
CHILD_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Ending(NamedTuple):
    """How an action's call ended: what it returned (sent back as JSON) and an exit status
    as a shell reports it (128 + N when killed by signal N)."""

    result: object = None
    exit_code: int = 0


@dataclass(frozen=True)
class Action:
    """A library call the console runs in a child process, as ``call(config, *args)``, and
    the words of the ``mercato`` command that makes the same call."""

    command: tuple[str, ...]
    call: Callable[..., Ending]  # a module-level function: the child imports it by name
    args: tuple[Any, ...] = ()


class Operation(msgspec.Struct):
    """An action the console started, and how it ended."""

    id: int
    command: list[str]
    started_at: datetime
    finished_at: datetime | None = None
    exit_code: int | None = None
    output: str = ""  # the tail of what it printed so far
    result: Any = None  # what the call returned (a promote's report, a job's run)

    @property
    def running(self) -> bool:
        return self.finished_at is None


class ActionRunner(Protocol):
    """Runs one action to its end (in a child process; a fake in tests)."""

    def run(self, action: Action, timeout: float, output: Callable[[str], None]) -> Ending:
        """Run ``action``, passing what it prints to ``output`` as it comes; end it after
        ``timeout`` seconds."""
        ...

    def stop(self) -> None:
        """End every action running now (their ``run`` calls then return)."""
        ...


class Launcher:
    """Runs actions in the background, each at most once at a time, and remembers the last
    :data:`MAX_OPERATIONS` of them."""

    def __init__(
        self,
        runner: ActionRunner,
        *,
        timeout: float = OPERATION_TIMEOUT,
        output_chars: int = OUTPUT_CHARS,
    ) -> None:
        self._runner = runner
        self._timeout = timeout
        self._output_chars = output_chars
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._operations: list[Operation] = []

    def start(self, action: Action) -> Operation:
        """Start ``action`` in the background; :class:`OperationRunning` if it runs already."""
        command = list(action.command)
        with self._lock:
            if any(o.running and o.command == command for o in self._operations):
                raise OperationRunning(f"`mercato {' '.join(command)}` is running already")
            operation = Operation(next(self._ids), command, datetime.now(UTC))
            self._operations = [operation, *self._operations][:MAX_OPERATIONS]
            started = msgspec.structs.replace(operation)
        name = f"operation-{operation.id}"
        threading.Thread(target=self._run, args=(operation, action), name=name, daemon=True).start()
        return started

    def _run(self, operation: Operation, action: Action) -> None:
        def output(text: str) -> None:
            with self._lock:
                operation.output = (operation.output + text)[-self._output_chars :]

        try:
            ending = self._runner.run(action, self._timeout, output)
        except Exception as exc:  # e.g. no process could be started
            logger.exception("operation %d (%s) failed to run", operation.id, action.command)
            output(f"cannot run it: {exc}\n")
            ending = Ending(None, 1)
        with self._lock:
            operation.result = ending.result
            operation.exit_code = ending.exit_code
            operation.finished_at = datetime.now(UTC)

    def operations(self) -> list[Operation]:
        """The operations, newest first, as they stand now."""
        with self._lock:
            return [msgspec.structs.replace(o) for o in self._operations]

    def stop(self) -> None:
        """End the running operations."""
        self._runner.stop()


class SpawnRunner:
    """Runs each action in a child process started with multiprocessing's spawn method, with
    ``config`` (see the module)."""

    def __init__(self, config: Config, *, kill_grace: float = KILL_GRACE_SECONDS) -> None:
        self.config = config
        self.kill_grace = kill_grace
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._running: set[BaseProcess] = set()

    def run(self, action: Action, timeout: float, output: Callable[[str], None]) -> Ending:
        # Connections only to hand the pipes' descriptors to the spawned child: the output
        # pipe is then written and read as a plain pipe, the results pipe as a Connection.
        outputs, child_outputs = self._context.Pipe(duplex=False)
        results, child_results = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_child,
            args=(action, self.config, os.getpid(), child_outputs, child_results),
            name=f"mercato {' '.join(action.command)}",
            daemon=True,  # a stop, or at worst the API's exit, ends it
        )
        try:
            with self._lock:
                # Started from this thread, which waits for it: on Linux the child's
                # death signal is tied to the thread that started it.
                process.start()
                self._running.add(process)
        except BaseException:
            outputs.close()
            results.close()
            raise
        finally:
            child_outputs.close()
            child_results.close()
        try:
            result, timed_out = self._follow(process, outputs, results, output, timeout)
        finally:
            with self._lock:
                self._running.discard(process)
            outputs.close()
            results.close()
        if timed_out:
            output(f"\ntimed out after {timeout:g} s\n")
        code = process.exitcode  # its descriptors close with the object (stop may still hold it)
        return Ending(result, 1 if code is None else code if code >= 0 else 128 - code)

    def _follow(
        self,
        process: BaseProcess,
        outputs: Connection,
        results: Connection,
        output: Callable[[str], None],
        timeout: float,
    ) -> tuple[object, bool]:
        """Pass on the child's output and wait for its result until it ends, ending it at
        ``timeout``. Returns the result (None if it sent none) and whether it timed out."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        result: object = None
        never = float("inf")
        now = time.monotonic()
        deadline, kill_at, ended_at = now + timeout, never, never
        readers: list[Any] = [outputs, results]
        # until the child has ended and its pipes are closed (or, should a process it started
        # hold the output pipe, for a little while after it ended)
        while ended_at == never or (readers and now < ended_at + OUTPUT_GRACE_SECONDS):
            if now >= deadline and kill_at == never:
                process.terminate()
                kill_at = now + self.kill_grace
            if now >= kill_at and ended_at == never:
                process.kill()
                kill_at = now + 60.0  # again in a minute, should that be needed
            sentinel = [process.sentinel] if ended_at == never else []
            due = min(deadline if kill_at == never else kill_at, ended_at + OUTPUT_GRACE_SECONDS)
            for ready in wait([*readers, *sentinel], max(0.0, min(due - now, 60.0))):
                if ready is outputs:
                    data = os.read(outputs.fileno(), 65536)
                    if data:
                        output(decoder.decode(data))
                    else:
                        readers.remove(outputs)
                elif ready is results:
                    with contextlib.suppress(EOFError):  # EOF: it ended without a result
                        result = results.recv()
                    readers.remove(results)
                else:
                    ended_at = time.monotonic()
            now = time.monotonic()
        process.join()
        output(decoder.decode(b"", final=True))
        return result, kill_at != never

    def stop(self) -> None:
        with self._lock:
            running = list(self._running)
        threads = [threading.Thread(target=self._end, args=(p,)) for p in running]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _end(self, process: BaseProcess) -> None:
        """SIGTERM, then SIGKILL if it is still there after the grace period."""
        process.terminate()
        process.join(self.kill_grace)
        if process.exitcode is None:
            process.kill()
            process.join()


# -- in the child ---------------------------------------------------------------------------------


def _child(
    action: Action, config: Config, parent: int, outputs: Connection, results: Connection
) -> None:
    """The child process: print into ``outputs``, call the action, send its result."""
    _die_with(parent)
    for fd in (1, 2):
        os.dup2(outputs.fileno(), fd)
    outputs.close()
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)
    logging.basicConfig(level=logging.INFO, format=CHILD_LOG_FORMAT, stream=sys.stderr)
    try:
        ending = action.call(config, *action.args)
    except MercatoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    results.send(msgspec.to_builtins(ending.result))
    results.close()
    sys.exit(ending.exit_code)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: finally blocks and context managers run


def _die_with(parent: int) -> None:
    """On Linux, ask the kernel for SIGTERM when the parent goes away (it may already have)."""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(128 + signal.SIGTERM)
