"""An ``s3://`` archive root on a real S3-compatible server (moto's, in a subprocess): the
archiver, its kill -9, compaction, the seal and ``mercato sql`` read and write it in place,
and give what they give on a local root."""

from __future__ import annotations

import signal
import subprocess
import threading
from contextlib import closing
from pathlib import Path

import msgspec
import pyarrow.fs as pafs
import pytest

from mercato.archive.archiver import Archiver
from mercato.archive.compaction import compact_all
from mercato.archive.errors import ArchiveLayoutError, ArchiveUnavailableError
from mercato.archive.layout import Root, committed_files, list_files, list_hours, read_state
from mercato.archive.reader import read_committed
from mercato.archive.storage import ArchiveStorage
from mercato.config import StoreConfig, load_config
from mercato.demo.runner import free_port
from mercato.log import open_log
from mercato.log.base import Record
from mercato.log.memory import MemoryLog
from mercato.store.sqlite import SqliteStore
from tests.batch.test_seal import DEFINITIONS, EVERYTHING, MERCHANTS, run_archiver
from tests.batch.test_seal import traffic as seal_traffic
from tests.conftest import S3Root
from tests.serving import ADMIN, ApiProcess

from .conftest import Clock, archived, assert_exactly_once, config, drain, records
from .test_process import (
    archived_so_far,
    environment,
    fill,
    kill_9_and_restart,
    mercato,
    start_archiver,
    wait_for,
)

STORED = [m.name for m in DEFINITIONS.stored]
DIMENSIONS = ("", "channel", "country", "payment_method", "api_path")


def archive(log: MemoryLog, root: Root, batch: int = 40) -> None:
    settings = config(max_batch_records=batch)
    with Archiver(log, root, settings, clock=Clock()) as archiver:
        drain(archiver)


def objects(storage: ArchiveStorage) -> list[str]:
    """Every object under the root, as a listing of the bucket shows it."""
    selector = pafs.FileSelector(storage.root, recursive=True)
    infos = storage.fs.get_file_info(selector)
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def test_the_archiver_writes_to_s3_what_it_writes_locally(s3_root: S3Root, tmp_path: Path):
    log = MemoryLog(3)
    log.append(records(0, 900))
    s3, local = s3_root.storage(), tmp_path / "archive"
    archive(log, s3)
    archive(log, local)
    assert_exactly_once(s3, log)
    assert archived(s3) == archived(local)
    assert read_committed(s3).equals(read_committed(local))
    assert (
        read_state(s3).next_offsets()
        == read_state(local).next_offsets()
        == {p: log.end_offset(p) for p in range(3)}
    )
    mine = [(f.hour, f.partition, f.first, f.last) for f in committed_files(s3)]
    assert mine == [(f.hour, f.partition, f.first, f.last) for f in committed_files(local)]
    assert len(mine) > 3 * 900 // 40  # many batches, several hours each
    # no temp files and no lock objects: a PUT is atomic, and S3 has no advisory locks
    everything = objects(s3)
    prefix = s3.root + "/"
    assert everything == sorted(
        [prefix + f.path for f in committed_files(s3)] + [prefix + "_state/archiver.json"]
    )
    # in the bucket named by the URL, not on local disk
    assert everything[0].startswith(s3_root.url.removeprefix("s3://") + "/")


@pytest.mark.slow
def test_kill_9_of_the_archiver_on_s3_then_restart_reads_every_event_once(
    s3_root: S3Root, tmp_path: Path
):
    fill(tmp_path, 40_000, **s3_root.env())
    kill_9_and_restart(tmp_path, 40_000, kills=3, steps=range(3_000, 9_000), **s3_root.env())
    assert not list(tmp_path.glob("archive")), "nothing of the archive is on local disk"


def test_compaction_on_s3_keeps_every_row_once(s3_root: S3Root, tmp_path: Path):
    log = MemoryLog(2)
    log.append(records(0, 600))
    s3, local = s3_root.storage(), tmp_path / "archive"
    archive(log, s3, batch=25)
    archive(log, local, batch=25)
    before = read_committed(s3)
    assert compact_all(s3) == compact_all(local)
    for hour in list_hours(s3):
        assert len(list_files(s3, hour)) == 2  # one file per partition and hour
    assert_exactly_once(s3, log)
    after = read_committed(s3)
    assert after.num_rows == before.num_rows
    assert after.equals(read_committed(local))
    assert compact_all(s3).written_files == 0  # nothing left to merge
    log.append(records(600, 700))
    archive(log, s3, batch=25)  # the archiver carries on after compaction
    assert_exactly_once(s3, log)


