"""A server raises its soft limit on open files so that ``max_connections`` fit, and says so
when the hard limit is too low."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mercato.demo.runner import free_port
from tests.asgi import wire

pytestmark = pytest.mark.slow


def open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open files limit")


@pytest.mark.parametrize(("hard", "expected"), [(4096, 2 * 1000 + 256), (1024, 1024)])
def test_the_open_files_limit_is_raised_for_max_connections(tmp_path, hard, expected):
    _, limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    if limit != resource.RLIM_INFINITY and limit < hard:
        pytest.skip(f"the hard limit here is {limit}")
    if shutil.which("prlimit") is None:
        pytest.skip("no prlimit (util-linux)")
    port = free_port()
    env = {**os.environ, "MERCATO_DATA_DIR": str(tmp_path), "MERCATO_COLLECTOR_PORT": str(port)}
    output = tmp_path / "collector.out"
    with open(output, "wb") as out:
        process = subprocess.Popen(
            # prlimit execs the command: the pid is the collector's
            [
                "prlimit",
                f"--nofile=256:{hard}",
                sys.executable,
                "-m",
                "mercato",
                "run",
                "collector",
            ],
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if wire.exchange(port, wire.get("/livez")).status == 200:
                    break
            except OSError:
                assert process.poll() is None, output.read_text()
                assert time.monotonic() < deadline, output.read_text()
                time.sleep(0.1)
        assert open_files_limit(process.pid) == expected
        warned = "too few for max_connections = 1000" in output.read_text()
        assert warned == (expected < 2 * 1000 + 256)
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
