"""The error hook: once, after the last failed attempt, by command and by webhook."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mercato.demo.runner import free_port
from mercato.scheduler.clock import ManualClock
from mercato.scheduler.jobs import Outcome
from mercato.scheduler.scheduler import Scheduler
from mercato.store.base import JobStore

from .conftest import FakeRunner, job, make_config

# A hook command that appends what it was told to a file, one JSON line per call.
RECORD = (
    "import json, os, sys\n"
    "keys = ('MERCATO_JOB', 'MERCATO_RUN_ID', 'MERCATO_ATTEMPT', 'MERCATO_ERROR')\n"
    "with open(sys.argv[1], 'a') as f:\n"
    "    f.write(json.dumps({k: os.environ[k] for k in keys}) + '\\n')\n"
)


class Receiver:
    """A real HTTP server in a thread that keeps every POST body (and answers ``status``)."""

    def __init__(self, status: int = 204) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                receiver.headers.append(dict(self.headers))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/mercato"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def always(outcome: Outcome) -> FakeRunner:
    return FakeRunner(lambda command: outcome)


def test_the_command_hook_runs_once_after_the_last_attempt(
    tmp_path: Path, store: JobStore, clock: ManualClock
) -> None:
    calls = tmp_path / "hook.jsonl"
    config = make_config(
        {"seal": job(command=["seal"], retries=2, backoff_seconds=1)},
        on_error_command=[sys.executable, "-c", RECORD, str(calls)],
    )
    scheduler = Scheduler(config, store, runner=always(Outcome(4, "no archive\n")), clock=clock)
    result = scheduler.run_job(scheduler.jobs["seal"], {"trigger": "manual"})
    lines = [json.loads(line) for line in calls.read_text().splitlines()]
    assert lines == [
        {
            "MERCATO_JOB": "seal",
            "MERCATO_RUN_ID": str(result.run_id),
            "MERCATO_ATTEMPT": "3",
            "MERCATO_ERROR": "exit status 4: no archive",
        }
    ]
    assert store.job_runs()[0].id == result.run_id  # the id names the last attempt's row


def test_no_hook_when_a_retry_succeeds(tmp_path: Path, store: JobStore, clock: ManualClock) -> None:
    calls = tmp_path / "hook.jsonl"
    config = make_config(
        {"seal": job(command=["seal"], retries=2)},
        on_error_command=[sys.executable, "-c", RECORD, str(calls)],
    )
    outcomes = [Outcome(1), Outcome(1), Outcome(0)]
    runner = FakeRunner(lambda command: outcomes.pop(0))
    scheduler = Scheduler(config, store, runner=runner, clock=clock)
    assert scheduler.run_job(scheduler.jobs["seal"], {}).status == "succeeded"
    assert not calls.exists()


def test_the_webhook_gets_one_post_after_the_last_attempt(
    receiver: Receiver, store: JobStore, clock: ManualClock
) -> None:
    config = make_config(
        {"compact": job("7 * * * *", ["archive", "compact"], retries=1)},
        on_error_webhook=receiver.url,
    )
    scheduler = Scheduler(config, store, runner=always(Outcome(-9)), clock=clock, holder="a")
    assert scheduler.tick() == ["compact"]
    assert scheduler.join(10)
    last = store.job_runs("compact")[0]
    assert receiver.bodies == [
        {
            "job": "compact",
            "run_id": last.id,
            "attempt": 2,
            "error": "killed by SIGKILL",
            "params": {"scheduled_for": "2026-11-26T10:02:00Z", "scheduler": "a"},
        }
    ]
    assert receiver.headers[0]["Content-Type"] == "application/json"


def test_a_failing_hook_is_logged_and_changes_nothing(
    caplog: pytest.LogCaptureFixture, store: JobStore, clock: ManualClock, tmp_path: Path
) -> None:
    refusing = Receiver(status=500)
    try:
        for webhook in (refusing.url, f"http://127.0.0.1:{free_port()}/nobody-listens"):
            config = make_config(
                {"seal": job(retries=0)},
                on_error_command=[str(tmp_path / "no-such-hook")],
                on_error_webhook=webhook,
            )
            scheduler = Scheduler(config, store, runner=always(Outcome(1)), clock=clock)
            with caplog.at_level(logging.ERROR, logger="mercato.scheduler"):
                result = scheduler.run_job(scheduler.jobs["seal"], {})
            assert result.status == "failed"
    finally:
        refusing.close()
    assert len(refusing.bodies) == 1
    hook_errors = [r.getMessage() for r in caplog.records if "error hook" in r.getMessage()]
    assert len(hook_errors) == 4  # the command twice, each webhook once
    assert any("HTTP Error 500" in message for message in hook_errors)
    assert any("no-such-hook" in message for message in hook_errors)
    assert [r.status for r in store.job_runs()] == ["failed", "failed"]


def test_a_hook_command_that_fails_is_logged(
    caplog: pytest.LogCaptureFixture, store: JobStore, clock: ManualClock
) -> None:
    command = [sys.executable, "-c", "import sys; sys.exit('pager is down')"]
    config = make_config({"seal": job(retries=0)}, on_error_command=command)
    scheduler = Scheduler(config, store, runner=always(Outcome(1)), clock=clock)
    with caplog.at_level(logging.ERROR, logger="mercato.scheduler"):
        scheduler.run_job(scheduler.jobs["seal"], {})
    assert any("exited with 1: pager is down" in r.getMessage() for r in caplog.records), (
        caplog.text
    )