def test_compact_from_the_command_line_on_s3(s3_root: S3Root, tmp_path: Path):
    log = MemoryLog(2)
    log.append(records(0, 300))
    s3 = s3_root.storage()
    archive(log, s3, batch=20)
    hours = list_hours(s3)
    result = mercato(tmp_path, "archive", "compact", "--all", **s3_root.env())
    assert result.returncode == 0, result.stderr
    assert f"{len(hours)} hour(s)" in result.stdout
    assert all(len(list_files(s3, hour)) == 2 for hour in hours)
    assert_exactly_once(s3, log)


def test_sql_over_an_s3_archive_answers_what_it_answers_locally(s3_root: S3Root, tmp_path):
    log = MemoryLog(3)
    log.append(records(0, 500))
    archive(log, s3_root.storage())
    archive(log, tmp_path / "local" / "archive")
    query = (
        "SELECT date, hour, type, count(*) AS n, count(DISTINCT event_id) AS events,"
        " sum((properties->>'amount')::BIGINT) AS amount, min(event_time) AS first"
        " FROM events GROUP BY ALL ORDER BY ALL"
    )
    on_s3 = mercato(tmp_path / "s3", "sql", query, "--format", "json", **s3_root.env())
    local = mercato(tmp_path / "local", "sql", query, "--format", "json")
    assert on_s3.returncode == 0, on_s3.stderr
    assert local.returncode == 0, local.stderr
    assert on_s3.stdout == local.stdout
    assert '"hour":"08"' in on_s3.stdout  # the Hive columns, typed alike
    rows = msgspec.json.decode(on_s3.stdout)
    assert len(rows) == 3 * 3  # three hours, three types
    assert sum(r["n"] for r in rows) == sum(r["events"] for r in rows) == 500


def sealed_from_the_command_line(
    data: Path, records: list[Record], **env: str
) -> dict[tuple[str, str], list[dict[str, object]]]:
    """``records`` logged and archived under ``data``, then ``mercato seal`` run there (with
    ``env``): the final rows it stored, by merchant and dimension."""
    settings = load_config(env=environment(data, **env))
    with closing(open_log(settings)) as log:
        log.append(records)
        run_archiver(log, settings.archive_path)
    result = mercato(data, "seal", MERCATO_BATCH_GRACE_MINUTES="0", **env)
    assert result.returncode == 0, result.stderr
    with SqliteStore(settings.store_path, StoreConfig()) as store:
        (version,) = [v.id for v in store.versions()]
        return {
            (merchant, dimension): store.read(
                version, merchant, STORED, *EVERYTHING, dimension, EVERYTHING[1]
            ).to_pylist()
            for merchant in MERCHANTS
            for dimension in DIMENSIONS
        }


def test_seal_from_an_s3_archive_stores_what_a_local_archive_gives(s3_root: S3Root, tmp_path: Path):
    traffic = seal_traffic(3_000)  # three hours, late events, redeliveries
    on_s3 = sealed_from_the_command_line(tmp_path / "s3", traffic, **s3_root.env())
    local = sealed_from_the_command_line(tmp_path / "local", traffic)
    assert on_s3 == local  # sketches included: the same files feed the kernel the same chunks
    assert sum(len(rows) for rows in local.values()) > 5_000
    assert not (tmp_path / "s3" / "archive").exists()
    assert committed_files(s3_root.storage())


@pytest.mark.parametrize(
    "command",
    [
        ["sql", "SELECT count(*) FROM events"],
        ["archive", "compact", "--all"],
        ["run", "archiver"],
        ["seal"],
    ],
)
def test_an_unreachable_endpoint_or_a_missing_bucket_is_one_clear_line(
    s3_root: S3Root, tmp_path: Path, command: list[str]
):
    unreachable = {
        **s3_root.env(),
        "MERCATO_ARCHIVE_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}",
    }
    missing = {**s3_root.env(), "MERCATO_ARCHIVE_PATH": "s3://no-such-bucket/archive"}
    for env, message in [
        (unreachable, "archive s3://"),
        (
            missing,
            "archive s3://no-such-bucket/archive: the bucket 'no-such-bucket' does not exist",
        ),
    ]:
        result = mercato(tmp_path, *command, **env)
        assert result.returncode == 1, (env, result.stdout, result.stderr)
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_endpoint_without_a_scheme_is_refused(tmp_path: Path):
    env = {
        "MERCATO_ARCHIVE_PATH": "s3://bucket/archive",
        "MERCATO_ARCHIVE_S3_ENDPOINT": "minio:9000",
    }
    result = mercato(tmp_path, "sql", "SELECT 1", **env)
    assert result.returncode == 1
    assert "archive.s3_endpoint is a URL like http://minio:9000, not 'minio:9000'" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_s3_root_has_no_local_lock(s3_root: S3Root):
    """Two archivers of one partition are not stopped on S3: the deployment must run one."""
    log = MemoryLog(1)
    with Archiver(log, s3_root.storage(), config()), Archiver(log, s3_root.storage(), config()):
        pass
    with pytest.raises(ArchiveUnavailableError, match="does not exist"):
        read_state(ArchiveStorage("s3://no-such-bucket/x", s3_endpoint=s3_root.endpoint))


