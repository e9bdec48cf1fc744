"""The archive's file system: the one place that touches it, and that opens it.

Everything under an archive root goes through :class:`ArchiveStorage`, which sits on
``pyarrow.fs`` so Parquet readers and writers share its file system; the batch engines and
``mercato sql`` read through its :attr:`ArchiveStorage.fs` too, in place. A root is a local
path (or ``file://`` URI) or ``s3://bucket/prefix`` on AWS S3 or any S3-compatible store
(``s3_endpoint``, e.g. ``http://minio:9000``; its scheme chooses TLS). S3 credentials come
from the standard environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``) or the other places the AWS SDK looks.

Local writes are atomic and durable: the bytes go to a temp file in the target's directory,
which is fsync'd, renamed over the target, and the directory fsync'd, so after a crash the
target holds either its old content or all of the new. Temp names start with a dot and end in
``.tmp`` (``.<target name>.<tag>.tmp``), so a ``*.parquet`` glob never matches them.

On S3 an object appears whole or not at all (a PUT, or a multipart upload's completion), so
a write puts the object directly: no temp file, no fsync, no rename. The locks are local
advisory locks (``fcntl``) and do not exist on S3: there they are skipped, so **exactly one
archiver may own each partition** of an S3 archive, which the deployment must guarantee (a
second one is not refused as on local disk). Archivers that split the partitions each commit
their own state object (:func:`mercato.archive.layout.state_path`), so no object is ever
replaced by two processes. An error of the object store (unreachable endpoint, missing bucket,
denied access) is an :class:`~mercato.archive.errors.ArchiveUnavailableError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, BinaryIO

import msgspec
import pyarrow as pa
import pyarrow.fs as pafs

from mercato.archive.errors import ArchiveLayoutError, ArchiveUnavailableError, PartitionBusyError

TEMP_SUFFIX = ".tmp"
S3_SCHEME = "s3://"


class Entry(msgspec.Struct, frozen=True):
    """A file in a directory of the archive."""

    name: str
    size: int
    mtime: datetime | None


class ArchiveStorage:
    """Files under one archive ``root``: a local path, a ``file://`` URI, or
    ``s3://bucket/prefix`` (``s3_endpoint``: empty for AWS, else a URL like
    ``http://minio:9000``; ``s3_region``: empty for the AWS SDK's default)."""

    def __init__(
        self, root: str | os.PathLike[str], *, s3_endpoint: str = "", s3_region: str = ""
    ) -> None:
        text = os.fspath(root)
        self.fs: Any
        if text.startswith(S3_SCHEME):
            self.fs, path = s3_filesystem(s3_endpoint, s3_region), text.removeprefix(S3_SCHEME)
            if not path.strip("/"):
                raise ArchiveLayoutError(f"an S3 archive root is s3://bucket[/prefix], not {text}")
        elif "://" in text:
            self.fs, path = pafs.FileSystem.from_uri(text)
            if not isinstance(self.fs, pafs.LocalFileSystem):
                raise ArchiveLayoutError(f"an archive root is local or s3://..., not {text}")
        else:
            self.fs, path = pafs.LocalFileSystem(), os.path.abspath(text)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.root: str = path.rstrip("/") or "/"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __str__(self) -> str:
        return self.root if self.local else f"{S3_SCHEME}{self.root}"

    def path(self, relative: str) -> str:
        """The full path of ``relative`` (slash-separated, relative to the root), as
        :attr:`fs` names it (on S3: ``bucket/prefix/...``, no scheme)."""
        return f"{self.root}/{relative}"

    def write_atomic(
        self,
        relative: str,
        write: Callable[[BinaryIO], object],
        *,
        tag: str,
        verify: Callable[[Any], None] | None = None,
    ) -> None:
        """Make ``relative`` hold what ``write`` writes, all of it or none of it.

        ``verify`` gets the finished content before it becomes visible, as something
        ``pyarrow.parquet.ParquetFile`` opens (locally the temp file's full path, on S3 a
        buffer); if it raises, nothing is written and the exception propagates. ``tag`` names
        the writer in a local temp file's name, so writers can clean up only their own.
        """
        if not self.local:
            self._put(relative, write, verify)
            return
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

    def _put(
        self,
        relative: str,
        write: Callable[[BinaryIO], object],
        verify: Callable[[Any], None] | None,
    ) -> None:
        buffer = io.BytesIO()
        write(buffer)
        data = buffer.getvalue()
        if verify is not None:
            verify(pa.BufferReader(data))
        with self._reaching(), self.fs.open_output_stream(self.path(relative)) as out:
            out.write(data)

    def read_bytes(self, relative: str) -> bytes | None:
        """The content of ``relative``, or None if it does not exist."""
        try:
            with self._reaching(), self.fs.open_input_stream(self.path(relative)) as stream:
                data: bytes = stream.read()
                return data
        except FileNotFoundError:
            self._check_bucket()
            return None

    def open_input(self, relative: str) -> Any:
        """A random-access pyarrow file for reading ``relative`` (e.g. with ``pq.ParquetFile``)."""
        with self._reaching():
            return self.fs.open_input_file(self.path(relative))

    def list_dir(self, relative: str) -> list[Entry]:
        """The files and directories directly in ``relative``; empty if it does not exist."""
        selector = pafs.FileSelector(self.path(relative), allow_not_found=True)
        with self._reaching():
            infos = self.fs.get_file_info(selector)
        if not infos:
            self._check_bucket()
        return [Entry(info.base_name, info.size or 0, info.mtime) for info in infos]

    def delete(self, relative: str) -> bool:
        """Delete the file ``relative``; False if it was not there."""
        try:
            with self._reaching():
                self.fs.delete_file(self.path(relative))
        except FileNotFoundError:
            return False
        return True

    def sync_directory(self, relative: str) -> None:
        """Make the deletions and renames in ``relative`` durable (on S3 they are already)."""
        if self.local:
            with contextlib.suppress(FileNotFoundError):
                _fsync_directory(self.path(relative))

    @contextlib.contextmanager
    def locked(self, relative: str) -> Iterator[None]:
        """Hold an exclusive lock named ``relative`` (blocking) for the ``with`` block; on S3
        nothing (see the module docstring)."""
        if not self.local:
            yield
            return
        fd = self._lock_file(relative)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def hold(self, relative: str, what: str) -> Callable[[], None]:
        """Take the exclusive lock ``relative`` without waiting, until the returned function
        is called or the process ends; :class:`PartitionBusyError` naming ``what`` if another
        process (or another holder in this one) has it. On S3 nothing is held (see the module
        docstring)."""
        if not self.local:
            return lambda: None
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

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        """Object-store failures as :class:`ArchiveUnavailableError`; local errors as they are."""
        try:
            yield
        except FileNotFoundError:
            raise
        except OSError as exc:
            if self.local:
                raise
            raise ArchiveUnavailableError(f"archive {self}: {_first_line(exc)}") from None

    def _check_bucket(self) -> None:
        """On S3, nothing found in a missing bucket is an error, not an empty archive."""
        if self.local:
            return
        bucket = self.root.split("/", 1)[0]
        with self._reaching():
            found = self.fs.get_file_info(bucket).type != pafs.FileType.NotFound
        if not found:
            raise ArchiveUnavailableError(f"archive {self}: the bucket {bucket!r} does not exist")


def s3_filesystem(endpoint: str = "", region: str = "") -> pafs.S3FileSystem:
    """The S3 file system of an archive: AWS, or the S3-compatible ``endpoint`` (a URL whose
    scheme, http or https, chooses TLS); credentials from the environment."""
    options: dict[str, Any] = {}
    if endpoint:
        scheme, sep, address = endpoint.partition("://")
        if not sep or scheme not in ("http", "https") or not address.strip("/"):
            raise ArchiveLayoutError(
                f"archive.s3_endpoint is a URL like http://minio:9000, not {endpoint!r}"
            )
        options |= {"scheme": scheme, "endpoint_override": address.rstrip("/")}
    if region:
        options["region"] = region
    # small objects go up in one PUT instead of a multipart upload
    return pafs.S3FileSystem(allow_delayed_open=True, **options)


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
