"""The console's launcher: actions run in spawned child processes with the API's config, their
output and result come back, and they end on a timeout, on stop, and with the API process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mercato.config import Config, load_config
from mercato.console.errors import OperationRunning
from mercato.console.launcher import OUTPUT_CHARS, Action, Ending, Launcher, Operation, SpawnRunner
from tests.console import children

ROOT = Path(__file__).resolve().parents[2]


def finished(launcher: Launcher, operation: Operation, timeout: float = 60) -> Operation:
    deadline = time.monotonic() + timeout
    while True:
        (now,) = [o for o in launcher.operations() if o.id == operation.id]
        if not now.running:
            return now
        assert time.monotonic() < deadline, now
        time.sleep(0.05)


def output_shows(launcher: Launcher, operation: Operation, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in next(o for o in launcher.operations() if o.id == operation.id).output:
        assert time.monotonic() < deadline, launcher.operations()
        time.sleep(0.05)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(env={"MERCATO_DATA_DIR": str(tmp_path / "data")})


@pytest.fixture
def launcher(config: Config) -> Iterator[Launcher]:
    launcher = Launcher(SpawnRunner(config, kill_grace=1.0))
    yield launcher
    launcher.stop()


def test_an_action_runs_in_a_child_with_the_config(launcher: Launcher, config: Config) -> None:
    started = launcher.start(Action(("echo", "hi"), children.echo, ("hi", 0)))
    assert (started.command, started.running, started.exit_code) == (["echo", "hi"], True, None)
    done = finished(launcher, started)
    assert done.exit_code == 0, done.output
    assert done.result["text"] == "hi"
    assert done.result["data_dir"] == config.data_dir
    assert done.result["pid"] != os.getpid()
    assert "out: hi\n" in done.output
    assert "err: hi\n" in done.output
    assert "straight to the descriptor: ünïcode\n" in done.output


def test_the_exit_status_and_the_result_both_come_back(launcher: Launcher) -> None:
    done = finished(launcher, launcher.start(Action(("echo",), children.echo, ("no", 3))))
    assert (done.exit_code, done.result["text"]) == (3, "no")


def test_a_mercato_error_is_one_line_and_a_bug_a_traceback(launcher: Launcher) -> None:
    refused = finished(launcher, launcher.start(Action(("refuse",), children.refuse)))
    assert (refused.exit_code, refused.result) == (1, None)
    assert refused.output.strip() == "error: nothing to do here"
    crashed = finished(launcher, launcher.start(Action(("crash",), children.crash)))
    assert (crashed.exit_code, crashed.result) == (1, None)
    assert "Traceback" in crashed.output
    assert "RuntimeError: a bug" in crashed.output


def test_the_same_action_runs_once_at_a_time(launcher: Launcher, tmp_path: Path) -> None:
    first = launcher.start(Action(("nap",), children.sleep, (60, str(tmp_path / "one"))))
    with pytest.raises(OperationRunning, match="`mercato nap` is running already"):
        launcher.start(Action(("nap",), children.sleep, (60, str(tmp_path / "two"))))
    other = launcher.start(Action(("echo",), children.echo, ("meanwhile", 0)))
    assert finished(launcher, other).exit_code == 0
    output_shows(launcher, first, "sleeping")
    launcher.stop()
    assert finished(launcher, first, 10).exit_code == 128 + signal.SIGTERM
    assert (tmp_path / "one").read_text() == "unwound"  # SIGTERM unwinds the call
    assert not (tmp_path / "two").exists()
    assert [o.id for o in launcher.operations()] == [other.id, first.id]


def test_a_timeout_ends_the_child_and_says_so(config: Config, tmp_path: Path) -> None:
    launcher = Launcher(SpawnRunner(config, kill_grace=1.0), timeout=3)
    marker = tmp_path / "marker"
    done = finished(launcher, launcher.start(Action(("nap",), children.sleep, (60, str(marker)))))
    assert done.exit_code == 128 + signal.SIGTERM
    assert done.output.endswith("timed out after 3 s\n")
    assert marker.read_text() == "unwound"
    stubborn = launcher.start(Action(("stubborn",), children.stubborn, (60,)))
    done = finished(launcher, stubborn)
    assert done.exit_code == 128 + signal.SIGKILL  # SIGTERM ignored: killed after the grace
    assert "ignoring SIGTERM" in done.output


def test_only_the_tail_of_the_output_is_kept(launcher: Launcher) -> None:
    done = finished(launcher, launcher.start(Action(("chatty",), children.chatty, (2000,))))
    assert done.result == 2000
    assert len(done.output) == OUTPUT_CHARS
    assert done.output.endswith(f"line 001999 {'x' * 100}\n")


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_the_child_dies_with_the_api_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            from mercato.config import Config
            from mercato.console.launcher import Action, SpawnRunner
            from tests.console.children import nap
            SpawnRunner(Config()).run(Action(("nap",), nap, (120, {str(pidfile)!r})), 300, print)
        """)],
        cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists() or not pidfile.read_text():
            assert parent.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child = int(pidfile.read_text())
        assert alive(child)
        parent.kill()  # as kill -9 would: no chance to stop anything
        parent.wait()
        deadline = time.monotonic() + 10
        while alive(child):
            assert time.monotonic() < deadline, "the child outlived its parent"
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


class FakeRunner:
    """Ends each action with ``ending``, after printing its words; blocks while ``gate`` is
    clear."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.stops = 0

    def run(self, action: Action, timeout: float, output: Callable[[str], None]) -> Ending:
        output(" ".join(action.command) + "\n")
        self.gate.wait(10)
        return Ending({"ran": list(action.command)}, 0)

    def stop(self) -> None:
        self.stops += 1
        self.gate.set()


def test_the_launcher_keeps_the_last_operations_newest_first() -> None:
    runner = FakeRunner()
    launcher = Launcher(runner)
    started = [launcher.start(Action(("job", str(n)), children.refuse)) for n in range(60)]
    for operation in started[10:]:  # the first ten are forgotten
        finished(launcher, operation)
    listed = launcher.operations()
    assert [o.id for o in listed] == [o.id for o in reversed(started)][:50]
    assert listed[0].result == {"ran": ["job", "59"]}
    assert listed[0].output == "job 59\n"
    runner.gate.clear()
    running = launcher.start(Action(("slow",), children.refuse))
    output_shows(launcher, running, "slow")  # the output so far, while it runs
    assert launcher.operations()[0].running
    launcher.stop()
    assert runner.stops == 1
    assert finished(launcher, running).exit_code == 0
