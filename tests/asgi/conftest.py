"""Both HTTP servers Mercato runs, ``mercato run collector`` and ``mercato run api``, each in
its own process: the bounds of :mod:`mercato.asgi` hold on both."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.asgi import wire
from tests.conftest import CollectorFactory, CollectorProcess
from tests.serving import ApiProcess


class Server:
    """A running server: its port, its process, and its section of the configuration."""

    def __init__(self, role: str, port: int, process: subprocess.Popen[bytes]) -> None:
        self.role = role
        self.port = port
        self.process = process

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def livez(self) -> int:
        return wire.exchange(self.port, wire.get("/livez")).status


StartServer = Callable[..., Server]


@pytest.fixture(params=["collector", "api"])
def start_server(
    request: pytest.FixtureRequest, collector_factory: CollectorFactory, tmp_path: Path
) -> Iterator[StartServer]:
    """``start_server(max_connections="3", ...)``: the role's server with those keys of its
    section set (as ``MERCATO_<ROLE>_<KEY>``)."""
    role: str = request.param
    apis: list[ApiProcess] = []
    collectors: list[CollectorProcess] = []

    def start(**keys: str) -> Server:
        env = {f"MERCATO_{role.upper()}_{key.upper()}": value for key, value in keys.items()}
        if role == "collector":
            collector = collector_factory(**env)
            collectors.append(collector)
            assert collector.process is not None
            return Server(role, collector.port, collector.process)
        data = tmp_path / f"api-{len(apis)}"
        data.mkdir()
        apis.append(ApiProcess(data, env))
        return Server(role, apis[-1].port, apis[-1].process)

    yield start
    # each exits 0 after what the test sent it
    for collector in collectors:
        assert collector.stop() == 0, collector.output.read_text()
    for api in apis:
        api.stop()
