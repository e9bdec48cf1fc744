"""Write keys: producers' credentials, stored only as SHA-256 hashes, each mapped to a source.

A key is shown once, when created (``mercato keys create --source web``). The file is
``<data_dir>/keys.json``, replaced atomically on every change and locked against concurrent
changes; running collectors notice changes (new and revoked keys) within a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from mercato.collector.errors import KeyStoreError

KEY_PREFIX = "mk_"


class WriteKey(msgspec.Struct, frozen=True):
    id: str
    source: str
    sha256: str
    created_at: datetime
    revoked_at: datetime | None = None


class KeyFile(msgspec.Struct):
    keys: list[WriteKey] = msgspec.field(default_factory=list)


class KeyCheck(msgspec.Struct, frozen=True):
    """The result of looking a presented key up: its source, or why it is refused."""

    source: str | None
    revoked: bool = False


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class KeyStore:
    """The write keys in one JSON file; lookups are served from memory."""

    def __init__(self, path: Path, reload_interval: float = 1.0) -> None:
        self.path = path
        self._reload_interval = reload_interval
        self._checked_at = 0.0
        self._mtime_ns: int | None = None
        self._by_hash: dict[str, WriteKey] = {}

    def create(self, source: str) -> tuple[WriteKey, str]:
        """A new key for ``source``; returns the stored record and the secret (shown once)."""
        if not source or not source.replace("-", "").replace("_", "").isalnum():
            raise KeyStoreError("a source name is letters, digits, '-' and '_'")
        secret = KEY_PREFIX + secrets.token_urlsafe(24)
        key = WriteKey(
            id="wk_" + secrets.token_hex(6),
            source=source,
            sha256=hash_key(secret),
            created_at=datetime.now(UTC),
        )
        with self._locked() as data:
            data.keys.append(key)
        return key, secret

    def revoke(self, key_id: str) -> WriteKey:
        with self._locked() as data:
            for i, key in enumerate(data.keys):
                if key.id == key_id:
                    if key.revoked_at is None:
                        data.keys[i] = msgspec.structs.replace(key, revoked_at=datetime.now(UTC))
                    return data.keys[i]
        raise KeyStoreError(f"no write key with id {key_id!r}")

    def list(self) -> list[WriteKey]:
        return self._read().keys

    def check(self, secret: str) -> KeyCheck:
        """Which source ``secret`` belongs to; re-reads the file when it changed."""
        now = time.monotonic()
        if now - self._checked_at >= self._reload_interval:
            self._checked_at = now
            self._reload()
        key = self._by_hash.get(hash_key(secret))
        if key is None:
            return KeyCheck(source=None)
        if key.revoked_at is not None:
            return KeyCheck(source=None, revoked=True)
        return KeyCheck(source=key.source)

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._by_hash, self._mtime_ns = {}, None
            return
        if mtime != self._mtime_ns:
            self._by_hash = {key.sha256: key for key in self._read().keys}
            self._mtime_ns = mtime

    def _read(self) -> KeyFile:
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=KeyFile)
        except FileNotFoundError:
            return KeyFile()
        except (msgspec.DecodeError, OSError) as exc:
            raise KeyStoreError(f"cannot read write keys from {self.path}: {exc}") from None

    @contextmanager
    def _locked(self) -> Iterator[KeyFile]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_suffix(".lock"), "a+b")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise self._cannot_write(exc) from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            yield data
            self._write(data)
            self._checked_at = 0.0

    def _write(self, data: KeyFile) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as out:
                out.write(msgspec.json.format(msgspec.json.encode(data)))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:  # a full disk, say: the keys file is as it was
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise self._cannot_write(exc) from None

    def _cannot_write(self, exc: OSError) -> KeyStoreError:
        return KeyStoreError(f"cannot save write keys to {self.path}: {exc.strerror or exc}")
