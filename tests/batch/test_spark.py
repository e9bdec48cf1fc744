"""The Spark engine (local mode) computes what the DuckDB engine computes, hour by hour and
through a whole seal, because both run the one rollup kernel over the same distinct events.

Sketch columns are compared by what they answer, not by their bytes: the engines feed the
kernel different chunks in different orders, and a KLL sketch keeps its items in arrival
order (and compacts at random once large). HLL estimates must be identical — here every
bucket's HLL is still in its exact coupon mode, where the estimate depends on the set of
values only — and each KLL quantile of the Spark sketch must sit, in the DuckDB sketch,
within twice KLL's normalized rank error of the DuckDB quantile at that rank.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import msgspec
import pyarrow as pa
import pytest
from datasketches import kll_floats_sketch

from mercato.archive.layout import committed_files, list_hours, open_storage
from mercato.batch.duckdb import DuckDbEngine
from mercato.batch.engine import Engine, open_engine
from mercato.batch.errors import EngineError
from mercato.batch.seal import seal
from mercato.batch.spark import SparkEngine, spark_session, stop_session
from mercato.config import StoreConfig, load_config
from mercato.events.model import decode_event, encode_event
from mercato.log.base import Record
from mercato.log.memory import MemoryLog
from mercato.metrics.kernel import KEY, sketch_estimate, sort_partials
from mercato.store.sqlite import SqliteStore
from tests.archive.test_s3 import sealed_from_the_command_line
from tests.batch.test_seal import DEFINITIONS, EVERYTHING, MERCHANTS, run_archiver, traffic
from tests.conftest import S3Root

pytestmark = pytest.mark.slow  # a JVM start-up, then about a second per Spark job

DIMENSIONS = ("", "channel", "country", "payment_method", "api_path")
STORED = [m.name for m in DEFINITIONS.stored]
RANKS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkEngine]:
    engine = SparkEngine(threads=2, chunk_rows=1_000)  # several batches per task: they merge
    yield engine
    engine.close()
    stop_session()


def altered(records: list[Record]) -> list[Record]:
    """Orders sent again later with their id and another amount: the first delivery counts."""
    events = [decode_event(r.value) for r in records]
    orders = [e for e in events if e.type == "order_completed"][:40]
    return [
        Record(
            e.merchant_id,
            encode_event(msgspec.structs.replace(e, properties=e.properties | {"amount": 1})),
        )
        for e in orders
    ]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three hours of traffic with late events and redeliveries (some of them altered),
    archived."""
    log = MemoryLog(partitions=4)
    records = traffic(6_000)
    log.append(records)
    log.append(altered(records))
    root = tmp_path_factory.mktemp("spark") / "archive"
    run_archiver(log, root)
    return root


@pytest.fixture
def duckdb() -> Iterator[DuckDbEngine]:
    engine = DuckDbEngine(chunk_rows=1_000)
    yield engine
    engine.close()


Row = dict[str, object]


def by_key(partials: pa.Table) -> dict[tuple[object, ...], Row]:
    return {tuple(r[k] for k in KEY): r for r in sort_partials(partials).to_pylist()}


def assert_same_rows(spark: list[Row], duckdb: list[Row]) -> None:
    """Identical keys and count/sum/min/max; sketches agree (see the module docs)."""
    assert [tuple(r[k] for k in KEY) for r in spark] == [tuple(r[k] for k in KEY) for r in duckdb]
    for ours, theirs in zip(spark, duckdb, strict=True):
        key = tuple(ours[k] for k in KEY)
        assert [ours[c] for c in ("count", "sum", "min", "max")] == [
            theirs[c] for c in ("count", "sum", "min", "max")
        ], key
        a, b = ours["sketch"], theirs["sketch"]
        assert (a is None) == (b is None), key
        if not isinstance(a, bytes) or not isinstance(b, bytes):
            continue
        assert a[:1] == b[:1], key
        if a[:1] == b"H":
            assert sketch_estimate(a) == sketch_estimate(b), key
        else:
            mine, reference = (
                kll_floats_sketch.deserialize(a[1:]),
                kll_floats_sketch.deserialize(b[1:]),
            )
            assert mine.n == reference.n, key
            error = 2 * reference.normalized_rank_error(False)
            for rank in RANKS:
                got = reference.get_rank(mine.get_quantile(rank))
                want = reference.get_rank(reference.get_quantile(rank))
                assert abs(got - want) <= error, (key, rank)


def hours(root: Path) -> list[list[str]]:
    storage = open_storage(root)
    return [
        [storage.path(f.path) for f in committed_files(storage, [h])] for h in list_hours(storage)
    ]


def test_spark_and_duckdb_roll_up_every_hour_alike(
    spark: SparkEngine, duckdb: DuckDbEngine, archive: Path
) -> None:
    every = hours(archive)
    assert len(every) >= 5  # three hours of traffic plus the late events' hours
    events = rows = 0
    metrics: set[str] = set()
    for paths in every:
        ours, theirs = spark.rollup(paths, DEFINITIONS), duckdb.rollup(paths, DEFINITIONS)
        assert (ours.events, ours.rows) == (theirs.events, theirs.rows), paths[0]
        assert ours.partials.schema == theirs.partials.schema
        mine, reference = by_key(ours.partials), by_key(theirs.partials)
        assert_same_rows(list(mine.values()), list(reference.values()))
        events, rows = events + ours.events, rows + ours.rows
    assert events == 6_000  # every distinct event, once
    assert rows > 6_000  # the redeliveries were read, and dropped
    metrics = {
        m
        for paths in every
        for m in spark.rollup(paths, DEFINITIONS).partials["metric"].to_pylist()
    }
    assert metrics == set(STORED)  # every kind of metric, sketches included, was compared


