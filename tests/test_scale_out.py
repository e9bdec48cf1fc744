"""One process per role on the scale-out backends: two collectors, two aggregators (one Kafka
consumer group), an archiver, the query API and the scheduler, as separate processes on
librdkafka's mock Kafka cluster, a real PostgreSQL server and an S3 archive (moto's server).
Traffic flows while one process of each role is killed -9 and restarted; afterwards the query
API's answers must equal a recomputation from the events sent, in plain Python."""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msgspec
import pytest

from mercato.archive.layout import read_state
from mercato.config import load_config
from mercato.demo.runner import free_port
from mercato.demo.traffic import TrafficGenerator
from mercato.log.kafka import KafkaLog
from mercato.log.kafka_mock import MockKafkaCluster
from mercato.metrics.definitions import load_definitions
from mercato.query.tokens import TokenSigner
from mercato.store import open_store
from tests.conftest import CollectorFactory, S3Root
from tests.log.test_kafka_group import wait_for
from tests.store.conftest import fresh_database, postgres_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

PARTITIONS = 4
SECRET = "scale-out-secret"
SESSION_MS = 6000


class Role:
    """``mercato run <role>`` in a subprocess; output appended to ``<where>/<name>.out``."""

    def __init__(self, name: str, role: str, where: Path, env: dict[str, str]) -> None:
        self.name, self.role, self.env = name, role, env
        self.output = where / f"{name}.out"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Role:
        with open(self.output, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mercato", "run", self.role],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=out,
            )
        return self

    def kill(self) -> None:
        assert self.process is not None
        assert self.process.poll() is None, self.text()  # it was still running
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return -9
        return self.process.returncode

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""


def get(port: int, path: str, token: str) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        return response.status, msgspec.json.decode(response.read() or b"null")
    except OSError:
        return 0, None
    finally:
        connection.close()


class Traffic:
    """Posts batches of events to whichever collector answers, until each is acknowledged:
    a batch refused (503) or cut off (a collector killed) is sent again, whole, elsewhere;
    and one batch in ten is sent twice, like a client that missed its 200."""

    def __init__(self, collectors: list[Any], events: list[dict[str, Any]]) -> None:
        self.collectors = collectors
        self.events = events
        self.acknowledged = 0
        self.retries = 0
        self.resent = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "traffic did not finish"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            turn = 0
            for start in range(0, len(self.events), 200):
                batch = self.events[start : start + 200]
                deadline = time.monotonic() + 120
                while True:
                    collector = self.collectors[turn % len(self.collectors)]
                    turn += 1
                    try:
                        status = collector.post_events(batch)[0]
                    except OSError:
                        status = 0
                    if status == 200:
                        break
                    self.retries += 1
                    assert time.monotonic() < deadline, f"no collector took a batch ({status})"
                    time.sleep(0.2)
                self.acknowledged += len(batch)
                if start % 2000 == 0:  # a client that missed the 200 and sent it again
                    other = self.collectors[turn % len(self.collectors)]
                    with contextlib.suppress(OSError):
                        self.resent += other.post_events(batch)[0] == 200
                time.sleep(0.05)
        except BaseException as exc:
            self.error = exc


def make_events(now: datetime, count: int) -> list[dict[str, Any]]:
    """Events of 40 merchants over the three hours before ``now``: the hours before the current
    one are sealed during the run, the current one stays provisional."""
    generator = TrafficGenerator(merchants=40, seed=3)
    rnd = random.Random(4)
    types = ["order_completed", "order_completed", "page_viewed", "refund"]
    events = []
    for _ in range(count):
        at = now - timedelta(seconds=rnd.uniform(1, 3 * 3600))
        event = generator.event(rnd.choice(generator.merchants), rnd.choice(types), at, late=False)
        del event["sent_at"]  # sent now, not then
        events.append(event)
    return events


def recomputed(events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, list[int]]]:
    """Per (merchant, metric), per UTC hour: the values the API must answer."""
    out: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(dict)
    for e in events:
        hour = datetime.fromisoformat(e["timestamp"]).replace(minute=0, second=0, microsecond=0)
        period = hour.isoformat()
        if e["type"] == "order_completed":
            for metric, value in (("orders", 1), ("gross_revenue", e["properties"]["amount"])):
                cell = out[(e["merchant_id"], metric)].setdefault(period, [0])
                cell[0] += value
        elif e["type"] == "refund":
            cell = out[(e["merchant_id"], "refunds")].setdefault(period, [0])
            cell[0] += 1
    return out


@pytest.fixture
def kafka() -> Iterator[MockKafkaCluster]:
    with MockKafkaCluster(brokers=3) as cluster:
        cluster.create_topic("mercato-events", PARTITIONS)
        yield cluster


