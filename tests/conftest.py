"""Fixtures shared by the suite: real collector server processes on loopback."""

from __future__ import annotations

import base64
import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

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
                output = self.output.read_text(errors="replace")
                raise RuntimeError(f"collector exited with {self.process.returncode}: {output}")
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

    def __call__(self, data_dir: Path | None = None, **env: str) -> CollectorProcess:
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
    """``collector_factory(data_dir=None, **env)`` starts a collector and returns it."""
    factory = CollectorFactory(tmp_path / "data", tmp_path)
    yield factory
    factory.kill_all()
