"""Fixtures shared by the suite: real collector server processes on loopback, a small disk to
fill (a tmpfs), and an S3-compatible object store (moto's server) for ``s3://`` archive
roots."""

from __future__ import annotations

import base64
import errno
import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pyarrow.fs as pafs
import pytest

from mercato.archive.storage import ArchiveStorage
from mercato.collector.keys import KeyStore
from mercato.demo.runner import free_port


class CollectorProcess:
    """``mercato run collector`` in a subprocess, with a write key and a tiny HTTP client."""

    def __init__(self, data_dir: Path, secret: str, env: dict[str, str], output: Path) -> None:
        self.data_dir = data_dir
        self.output = output
        self.secret = secret
        self.env = env
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> CollectorProcess:
        self.port = free_port()
        env = {
            **os.environ,
            "MERCATO_DATA_DIR": str(self.data_dir),
            "MERCATO_COLLECTOR_PORT": str(self.port),
            **self.env,
        }
        with open(self.output, "ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mercato", "run", "collector"],
                env=env,
                stdout=output,
                stderr=output,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                printed = self.output.read_text(errors="replace")
                raise RuntimeError(f"collector exited with {self.process.returncode}: {printed}")
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("collector did not become ready")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def auth(self) -> dict[str, str]:
        token = base64.b64encode(f"{self.secret}:".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body, headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def post_events(self, events: list[dict[str, object]]) -> tuple[int, dict[str, str], bytes]:
        headers = {**self.auth(), "Content-Type": "application/json"}
        return self.request("POST", "/v1/events", msgspec.json.encode(events), headers)


class CollectorFactory:
    """Starts collectors; all collectors of one data directory share its write key."""

    def __init__(self, default_dir: Path, output_dir: Path) -> None:
        self.default_dir = default_dir
        self.output_dir = output_dir
        self.secrets: dict[Path, str] = {}
        self.started: list[CollectorProcess] = []

    def __call__(self, data_dir: Path | None = None, /, **env: str) -> CollectorProcess:
        directory = data_dir or self.default_dir
        directory.mkdir(parents=True, exist_ok=True)
        if directory not in self.secrets:
            _, self.secrets[directory] = KeyStore(directory / "keys.json").create("test")
        output = self.output_dir / f"collector-{len(self.started)}.out"
        process = CollectorProcess(directory, self.secrets[directory], env, output).start()
        self.started.append(process)
        return process

    def kill_all(self) -> None:
        for process in self.started:
            if process.process is not None and process.process.poll() is None:
                process.process.kill()
                process.process.wait()


@pytest.fixture
def collector_factory(tmp_path: Path) -> Iterator[CollectorFactory]:
    """``collector_factory(data_dir=None, /, **env)`` starts a collector and returns it."""
    factory = CollectorFactory(tmp_path / "data", tmp_path)
    yield factory
    factory.kill_all()


class SmallDisk:
    """A 3 MB tmpfs at ``path``, for what a full disk does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        """Take every free byte left."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"\0" * 65_536)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)

    def free(self) -> None:
        """Give the space back."""
        self.filler.unlink()


def mount_small_disk(path: Path) -> str | None:
    """Mount a 3 MB tmpfs at ``path``; why it cannot be, or None."""
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs"
    if shutil.which("mount") is None:
        return "no mount command"
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return f"cannot mount tmpfs here: {result.stderr.strip()}"
    return None


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 3 MB tmpfs mounted for the test (it needs root: skipped with the reason otherwise)."""
    mountpoint = tmp_path / "small-disk"
    reason = mount_small_disk(mountpoint)
    if reason:
        pytest.skip(reason)
    try:
        yield SmallDisk(mountpoint)
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


class S3Server:
    """moto's S3 server (``python -m moto.server``) on loopback, in a subprocess: a real HTTP
    object store that pyarrow's S3 client talks to as to AWS or MinIO."""

    ACCESS_KEY = "mercato-test"
    SECRET_KEY = "mercato-test-secret"

    def __init__(self, output: Path) -> None:
        self.output = output
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> S3Server:
        with open(self.output, "ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=output,
                stderr=output,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output_text = self.output.read_text(errors="replace")
                raise RuntimeError(f"moto exited with {self.process.returncode}: {output_text}")
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                connection.request("GET", "/")
                if connection.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.1)
            finally:
                connection.close()
        raise RuntimeError("moto's S3 server did not answer")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def create_bucket(self) -> str:
        name = f"mercato-{uuid.uuid4().hex[:12]}"
        fs = pafs.S3FileSystem(
            access_key=self.ACCESS_KEY,
            secret_key=self.SECRET_KEY,
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
        )
        fs.create_dir(name)
        return name


class S3Root:
    """An ``s3://`` archive root in a bucket of its own."""

    def __init__(self, url: str, endpoint: str) -> None:
        self.url = url
        self.endpoint = endpoint

    def storage(self) -> ArchiveStorage:
        return ArchiveStorage(self.url, s3_endpoint=self.endpoint)

    def env(self) -> dict[str, str]:
        """The ``MERCATO_*`` variables that point a ``mercato`` command at this root."""
        return {"MERCATO_ARCHIVE_PATH": self.url, "MERCATO_ARCHIVE_S3_ENDPOINT": self.endpoint}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.out").start()
    yield server
    server.stop()


@pytest.fixture
def s3_root(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Root:
    """An empty ``s3://<new bucket>/archive`` on :func:`s3_server`, with the server's dummy
    credentials in the environment (as ``AWS_*`` variables, where deployments put them)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3Server.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3Server.SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    return S3Root(f"s3://{s3_server.create_bucket()}/archive", s3_server.endpoint)