def test_one_process_per_role_survives_kill_9_of_each_and_answers_exactly(
    kafka: MockKafkaCluster,
    postgres_server: str,  # noqa: F811 (the fixture)
    s3_root: S3Root,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "mercato.toml"
    with fresh_database(postgres_server) as dsn:
        config.write_text(
            textwrap.dedent(
                f"""
                data_dir = "{data}"
                [log]
                backend = "kafka"
                partitions = {PARTITIONS}
                kafka_bootstrap_servers = "{kafka.bootstraps}"
                kafka_topic = "mercato-events"
                kafka_delivery_timeout_ms = 5000
                [store]
                backend = "postgres"
                dsn = "{dsn}"
                [aggregator]
                kafka_group = "aggregators"
                kafka_session_timeout_ms = {SESSION_MS}
                max_batch_records = 500
                idle_sleep_ms = 50
                [archive]
                path = "{s3_root.url}"
                s3_endpoint = "{s3_root.endpoint}"
                flush_interval_seconds = 1
                idle_sleep_ms = 100
                [batch]
                grace_minutes = 0
                [api]
                secret = "{SECRET}"
                rate_limit_per_second = 1000
                rate_limit_burst = 2000
                [scheduler]
                lease_seconds = 4
                [scheduler.jobs.seal]
                schedule = "* * * * *"
                command = ["seal"]
                retries = 0
                """
            )
        )
        load_config(config)  # the file is valid before anything runs
        run_roles(tmp_path, data, config)


def run_roles(tmp_path: Path, data: Path, config: Path) -> None:
    env = {"MERCATO_CONFIG": str(config)}
    api_port = free_port()
    roles = {
        "aggregator-1": Role("aggregator-1", "aggregator", tmp_path, env),
        "aggregator-2": Role("aggregator-2", "aggregator", tmp_path, env),
        "archiver": Role("archiver", "archiver", tmp_path, env),
        "api": Role("api", "api", tmp_path, {**env, "MERCATO_API_PORT": str(api_port)}),
        "scheduler": Role("scheduler", "scheduler", tmp_path, env),
    }
    collectors = CollectorFactory(data, tmp_path)
    now = datetime.now(UTC)
    events = make_events(now, 30_000)
    try:
        for role in roles.values():
            role.start()
        pair = [collectors(**env), collectors(**env)]
        token = TokenSigner(SECRET).issue("m_00001", 3600)[0]
        wait_for(lambda: get(api_port, "/livez", token)[0] == 200, 60, "the API")
        traffic = Traffic(pair, events).start()

        def counted(fraction: float) -> Callable[[], bool]:
            return lambda: traffic.acknowledged >= fraction * len(events)

        # one process of each role is killed -9 while the traffic flows, then restarted
        wait_for(counted(0.15), 120, "traffic")
        pair[0].stop(signal.SIGKILL)
        time.sleep(1)
        pair[0].start()
        for name in ("aggregator-1", "archiver", "api", "scheduler"):
            wait_for(counted(0.15 + 0.15 * len(name) / 12), 120, "traffic")
            roles[name].kill()
            time.sleep(1)
            roles[name].start()
        traffic.join(timeout=300)
        assert traffic.retries > 0, "no batch was refused or cut off: the kills missed"
        assert traffic.resent > 0
        # the restarted scheduler leads again once the killed one's lease has expired
        wait_for(lambda: roles["scheduler"].text().count(" leads ") >= 2, 60, "a new leader")

        drain(config)
        # the scheduler sealed while traffic flowed; one more seal takes in what came after
        wait_for(lambda: "seal" in jobs_that_ran(config), 90, "the scheduler to run a seal")
        sealing = datetime.now(UTC)
        seal = subprocess.run(
            [sys.executable, "-m", "mercato", "--config", str(config), "seal"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert seal.returncode == 0, seal.stdout + seal.stderr
        compare_answers(api_port, events, now, sealing)
        assert "kafka group: assigned partitions" in roles["aggregator-2"].text()
        for name, role in roles.items():
            assert role.stop() == 0, f"{name}: {role.text()}"
        for collector in pair:
            assert collector.stop() == 0
    finally:
        for role in roles.values():
            if role.process is not None and role.process.poll() is None:
                role.process.kill()
                role.process.wait()
        collectors.kill_all()


def drain(config: Path) -> None:
    """Wait until the aggregators have stored offsets to the end of every partition, and the
    archiver has committed them."""
    settings = load_config(config)
    with KafkaLog(settings.log) as log:
        ends = {p: log.end_offset(p) for p in range(PARTITIONS)}
    consumer = f"aggregator/{load_definitions().version}"
    with open_store(settings) as store:

        def done() -> bool:
            archived = read_state(settings.archive_path).next_offsets()
            return store.offsets(consumer) == ends and archived == ends

        wait_for(done, 120, "the aggregators and the archiver to reach the end of the log")


def jobs_that_ran(config: Path) -> set[str]:
    with open_store(load_config(config)) as store:
        return {run.job for run in store.job_runs() if run.status == "succeeded"}


def compare_answers(
    api_port: int, events: list[dict[str, Any]], now: datetime, sealing: datetime
) -> None:
    """Every merchant's hourly orders, revenue and refunds from the API equal the events';
    hours complete when the last seal started are final, and an hour still open then (it
    holds events unless the run crossed an hour's end) is provisional."""
    want = recomputed(events)
    merchants = sorted({e["merchant_id"] for e in events})
    since = (now - timedelta(hours=4)).replace(minute=0, second=0, microsecond=0)
    until = now + timedelta(hours=1)
    query = urlencode(
        {"from": since.isoformat(), "to": until.isoformat(), "tz": "UTC", "granularity": "hour"}
    )
    provisional = final = 0
    for merchant in merchants:
        token = TokenSigner(SECRET).issue(merchant, 3600)[0]
        for metric in ("orders", "gross_revenue", "refunds"):
            status, body = get(api_port, f"/v1/metrics/{metric}?{query}", token)
            assert status == 200, body
            got = {
                datetime.fromisoformat(period).astimezone(UTC).isoformat(): value
                for period, value in zip(body["periods"], body["series"][0]["values"], strict=True)
                if value
            }
            expected = {p: v[0] for p, v in want[(merchant, metric)].items()}
            assert got == expected, (merchant, metric)
            series = body["series"][0]
            for value, flag in zip(series["values"], series["provisional"], strict=True):
                if value:
                    provisional += flag
                    final += not flag
    assert final > 0, "no hour was served final: the seal did not run"
    open_hour = sealing.replace(minute=0, second=0, microsecond=0)
    if any(datetime.fromisoformat(e["timestamp"]) >= open_hour for e in events):
        assert provisional > 0, "no hour was served provisional"
