"""``mercato jobs …`` as users run it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

# A job that notes its arguments, prints, and exits with the code in its first argument.
NOTE = """\
import sys
with open(sys.argv[2], "a") as f:
    f.write(" ".join(sys.argv[3:]) + "\\n")
print("working on", " ".join(sys.argv[3:]))
sys.exit(int(sys.argv[1]))
"""


class Jobs:
    def __init__(self, tmp_path: Path) -> None:
        script = tmp_path / "note.py"
        script.write_text(f"#!{sys.executable}\n{NOTE}")
        script.chmod(0o755)
        self.notes = tmp_path / "notes"
        self.config = tmp_path / "mercato.toml"
        self.config.write_text(
            textwrap.dedent(f"""\
                data_dir = "{tmp_path / "data"}"
                [scheduler.jobs.ok]
                schedule = "0 * * * *"
                command = ["{script}", "0", "{self.notes}"]
                [scheduler.jobs.broken]
                schedule = "*/10 * * * *"
                command = ["{script}", "3", "{self.notes}"]
                retries = 1
                backoff_seconds = 0
                [scheduler.jobs.drift]
                enabled = false
            """)
        )

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MERCATO_")}
        env["COLUMNS"] = "400"  # tables unwrapped, however long the paths
        return subprocess.run(
            [sys.executable, "-m", "mercato", "--config", str(self.config), "jobs", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def runs(self, *args: str) -> list[dict[str, object]]:
        result = self("runs", "--format", "json", *args)
        assert result.returncode == 0, result.stderr
        decoded: list[dict[str, object]] = msgspec.json.decode(result.stdout)
        return decoded


@pytest.fixture
def jobs(tmp_path: Path) -> Jobs:
    return Jobs(tmp_path)


def test_list_shows_every_job_with_its_schedule(jobs: Jobs) -> None:
    result = jobs("list")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("│ ")}
    assert set(lines) == {"seal", "compact", "retention", "drift", "prune", "ok", "broken"}
    assert "*/5 * * * *" in lines["seal"]
    assert "disabled" in lines["drift"]
    assert "mercato seal" in lines["seal"]


def test_run_records_every_attempt_and_exits_with_the_jobs_code(jobs: Jobs) -> None:
    result = jobs("run", "broken")
    assert result.returncode == 3
    assert "working on" in result.stdout  # the job's output
    assert "attempt 2 of 2" in result.stderr
    assert jobs.notes.read_text() == "\n\n"  # two attempts, no extra arguments
    runs = jobs.runs()
    assert [(r["job"], r["attempt"], r["status"]) for r in runs] == [
        ("broken", 2, "failed"),
        ("broken", 1, "failed"),
    ]
    assert {r["error"] for r in runs} == {"exit status 3: working on"}
    assert {msgspec.json.encode(r["params"]) for r in runs} == {b'{"trigger":"manual"}'}

    ok = jobs("run", "ok")
    assert ok.returncode == 0, ok.stderr
    assert [r["status"] for r in jobs.runs("--job", "ok")] == ["succeeded"]
    assert len(jobs.runs("--limit", "2")) == 2


def test_backfill_runs_one_window_at_a_time_with_from_and_to(jobs: Jobs) -> None:
    hours = ["--from", "2026-11-01T22", "--to", "2026-11-02T01", "--step", "hour"]
    result = jobs("backfill", "ok", *hours)
    assert result.returncode == 0, result.stderr
    assert "3 window(s)" in result.stdout
    assert jobs.notes.read_text().splitlines() == [
        "--from 2026-11-01T22 --to 2026-11-01T23",
        "--from 2026-11-01T23 --to 2026-11-02T00",
        "--from 2026-11-02T00 --to 2026-11-02T01",
    ]
    assert [r["params"] for r in jobs.runs()] == [
        {"from": "2026-11-02T00", "to": "2026-11-02T01"},
        {"from": "2026-11-01T23", "to": "2026-11-02T00"},
        {"from": "2026-11-01T22", "to": "2026-11-01T23"},
    ]
    days = jobs("backfill", "ok", "--from", "2026-11-01", "--to", "2026-11-03")
    assert days.returncode == 0, days.stderr
    assert jobs.notes.read_text().splitlines()[-2:] == [
        "--from 2026-11-01 --to 2026-11-02",
        "--from 2026-11-02 --to 2026-11-03",
    ]


def test_backfill_stops_at_the_first_window_that_fails(jobs: Jobs) -> None:
    result = jobs("backfill", "broken", "--from", "2026-11-01", "--to", "2026-11-05")
    assert result.returncode == 3
    assert "broken --from 2026-11-01 --to 2026-11-02 failed" in result.stderr
    assert "0 of 4 window(s) done" in result.stderr
    assert len(jobs.notes.read_text().splitlines()) == 2  # the first window, twice
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["run", "sael"],
        ["backfill", "sael", "--from", "2026-11-01", "--to", "2026-11-02"],
        ["runs", "--job", "sael"],
    ],
)
def test_an_unknown_job_is_one_line_and_exit_2(jobs: Jobs, args: list[str]) -> None:
    result = jobs(*args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: no job named 'sael' is configured (jobs: broken, compact, drift, ok, "
        "prune, retention, seal)"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2026-13-01", "--to", "2026-11-02"], "--from takes a UTC hour"),
        (["--from", "2026-11-02", "--to", "2026-11-01"], "--to (2026-11-01T00) must be after"),
    ],
)
def test_bad_backfill_ranges_are_one_line(jobs: Jobs, args: list[str], message: str) -> None:
    result = jobs("backfill", "ok", *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not jobs.notes.exists()
