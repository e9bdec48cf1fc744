"""Two real ``mercato run scheduler`` processes on one data directory: one leads, one stands
by, a job never runs twice at once, and after kill -9 of the leader the standby takes over
once the lease has expired and runs the interrupted job again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from mercato.config import DEFAULT_JOBS, StoreConfig
from mercato.store.sqlite import SqliteStore

LEASE_SECONDS = 2.0
TICK_SECONDS = 0.1

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="jobs die with their scheduler on Linux"),
]

# The job: notes its start and end (with the scheduler that started it) and sleeps as long
# as the duration file says in between.
STAMP = """\
import os, sys, time
log, duration = sys.argv[1], sys.argv[2]

def note(what):
    with open(log, "a") as f:
        f.write(f"{what} {os.getppid()} {os.getpid()} {time.time()}\\n")

note("start")
time.sleep(float(open(duration).read()))
note("end")
"""


class Stamp:
    def __init__(self, kind: str, scheduler: int, pid: int, at: float) -> None:
        self.kind, self.scheduler, self.pid, self.at = kind, scheduler, pid, at


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.stamps = tmp_path / "stamps"
        self.duration = tmp_path / "duration"
        self.duration.write_text("60")
        script = tmp_path / "stamp.py"
        script.write_text(f"#!{sys.executable}\n{STAMP}")
        script.chmod(0o755)
        self.config = tmp_path / "mercato.toml"
        disabled = "".join(f"[scheduler.jobs.{name}]\nenabled = false\n" for name in DEFAULT_JOBS)
        self.config.write_text(
            textwrap.dedent(f"""\
                data_dir = "{tmp_path / "data"}"
                [scheduler]
                lease_seconds = {LEASE_SECONDS}
                tick_seconds = {TICK_SECONDS}
                [scheduler.jobs.stamp]
                schedule = "* * * * *"
                command = ["{script}", "{self.stamps}", "{self.duration}"]
                retries = 0
            """)
            + disabled
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MERCATO_")}
        self.processes: list[subprocess.Popen[bytes]] = []

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "mercato", "--config", str(self.config), *args]

    def start(self, name: str) -> tuple[subprocess.Popen[bytes], Path]:
        output = self.tmp_path / f"{name}.out"
        with open(output, "wb") as sink:
            process = subprocess.Popen(
                self.command("run", "scheduler"),
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process, output

    def mercato(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def read_stamps(self) -> list[Stamp]:
        if not self.stamps.exists():
            return []
        lines = self.stamps.read_text().splitlines()
        return [Stamp(k, int(s), int(p), float(t)) for k, s, p, t in map(str.split, lines)]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    made = Setup(tmp_path)
    yield made
    for process in made.processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_one_leader_a_standby_and_a_takeover_after_kill_9(setup: Setup) -> None:
    leader, leader_out = setup.start("a")
    wait_until("the leader runs the job", lambda: len(setup.read_stamps()) == 1)
    (first,) = setup.read_stamps()
    assert (first.kind, first.scheduler) == ("start", leader.pid)

    standby, standby_out = setup.start("b")
    wait_until("b stands by", lambda: "is standby" in standby_out.read_text())
    time.sleep(3 * TICK_SECONDS)  # b tries the lease a few times more
    assert len(setup.read_stamps()) == 1  # b runs nothing while a holds the lease

    setup.duration.write_text("1")  # the next run is short
    leader.kill()  # kill -9 while its job runs
    killed_at = time.time()
    leader.wait()
    wait_until("a's job died with it", lambda: not alive(first.pid), timeout=5)

    wait_until("b ran the job again", lambda: len(setup.read_stamps()) == 3)
    stamps = setup.read_stamps()
    assert [(s.kind, s.scheduler) for s in stamps] == [
        ("start", leader.pid),
        ("start", standby.pid),
        ("end", standby.pid),
    ]
    rerun = stamps[1]
    # not before a's lease ran out (a renewed it at most one tick before it died) …
    assert rerun.at - killed_at >= LEASE_SECONDS - TICK_SECONDS - 0.2
    # … and the two runs never overlapped: a's had ended with a
    assert rerun.at > killed_at
    assert not alive(first.pid)

    history = setup.mercato("jobs", "runs", "--job", "stamp", "--format", "json")
    assert history.returncode == 0, history.stderr
    runs = msgspec.json.decode(history.stdout)
    assert [(r["attempt"], r["status"]) for r in runs] == [(1, "succeeded"), (1, "abandoned")]
    a_holder, b_holder = runs[1]["params"]["scheduler"], runs[0]["params"]["scheduler"]
    assert f":{leader.pid}:" in a_holder
    assert f":{standby.pid}:" in b_holder
    assert runs[1]["error"] == f"scheduler {a_holder} stopped while this ran"
    table = setup.mercato("jobs", "runs")
    assert "abandoned" in table.stdout
    assert "succeeded" in table.stdout

    # b stops cleanly on SIGTERM and frees the lease for the next scheduler at once
    standby.send_signal(signal.SIGTERM)
    assert standby.wait(timeout=15) == 0
    assert "stopped" in standby_out.read_text()
    assert "Traceback" not in standby_out.read_text() + leader_out.read_text()
    with SqliteStore(setup.tmp_path / "data" / "store.sqlite3", StoreConfig()) as store:
        assert store.acquire_lease("scheduler", "next", 30)


def test_sigterm_ends_the_running_job_and_the_next_scheduler_runs_it_again(setup: Setup) -> None:
    first, first_out = setup.start("a")
    wait_until("the job runs", lambda: len(setup.read_stamps()) == 1)
    job_pid = setup.read_stamps()[0].pid
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=15) == 0
    assert not alive(job_pid)
    assert "Traceback" not in first_out.read_text()

    setup.duration.write_text("0")
    second, _ = setup.start("b")
    wait_until("the job ran again", lambda: len(setup.read_stamps()) == 3)
    assert [s.scheduler for s in setup.read_stamps()] == [first.pid, second.pid, second.pid]
    runs = msgspec.json.decode(setup.mercato("jobs", "runs", "--format", "json").stdout)
    assert [r["status"] for r in runs] == ["succeeded", "abandoned"]
    assert runs[1]["error"] == "stopped: the scheduler shut down or lost its lease"
