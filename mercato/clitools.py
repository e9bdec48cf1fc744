"""What every ``mercato`` command shares: consoles, the error wrapper, the configuration of
the invocation, and a progress bar that only shows on a terminal.

Commands live beside the role they drive (``mercato/batch/cli.py``, …) and are attached to
the root group in :mod:`mercato.cli`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import click
from rich.console import Console
from rich.progress import Progress

from mercato.config import Config, load_config
from mercato.errors import MercatoError

P = ParamSpec("P")
R = TypeVar("R")

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


def friendly(func: Callable[P, R]) -> Callable[P, R]:
    """Turn Mercato's own errors into one line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except MercatoError as exc:
            errors.print(f"[red]error:[/] {exc}", highlight=False)
            sys.exit(1)

    return wrapper


def context_config(ctx: click.Context) -> Config:
    """The configuration of this invocation (``--config`` and ``MERCATO_*``), read once; a
    bad one ends the command with exit status 2."""
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "config" not in obj:
        try:
            obj["config"] = load_config(obj.get("config_path"))
        except MercatoError as exc:
            errors.print(f"[red]error:[/] {exc}", highlight=False)
            sys.exit(2)
    config: Config = obj["config"]
    return config


@contextmanager
def progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on a terminal (``advance(done, total)``); silent otherwise."""
    if not console.is_terminal:
        yield lambda done, total: None
        return
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