@pytest.mark.slow
def test_the_consoles_archive_endpoint_reads_an_s3_root(s3_root: S3Root, tmp_path: Path):
    log = MemoryLog(2)
    log.append(records(0, 400))
    archive(log, s3_root.storage())
    archive(log, tmp_path / "local" / "archive")
    answers = {}
    for name, env in [("s3", s3_root.env()), ("local", {})]:
        (tmp_path / name).mkdir(exist_ok=True)
        api = ApiProcess(tmp_path / name, env)
        try:
            status, body = api.get("/v1/admin/archive?days=3", ADMIN)
            assert status == 200, body
            pipeline_status, pipeline = api.get("/v1/admin/pipeline", ADMIN)
            assert pipeline_status == 200, pipeline
        finally:
            api.stop()
        answers[name] = (body, pipeline["freshness"]["archived_through"])
    (on_s3, s3_mark), (local, local_mark) = answers["s3"], answers["local"]
    assert on_s3.pop("path") == s3_root.url
    assert local.pop("path") == str(tmp_path / "local" / "archive")
    assert on_s3 == local
    assert on_s3["exists"] is True
    assert on_s3["files"] == len(committed_files(s3_root.storage())) > 0
    assert s3_mark == local_mark is not None


def test_two_archivers_splitting_the_partitions_of_an_s3_archive_read_every_event_once(
    s3_root: S3Root, tmp_path: Path
):
    events = 40_000
    config = fill(tmp_path, events, **s3_root.env())
    root = config.archive_path
    halves = {"0,1": tmp_path / "low.out", "2,3": tmp_path / "high.out"}

    def start(partitions: str) -> subprocess.Popen[bytes]:
        env = {**s3_root.env(), "MERCATO_ARCHIVE_PARTITIONS": partitions}
        return start_archiver(tmp_path, halves[partitions], **env)

    running = {half: start(half) for half in halves}
    try:
        # both are killed -9 mid-way (no lock on S3 between them), then started again
        for half, process in running.items():
            target = archived_so_far(root) + 6_000
            wait_for(lambda t=target: archived_so_far(root) >= t, process, halves[half])
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            running[half] = start(half)
        for half, process in running.items():
            wait_for(lambda: archived_so_far(root) == events, process, halves[half])
    finally:
        for process in running.values():
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
    names = [e.name for e in s3_root.storage().list_dir("_state")]
    assert sorted(n for n in names if n.endswith(".json")) == [
        "archiver-0-1.json",
        "archiver-2-3.json",
    ]
    with closing(open_log(config)) as log:
        assert_exactly_once(root, log)


def test_a_state_object_seen_half_written_is_read_again(s3_root: S3Root) -> None:
    # S3 shows an object whole or not at all; moto's server has shown one half written while
    # another archiver replaced it: a reader waits for the whole one rather than stopping
    storage = s3_root.storage()
    whole = b'{"partitions":{"0":{"next_offset":7}}}'
    storage.write_atomic("_state/archiver-0.json", lambda out: out.write(whole[:11]), tag="t")
    fixer = threading.Timer(
        1.0,
        lambda: storage.write_atomic(
            "_state/archiver-0.json", lambda out: out.write(whole), tag="t"
        ),
    )
    fixer.start()
    try:
        assert read_state(storage).next_offsets() == {0: 7}
    finally:
        fixer.join()
    storage.write_atomic("_state/archiver-0.json", lambda out: out.write(b"{"), tag="t")
    with pytest.raises(ArchiveLayoutError, match="is not an archive state"):
        read_state(storage)  # still broken after the reads: an error, never a guess