def test_seal_with_spark_stores_what_a_duckdb_seal_stores(
    spark: SparkEngine, duckdb: DuckDbEngine, archive: Path, tmp_path: Path
) -> None:
    def sealed(
        engine: Engine, name: str
    ) -> tuple[SqliteStore, int, list[tuple[datetime, int, int, int]]]:
        store = SqliteStore(tmp_path / f"{name}.sqlite3", StoreConfig())
        report = seal(store, archive, DEFINITIONS, engine, grace=timedelta(0))
        return (
            store,
            report.version,
            [(h.hour, h.events, h.rows, h.partials) for h in report.sealed],
        )

    ours, version, our_hours = sealed(spark, "spark")
    theirs, their_version, their_hours = sealed(duckdb, "duckdb")
    compared = 0
    for merchant in MERCHANTS:
        for dimension in DIMENSIONS:
            mine = ours.read(version, merchant, STORED, *EVERYTHING, dimension, EVERYTHING[1])
            reference = theirs.read(
                their_version, merchant, STORED, *EVERYTHING, dimension, EVERYTHING[1]
            )
            assert_same_rows(mine.to_pylist(), reference.to_pylist())
            compared += reference.num_rows
    assert compared > 5_000
    assert our_hours == their_hours  # hours, events, rows read, partials
    assert sum(h[1] for h in our_hours) == 6_000


def test_a_spark_seal_of_an_s3_archive_stores_what_a_duckdb_seal_of_a_local_one_stores(
    s3_root: S3Root, tmp_path: Path
) -> None:
    """``mercato seal`` with the Spark engine in a process of its own, so that its tasks start
    with the S3 credentials in their environment, as a deployment's do; Spark reads the files
    in place through pyarrow.fs in its tasks."""
    records = traffic(3_000)
    spark = {"MERCATO_BATCH_ENGINE": "spark", "MERCATO_BATCH_THREADS": "2"}
    on_s3 = sealed_from_the_command_line(tmp_path / "s3", records, **s3_root.env(), **spark)
    local = sealed_from_the_command_line(tmp_path / "local", records)
    assert on_s3.keys() == local.keys()
    for key, rows in local.items():
        assert_same_rows(on_s3[key], rows)
    assert sum(len(rows) for rows in local.values()) > 5_000
    assert not (tmp_path / "s3" / "archive").exists()


def test_the_session_is_started_once_per_process(spark: SparkEngine) -> None:
    engine = open_engine("spark", threads=2, chunk_rows=50)
    assert isinstance(engine, SparkEngine)
    assert spark_session(engine.master) is spark_session(spark.master)
    assert engine.rollup([], DEFINITIONS).events == 0
    engine.close()  # leaves the session to the next engine
    assert spark.rollup([], DEFINITIONS).rows == 0


def test_an_unreadable_archive_file_is_an_engine_error(spark: SparkEngine, tmp_path: Path) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    for path in (tmp_path / "missing.parquet", tmp_path / "broken.parquet"):
        with pytest.raises(EngineError, match="Spark could not roll up the archive") as caught:
            spark.rollup([str(path)], DEFINITIONS)
        assert "\n" not in str(caught.value)


def test_a_bad_master_is_an_engine_error_and_leaves_the_session(spark: SparkEngine) -> None:
    session = spark_session(spark.master)
    with pytest.raises(EngineError, match="'sparkhost:7077' is not a Spark master"):
        open_engine("spark", master="sparkhost:7077")
    assert spark_session(spark.master) is session
    assert session.range(3).count() == 3  # still running


def test_without_pyspark_the_engine_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n.split(".")[0] in ("pyspark", "py4j")]:
        monkeypatch.setitem(sys.modules, name, None)  # importing it raises ImportError
    monkeypatch.setitem(sys.modules, "pyspark", None)
    monkeypatch.delitem(sys.modules, "mercato.batch.spark")
    with pytest.raises(EngineError, match=r"needs the \[spark\] extra") as caught:
        open_engine("spark")
    assert "\n" not in str(caught.value)


def test_config_selects_the_spark_engine_and_its_master() -> None:
    config = load_config(
        env={"MERCATO_BATCH_ENGINE": "spark", "MERCATO_BATCH_SPARK_MASTER": "local[3]"}
    )
    assert (config.batch.engine, config.batch.spark_master) == ("spark", "local[3]")
    assert load_config(env={}).batch.spark_master == ""


def test_seal_command_runs_spark_quietly(archive: Path, tmp_path: Path) -> None:
    from tests.test_cli import mercato

    data = tmp_path / "data"
    result = mercato(
        "seal",
        "--format",
        "json",
        data_dir=data,
        MERCATO_ARCHIVE_PATH=str(archive),
        MERCATO_BATCH_ENGINE="spark",
        MERCATO_BATCH_SPARK_MASTER="local[2]",
        MERCATO_BATCH_GRACE_MINUTES="0",
        MERCATO_LOG_PARTITIONS="4",  # the archive's log had 4: each holds the watermark back
    )
    assert result.returncode == 0, result.stderr
    assert '"events":' in result.stdout
    noise = [line for line in result.stderr.splitlines() if "incubator" not in line]
    assert noise == []  # no log4j profile, log-level hints, progress bars or start-up warnings
