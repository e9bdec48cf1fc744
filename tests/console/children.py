"""Actions for the launcher's tests: module-level functions a spawned child imports by name."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from mercato.config import Config
from mercato.console.launcher import Ending
from mercato.errors import MercatoError


def echo(config: Config, text: str, code: int) -> Ending:
    """Prints to stdout and stderr, returns its arguments and what it was configured with."""
    print(f"out: {text}")
    print(f"err: {text}", file=sys.stderr)
    os.write(1, "straight to the descriptor: ünïcode\n".encode())
    return Ending({"text": text, "data_dir": config.data_dir, "pid": os.getpid()}, code)


def refuse(config: Config) -> Ending:
    raise MercatoError("nothing to do here")


def crash(config: Config) -> Ending:
    raise RuntimeError("a bug")


def sleep(config: Config, seconds: float, marker: str) -> Ending:
    """Sleeps; notes on the way out (SIGTERM unwinds it) that it was ended."""
    print("sleeping", flush=True)
    try:
        time.sleep(seconds)
    finally:
        Path(marker).write_text("unwound")
    return Ending("woke up")


def stubborn(config: Config, seconds: float) -> Ending:
    """Ignores SIGTERM for good: only SIGKILL ends it."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ignoring SIGTERM", flush=True)
    time.sleep(seconds)
    return Ending()


def chatty(config: Config, lines: int) -> Ending:
    for n in range(lines):
        print(f"line {n:06d} " + "x" * 100)
    return Ending(lines)


def nap(config: Config, seconds: float, pidfile: str) -> Ending:
    """Notes its pid, then sleeps."""
    Path(pidfile).write_text(str(os.getpid()))
    time.sleep(seconds)
    return Ending()
