"""The scale-out batch engine (extra ``[spark]``): Spark reads and de-duplicates, the kernel
rolls up on the executors.

Spark reads the archive files, shuffles the rows by merchant, keeps the first delivery of
each event in log order (``row_number() over (partition by merchant_id, event_id order by
log_partition, log_offset) = 1``) and hands them to :func:`rollup_task` through its Arrow
batch API (``mapInArrow``): each task runs the rollup kernel over Arrow batches of at most
``chunk_rows`` rows and merges their partials, and the driver merges the tasks' partials.
Shuffling by merchant alone (it also satisfies the window's partitioning) puts each
merchant's events in one task, so a partial key comes back from one task, not from all.

Local files Spark reads itself (``spark.read.parquet``). An object store's it reads through
``pyarrow.fs`` in its tasks (:func:`read_task`: the file list is spread over the tasks, each
reads its files in place), since Spark's own S3 connector (hadoop-aws, ``s3a://``) is a jar
it may not have; the executors then need the same S3 credentials in their environment.

PySpark 4 and Java 17 or later. The session starts on first use — seconds of JVM start-up —
and stays for the engines that follow in the process, until :func:`stop_session`. Local mode
by default (``local[threads]``, every core when ``threads`` is 0): the Python workers run
this interpreter. On a cluster (``master``, e.g. ``spark://host:7077``) the executors need
``mercato`` installed at the same version as the driver.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from py4j.protocol import Py4JError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.observation import Observation
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.pandas.utils import require_minimum_pandas_version

from mercato.archive.schema import SCHEMA
from mercato.batch.engine import Rollup, is_local
from mercato.batch.errors import EngineError
from mercato.metrics.batch import BASE_COLUMNS, BatchBuilder
from mercato.metrics.definitions import Definitions
from mercato.metrics.kernel import PARTIAL_SCHEMA, empty_partials, merge, rollup

# mapInArrow refuses to run without pandas, though no pandas code runs here: fail on import,
# where open_engine names the extra, rather than in the middle of a seal.
require_minimum_pandas_version()

# The archive columns the kernel reads (BatchBuilder.from_archive), in Spark's nullable form.
KERNEL_INPUT = pa.schema(
    [pa.field(f.name, f.type) for f in SCHEMA if f.name in {*BASE_COLUMNS, "properties", "context"}]
)
PARTIALS = from_arrow_schema(PARTIAL_SCHEMA)
ARCHIVED = from_arrow_schema(SCHEMA)
LOG_CONFIG = Path(__file__).with_name("spark-log4j2.properties")
SETTINGS = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # event times are UTC instants; Arrow hands them to the kernel labelled with this zone
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={LOG_CONFIG.as_uri()}",
}
MASTERS = ("local", "spark://", "k8s://", "yarn")  # what spark-submit accepts
LOCAL_SETTINGS = {"spark.driver.bindAddress": "127.0.0.1", "spark.driver.host": "127.0.0.1"}

_lock = threading.Lock()
_session: SparkSession | None = None


def spark_session(master: str) -> SparkSession:
    """The process's Spark session on ``master``: started on first use and then reused (a
    session on another master is stopped first: a process holds one Spark context)."""
    global _session
    if not master.startswith(MASTERS):
        raise EngineError(
            f"{master!r} is not a Spark master: local[N], spark://host:port, k8s://..., or yarn"
        )
    with _lock:
        if _session is not None and _running(_session):
            if _session.sparkContext.master == master:
                return _session
            _session.stop()
        _session = _start(master)
        return _session


def stop_session() -> None:
    """Stop the process's Spark session, if one is running (the next engine starts another)."""
    global _session
    with _lock:
        if _session is not None and _running(_session):
            _session.stop()
        _session = None


def _running(session: SparkSession) -> bool:
    return session.sparkContext._jsc is not None


