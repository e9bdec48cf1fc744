"""kill -9 of a running seal, then a rerun: no duplicate and no missing final rows."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from mercato.archive.archiver import Archiver
from mercato.batch.duckdb import DuckDbEngine
from mercato.batch.seal import seal
from mercato.config import ArchiveConfig, StoreConfig, load_config
from mercato.events.model import encode_event
from mercato.log import open_log
from mercato.log.base import Record
from mercato.metrics.definitions import load_definitions
from mercato.store.sqlite import SqliteStore
from tests.batch.test_seal import MERCHANTS, T0, event

pytestmark = pytest.mark.slow
DEFINITIONS = load_definitions()


def archived(data: Path, events: int, hours: int) -> None:
    config = load_config(env={"MERCATO_DATA_DIR": str(data), "MERCATO_LOG_FSYNC": "false"})
    rnd = random.Random(4)
    records = []
    for i in range(events):
        merchant = rnd.choice(MERCHANTS)
        when = T0 + timedelta(seconds=rnd.randrange(hours * 3600))
        records.append(Record(merchant, encode_event(event(rnd, i, when, merchant))))
    log = open_log(config)
    log.append(records)
    with Archiver(log, config.archive_path, ArchiveConfig(flush_interval_seconds=0)) as a:
        while a.poll():
            pass
        a.poll()
    log.close()


def finals(store: SqliteStore, version: int) -> list[tuple[object, ...]]:
    return sorted(
        (t.merchant_id, t.metric, t.period, t.count, t.sum, t.min, t.max)
        for t in store.layer_totals(version, 0, 2**40, 900)
    )


def test_a_seal_killed_mid_run_and_run_again_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    archived(data, 20_000, hours=48)
    env = {**os.environ, "MERCATO_DATA_DIR": str(data), "MERCATO_BATCH_GRACE_MINUTES": "0",
           "MERCATO_BATCH_CHUNK_ROWS": "500"}  # fmt: skip
    store_path = data / "store.sqlite3"
    killed_after: list[int] = []
    for _ in range(3):
        process = subprocess.Popen(
            [sys.executable, "-m", "mercato", "seal"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        sealed = 0
        while process.poll() is None and time.monotonic() < deadline:
            if store_path.exists():
                with SqliteStore(store_path, StoreConfig()) as store:
                    versions = store.versions()
                    sealed = len(store.sealed_hours(versions[0].id)) if versions else 0
                if sealed > len(killed_after) * 2:
                    break
            time.sleep(0.02)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed_after.append(sealed)
    assert len(killed_after) >= 2, f"the seals finished before they could be killed: {killed_after}"
    assert killed_after[-1] < 48
    rerun = subprocess.run([sys.executable, "-m", "mercato", "seal"], env=env, check=False,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr

    engine = DuckDbEngine()
    with SqliteStore(tmp_path / "reference.sqlite3", StoreConfig()) as reference:
        config = load_config(env={"MERCATO_DATA_DIR": str(data)})
        expected = seal(reference, config.archive_path, DEFINITIONS, engine, grace=timedelta(0))
        want = finals(reference, expected.version)
    engine.close()
    with SqliteStore(store_path, StoreConfig()) as store:
        version = store.versions()[0].id
        assert len(store.sealed_hours(version)) == len(expected.sealed)
        assert finals(store, version) == want


def test_a_late_event_is_final_after_one_run_of_the_scheduler_seal_job(tmp_path: Path) -> None:
    from tests.test_cli import mercato

    data = tmp_path / "data"
    archived(data, 2_000, hours=3)
    env = {"MERCATO_BATCH_GRACE_MINUTES": "0"}
    first = mercato("jobs", "run", "seal", data_dir=data, **env)
    assert first.returncode == 0, first.stderr
    config = load_config(env={"MERCATO_DATA_DIR": str(data), "MERCATO_LOG_FSYNC": "false"})
    with SqliteStore(config.store_path, StoreConfig()) as store:
        version = store.versions()[0].id
        before = finals(store, version)
    late = event(random.Random(1), 10**6, T0 + timedelta(minutes=30), "m_1")
    log = open_log(config)
    log.append([Record("m_1", encode_event(late))])
    with Archiver(log, config.archive_path, ArchiveConfig(flush_interval_seconds=0)) as a:
        while a.poll():
            pass
    log.close()
    second = mercato("jobs", "run", "seal", data_dir=data, **env)
    assert second.returncode == 0, second.stderr
    with SqliteStore(config.store_path, StoreConfig()) as store:
        after = finals(store, version)
        runs = store.job_runs("seal")
    changed = sorted(set(after) - set(before))
    assert changed
    assert {(m, p) for m, _, p, *_ in changed} == {
        ("m_1", int((T0 + timedelta(minutes=30)).timestamp()))
    }
    assert [r.status for r in runs] == ["succeeded", "succeeded"]
