"""Running one attempt as a real subprocess: output tail, exit codes, timeouts, stops, and the
command dying with the scheduler; and the windows of a backfill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mercato.config import load_config
from mercato.errors import MercatoError
from mercato.scheduler.errors import UnknownJobError
from mercato.scheduler.jobs import (
    Outcome,
    SubprocessRunner,
    backfill_windows,
    configured_jobs,
    find_job,
)


def script(tmp_path: Path, name: str, body: str) -> str:
    """An executable Python script at an absolute path (a command the runner runs as is)."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (dead, not yet reaped by its parent) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[1].startswith("Z"))


def wait_for_file(path: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.01)
    return path.read_text()


def test_a_mercato_command_runs_with_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "mercato.toml"
    config.write_text("[log]\npartitions = 3\n")
    runner = SubprocessRunner(str(config), env={**os.environ, "MERCATO_COLLECTOR_PORT": "9999"})
    assert runner.argv(["seal", "--force"]) == [
        sys.executable,
        "-m",
        "mercato",
        "--config",
        str(config),
        "seal",
        "--force",
    ]
    outcome = runner.run(["config", "show"], timeout=60)
    assert outcome.ok, outcome.output
    assert "partitions = 3" in outcome.output  # from the file
    assert "port = 9999" in outcome.output  # from the environment


def test_an_absolute_command_runs_as_is_with_the_config_in_its_environment(
    tmp_path: Path,
) -> None:
    command = script(
        tmp_path,
        "show.py",
        """\
        import os, sys
        print("args", sys.argv[1:], "config", os.environ.get("MERCATO_CONFIG"))
        """,
    )
    runner = SubprocessRunner("/etc/mercato.toml")
    assert runner.argv([command, "a b"]) == [command, "a b"]
    outcome = runner.run([command, "a b"], timeout=30)
    assert outcome == Outcome(0, "args ['a b'] config /etc/mercato.toml\n")


def test_only_the_tail_of_the_output_is_kept_and_the_exit_code_reported(tmp_path: Path) -> None:
    command = script(
        tmp_path,
        "loud.py",
        """\
        import sys
        for i in range(20000):
            print(f"line {i}")
        sys.stdout.flush()  # a pipe buffers stdout: without PYTHONUNBUFFERED it came last
        print("the end", file=sys.stderr)
        sys.exit(3)
        """,
    )
    outcome = SubprocessRunner(output_bytes=4096).run([command], timeout=30)
    assert outcome.exit_code == 3
    assert not outcome.ok
    assert len(outcome.output.encode()) == 4096
    assert outcome.output.endswith("line 19999\nthe end\n")
    assert outcome.error(30) == "exit status 3: the end"


def test_a_command_that_cannot_start(tmp_path: Path) -> None:
    outcome = SubprocessRunner().run([str(tmp_path / "missing")], timeout=5)
    assert outcome.exit_code == 127
    assert "cannot run" in outcome.output
    assert "missing" in (outcome.error(5) or "")


def test_a_timeout_ends_the_command_and_what_it_started(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    command = script(
        tmp_path,
        "hang.py",
        f"""\
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
        print("started", flush=True)
        time.sleep(60)
        """,
    )
    began = time.monotonic()
    outcome = SubprocessRunner(kill_grace=2).run([command], timeout=1.5)
    assert time.monotonic() - began < 10
    assert outcome.timed_out
    assert outcome.exit_code == -signal.SIGTERM
    assert outcome.output == "started\n"
    assert outcome.error(1.5) == "timed out after 1.5 s: started"
    assert outcome.exit_status == 143
    parent, child = map(int, pids.read_text().split())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(parent)
    assert not alive(child)


def test_a_command_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    command = script(
        tmp_path,
        "stubborn.py",
        """\
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring", flush=True)
        time.sleep(60)
        """,
    )
    outcome = SubprocessRunner(kill_grace=0.5).run([command], timeout=1)
    assert outcome.timed_out
    assert outcome.exit_code == -signal.SIGKILL


def test_stop_ends_running_commands(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    command = script(
        tmp_path,
        "wait.py",
        f"""\
        import time
        open({str(marker)!r}, "w").write("yes")
        time.sleep(60)
        """,
    )
    runner = SubprocessRunner()
    outcomes: list[Outcome] = []
    thread = threading.Thread(target=lambda: outcomes.append(runner.run([command], 60)))
    thread.start()
    wait_for_file(marker)
    runner.stop()
    thread.join(10)
    assert outcomes == [Outcome(-signal.SIGTERM, "")]


@pytest.mark.skipif(sys.platform != "linux", reason="the kernel's parent-death signal is Linux's")
def test_the_command_dies_with_the_scheduler_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    command = script(
        tmp_path,
        "job.py",
        f"""\
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
        """,
    )
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from mercato.scheduler.jobs import SubprocessRunner;"
            "SubprocessRunner().run([sys.argv[1]], 60)",
            command,
        ]
    )
    try:
        job_pid = int(wait_for_file(pid_file))
        assert alive(job_pid)
        holder.kill()  # kill -9: no chance to clean up
        holder.wait()
        deadline = time.monotonic() + 5
        while alive(job_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(job_pid)
    finally:
        if holder.poll() is None:
            holder.kill()


def test_outcome_errors() -> None:
    assert Outcome(0, "fine").error(10) is None
    assert Outcome(2, "\n  \n").error(10) == "exit status 2"
    assert Outcome(-9, "a\nlast words  \n\n").error(10) == "killed by SIGKILL: last words"
    assert Outcome(1, "x" * 1000).error(10) == "exit status 1: " + "x" * 300
    assert Outcome(-9).exit_status == 137
    assert Outcome(0, timed_out=True).error(2) == "timed out after 2 s"


def test_configured_jobs_and_unknown_names() -> None:
    jobs = configured_jobs(load_config(env={"MERCATO_SCHEDULER_JOBS_DRIFT_ENABLED": "false"}))
    assert find_job(jobs, "compact").command == ("archive", "compact", "--all")
    assert not find_job(jobs, "drift").enabled
    assert jobs["seal"].attempts == 3
    assert [jobs["seal"].backoff(n) for n in (1, 2, 3)] == [30, 60, 120]
    with pytest.raises(UnknownJobError, match=r"no job named 'sael'.*compact, drift"):
        find_job(jobs, "sael")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_backfill_windows() -> None:
    assert list(backfill_windows(utc(2026, 11, 1), utc(2026, 11, 4), "day")) == [
        ("2026-11-01", "2026-11-02"),
        ("2026-11-02", "2026-11-03"),
        ("2026-11-03", "2026-11-04"),
    ]
    assert list(backfill_windows(utc(2026, 11, 1, 22), utc(2026, 11, 2, 1), "hour")) == [
        ("2026-11-01T22", "2026-11-01T23"),
        ("2026-11-01T23", "2026-11-02T00"),
        ("2026-11-02T00", "2026-11-02T01"),
    ]
    # days from an hour, and a last window cut at --to
    assert list(backfill_windows(utc(2026, 11, 1, 6), utc(2026, 11, 2, 12), "day")) == [
        ("2026-11-01T06", "2026-11-02T06"),
        ("2026-11-02T06", "2026-11-02T12"),
    ]
    with pytest.raises(MercatoError, match=r"--to .* must be after --from"):
        list(backfill_windows(utc(2026, 11, 2), utc(2026, 11, 2), "day"))
