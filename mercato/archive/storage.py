"""The archive's file system: the one place that touches it.

Everything under an archive root goes through :class:`ArchiveStorage`, which sits on
``pyarrow.fs`` so Parquet readers and writers share its file system. Only local roots are
supported for now; object stores (``s3://``) come later, and this class is where they go:
their single-object PUT is already atomic, so they need no temp file and no fsync, and they
will need another way to lock the state.

Local writes are atomic and durable: the bytes go to a temp file in the target's directory,
which is fsync'd, renamed over the target, and the directory fsync'd, so after a crash the
target holds either its old content or all of the new. Temp names start with a dot and end in
``.tmp`` (``.<target name>.<tag>.tmp``), so a ``*.parquet`` glob never matches them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, BinaryIO

import msgspec
import pyarrow.fs as pafs

from mercato.archive.errors import ArchiveLayoutError, PartitionBusyError

TEMP_SUFFIX = ".tmp"


class Entry(msgspec.Struct, frozen=True):
    """A file in a directory of the archive."""

    name: str
    size: int
    mtime: datetime | None


class ArchiveStorage:
    """Files under one archive ``root`` (a local path or ``file://`` URI)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        text = os.fspath(root)
        if "://" in text:
            fs, path = pafs.FileSystem.from_uri(text)
        else:
            fs, path = pafs.LocalFileSystem(), os.path.abspath(text)
        if not isinstance(fs, pafs.LocalFileSystem):
            raise ArchiveLayoutError(f"only local archive roots are supported for now, not {text}")
        self.fs: Any = fs
        self.root: str = path.rstrip("/") or "/"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r})"

    def path(self, relative: str) -> str:
        """The full path of ``relative`` (slash-separated, relative to the root)."""
        return f"{self.root}/{relative}"

    def write_atomic(
        self,
        relative: str,
        write: Callable[[BinaryIO], object],
        *,
        tag: str,
        verify: Callable[[str], None] | None = None,
    ) -> None:
        """Make ``relative`` hold what ``write`` writes, all of it or none of it.

        ``verify`` gets the full path of the finished temp file before it is renamed; if it
        raises, the temp file is deleted and the exception propagates. ``tag`` names the
        writer in the temp file's name, so writers can clean up only their own temp files.
        """
        target = self.path(relative)
        directory, name = target.rsplit("/", 1)
        os.makedirs(directory, exist_ok=True)
        temp = f"{directory}/.{name}.{tag}{TEMP_SUFFIX}"
        try:
            with open(temp, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            if verify is not None:
                verify(temp)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        _fsync_directory(directory)

    def read_bytes(self, relative: str) -> bytes | None:
        """The content of ``relative``, or None if it does not exist."""
        try:
            with self.fs.open_input_stream(self.path(relative)) as stream:
                data: bytes = stream.read()
                return data
        except FileNotFoundError:
            return None

    def open_input(self, relative: str) -> Any:
        """A random-access pyarrow file for reading ``relative`` (e.g. with ``pq.ParquetFile``)."""
        return self.fs.open_input_file(self.path(relative))

    def list_dir(self, relative: str) -> list[Entry]:
        """The files and directories directly in ``relative``; empty if it does not exist."""
        selector = pafs.FileSelector(self.path(relative), allow_not_found=True)
        return [
            Entry(info.base_name, info.size or 0, info.mtime)
            for info in self.fs.get_file_info(selector)
        ]

    def delete(self, relative: str) -> bool:
        """Delete the file ``relative``; False if it was not there."""
        try:
            self.fs.delete_file(self.path(relative))
        except FileNotFoundError:
            return False
        return True

    def sync_directory(self, relative: str) -> None:
        """Make the deletions and renames in ``relative`` durable."""
        with contextlib.suppress(FileNotFoundError):
            _fsync_directory(self.path(relative))

    @contextlib.contextmanager
    def locked(self, relative: str) -> Iterator[None]:
        """Hold an exclusive lock named ``relative`` (blocking) for the ``with`` block."""
        fd = self._lock_file(relative)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def hold(self, relative: str, what: str) -> Callable[[], None]:
        """Take the exclusive lock ``relative`` without waiting, until the returned function
        is called or the process ends; :class:`PartitionBusyError` naming ``what`` if another
        process (or another holder in this one) has it."""
        fd = self._lock_file(relative)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PartitionBusyError(f"{what} is already archived by another process") from None
        return lambda: os.close(fd)

    def _lock_file(self, relative: str) -> int:
        path = self.path(relative)
        os.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def new_tag(role: str) -> str:
    """A tag for temp files that no other writer uses: ``<role>-<random>``."""
    return f"{role}-{uuid.uuid4().hex[:12]}"


def temp_target(name: str) -> tuple[str, str] | None:
    """For a temp file's name, the target's name and the writer's tag; None for other files."""
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return None
    target, _, tag = name[1 : -len(TEMP_SUFFIX)].rpartition(".")
    return (target, tag) if target else None


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