def _start(master: str) -> SparkSession:
    settings = dict(SETTINGS)
    if master.startswith("local"):
        settings |= LOCAL_SETTINGS
        # the workers must import mercato and pyarrow: this interpreter, not `python3` on PATH
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(master).appName("mercato-batch")
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except (PySparkException, Py4JError, OSError) as exc:
        raise EngineError(
            f"Spark could not start on {master} (it needs Java 17 or later; its own output"
            f" above says more): {_first_line(exc)}"
        ) from None
    session.sparkContext.setLogLevel("WARN")
    return session


def rollup_task(
    batches: Iterable[pa.RecordBatch], definitions: Definitions
) -> Iterator[pa.RecordBatch]:
    """Runs in a Spark task: the merged partials of the task's distinct archived rows."""
    builder = BatchBuilder(definitions)
    parts = []
    for batch in batches:
        if batch.num_rows:
            table = pa.Table.from_batches([batch]).cast(KERNEL_INPUT)
            parts.append(rollup(builder.from_archive(table), definitions))
    if parts:
        yield from merge(parts).to_batches()


def read_task(
    batches: Iterable[pa.RecordBatch], filesystem: pafs.FileSystem, chunk_rows: int
) -> Iterator[pa.RecordBatch]:
    """Runs in a Spark task: the rows of the archive files named in ``batches``' ``path``
    column, read in place from ``filesystem`` in batches of at most ``chunk_rows``."""
    for batch in batches:
        for path in batch.column("path").to_pylist():
            with filesystem.open_input_file(path) as source:
                for rows in pq.ParquetFile(source).iter_batches(chunk_rows, columns=SCHEMA.names):
                    yield from pa.Table.from_batches([rows]).cast(SCHEMA).to_batches()


class SparkEngine:
    """Runs on Spark: ``master`` (default: local mode with ``threads`` cores, 0 = all)."""

    name = "spark"

    def __init__(
        self, *, threads: int = 0, chunk_rows: int = 500_000, master: str | None = None
    ) -> None:
        self.chunk_rows = chunk_rows
        self.master = master or f"local[{int(threads) or '*'}]"
        spark_session(self.master)  # start-up errors here, not at the first rollup

    def rollup(
        self,
        paths: Sequence[str],
        definitions: Definitions,
        filesystem: pafs.FileSystem | None = None,
    ) -> Rollup:
        if not paths:
            return Rollup(empty_partials(), 0, 0)
        read, kept = Observation("archived_rows"), Observation("distinct_events")
        first = Window.partitionBy("merchant_id", "event_id").orderBy("log_partition", "log_offset")
        spark = spark_session(self.master)
        try:
            spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", self.chunk_rows)
            rows = self._read(spark, paths, filesystem).observe(read, F.count(F.lit(1)).alias("n"))
            distinct = (
                rows.repartition("merchant_id")
                .withColumn("delivery", F.row_number().over(first))
                .where(F.col("delivery") == 1)
                .select(*KERNEL_INPUT.names)
                .observe(kept, F.count(F.lit(1)).alias("n"))
            )
            task = partial(rollup_task, definitions=definitions)
            partials = distinct.mapInArrow(task, PARTIALS).toArrow()
            events, total = int(kept.get["n"]), int(read.get["n"])
        except (PySparkException, Py4JError) as exc:
            raise EngineError(f"Spark could not roll up the archive: {_first_line(exc)}") from exc
        return Rollup(merge([partials.cast(PARTIAL_SCHEMA)]), events, total)

    def close(self) -> None:
        """Nothing to release: the session stays for the process's next engine."""

    def _read(
        self, spark: SparkSession, paths: Sequence[str], filesystem: pafs.FileSystem | None
    ) -> DataFrame:
        """The archived rows of ``paths``, without the hive partition columns."""
        if is_local(filesystem):
            return spark.read.parquet(*paths).select(*SCHEMA.names)
        tasks = min(len(paths), spark.sparkContext.defaultParallelism)
        files = spark.createDataFrame([(p,) for p in paths], "path string").repartition(tasks)
        task = partial(read_task, filesystem=filesystem, chunk_rows=self.chunk_rows)
        return files.mapInArrow(task, ARCHIVED)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
