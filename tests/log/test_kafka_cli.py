"""``mercato kafka create-topics|check`` and ``mercato log stats`` on the Kafka log, run as
real processes against the mock cluster of this test process.

The mock cluster creates a topic that a metadata request names (as Apache Kafka does by
default), but serves no CreateTopics: creating a missing topic goes through a real
AdminClient whose CreateTopics the test performs with the mock's own call, and the command
itself is run to the point where the broker refuses the request."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from mercato.cli import cli
from mercato.config import Config, LogConfig
from mercato.demo.runner import free_port
from mercato.log import open_log
from mercato.log.base import LogReader, Record
from mercato.log.errors import LogError
from mercato.log.kafka import KafkaLog
from mercato.log.kafka_admin import check_topic, client_settings, create_topic
from mercato.log.kafka_mock import MockKafkaCluster

from .conftest import kafka_config


def _kafka_env(config: LogConfig) -> dict[str, str]:
    return {
        "MERCATO_LOG_BACKEND": "kafka",
        "MERCATO_LOG_PARTITIONS": str(config.partitions),
        "MERCATO_LOG_KAFKA_BOOTSTRAP_SERVERS": config.kafka_bootstrap_servers,
        "MERCATO_LOG_KAFKA_TOPIC": config.kafka_topic,
    }


def mercato(config: LogConfig, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    full_env.pop("MERCATO_CONFIG", None)
    full_env |= _kafka_env(config)
    return subprocess.run(
        [sys.executable, "-m", "mercato", *args],
        env={**full_env, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_and_stats_show_the_topic(kafka_cluster: MockKafkaCluster) -> None:
    config = kafka_config(kafka_cluster, 3)
    with KafkaLog(config) as log:
        positions = log.append([Record(f"m{i}", b"x") for i in range(30)])
    ends = [sum(1 for p in positions if p.partition == n) for n in range(3)]

    check = mercato(config, "kafka", "check", "--json")
    assert check.returncode == 0, check.stderr
    health = msgspec.json.decode(check.stdout)
    assert [h["partition"] for h in health] == [0, 1, 2]
    assert [h["end_offset"] for h in health] == ends
    assert all(h["leader"] in {1, 2, 3} and h["replicas"] for h in health)

    table = mercato(config, "kafka", "check")
    assert table.returncode == 0, table.stderr
    assert f"kafka topic {config.kafka_topic} is healthy" in table.stdout

    stats = mercato(config, "log", "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert [s["end_offset"] for s in msgspec.json.decode(stats.stdout)] == ends


def test_create_topics_is_safe_to_repeat(kafka_cluster: MockKafkaCluster) -> None:
    config = kafka_config(kafka_cluster, 4)
    result = mercato(config, "kafka", "create-topics")
    assert result.returncode == 0, result.stderr
    assert f"kafka topic {config.kafka_topic} already exists (4 partitions)" in result.stdout


class MockCreatingAdmin(AdminClient):
    """A real AdminClient (metadata from the brokers) whose CreateTopics, which the mock
    cluster does not serve, creates the topic through the mock's own call."""

    def __init__(self, cluster: MockKafkaCluster, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.cluster = cluster

    # AdminClient's own create_topics has this signature, and overrides the C base class's
    # differently typed one the same way (confluent-kafka ignores [override] there too)
    def create_topics(  # type: ignore[override]
        self, new_topics: list[NewTopic], **_: object
    ) -> dict[str, Future[None]]:
        futures: dict[str, Future[None]] = {}
        for new in new_topics:
            self.cluster.create_topic(new.topic, new.num_partitions, new.replication_factor)
            futures[new.topic] = Future()
            futures[new.topic].set_result(None)
        return futures


def topics(cluster: MockKafkaCluster) -> dict[str, int]:
    """Every topic of the cluster and its partition count (a request that creates none)."""
    admin = AdminClient({"bootstrap.servers": cluster.bootstraps})
    return {name: len(t.partitions) for name, t in admin.list_topics(timeout=10).topics.items()}


def test_the_mock_cluster_creates_a_topic_a_metadata_request_names(
    kafka_cluster: MockKafkaCluster,
) -> None:  # what the tests below guard against: a broker's default-sized topic
    admin = AdminClient({"bootstrap.servers": kafka_cluster.bootstraps})
    named = admin.list_topics("asked-for-by-name", timeout=10).topics["asked-for-by-name"]
    assert named.error is None
    assert topics(kafka_cluster)["asked-for-by-name"] == len(named.partitions) == 4


def test_create_topics_creates_a_missing_topic_of_the_configured_size(
    kafka_cluster: MockKafkaCluster,
) -> None:
    config = LogConfig(backend="kafka", partitions=6, kafka_topic="made-by-mercato",
                       kafka_bootstrap_servers=kafka_cluster.bootstraps)  # fmt: skip
    # default settings: the check itself must not be a request that creates the topic
    admin = MockCreatingAdmin(kafka_cluster, client_settings(config))
    assert create_topic(config, admin=admin) is True
    assert topics(kafka_cluster)["made-by-mercato"] == 6
    assert [h.partition for h in check_topic(config)] == list(range(6))
    assert create_topic(config, admin=admin) is False  # safe to repeat
    with KafkaLog(config) as log:
        assert log.partitions == 6


def test_create_topics_never_leaves_a_default_sized_topic_behind() -> None:
    with MockKafkaCluster(brokers=1) as cluster:
        cluster.set_controller(1)  # else the request waits for a controller until timing out
        config = LogConfig(backend="kafka", partitions=6, kafka_topic="wanted",
                           kafka_bootstrap_servers=cluster.bootstraps)  # fmt: skip
        result = mercato(config, "kafka", "create-topics")
        assert result.returncode == 1  # the mock serves no CreateTopics...
        assert result.stderr.startswith("error: cannot create kafka topic 'wanted': ")
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "wanted" not in topics(cluster)  # ...and nothing created it behind our back


def test_a_missing_topic_or_another_partition_count_is_one_line(
    kafka_cluster: MockKafkaCluster,
) -> None:
    config = kafka_config(kafka_cluster, 4)
    missing = mercato(config, "kafka", "check", MERCATO_LOG_KAFKA_TOPIC="no-such-topic")
    assert missing.returncode == 1
    assert "does not exist; run `mercato kafka create-topics`" in missing.stderr
    other = mercato(config, "kafka", "create-topics", MERCATO_LOG_PARTITIONS="6")
    assert other.returncode == 1
    assert "has 4 partitions, the configuration says 6 (log.partitions)" in other.stderr
    file_only = mercato(config, "log", "check")
    assert file_only.returncode == 1
    assert "use `mercato kafka check`" in file_only.stderr
    for result in (missing, other, file_only):
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_run_collector_on_kafka(kafka_cluster: MockKafkaCluster, tmp_path: Path) -> None:
    config = kafka_config(kafka_cluster, 2)
    env = {"MERCATO_DATA_DIR": str(tmp_path), "MERCATO_COLLECTOR_PORT": str(free_port())}
    created = mercato(config, "keys", "create", "--source", "web", **env)
    assert created.returncode == 0, created.stderr
    key = next(line.split()[1] for line in created.stdout.splitlines() if line.startswith("key"))
    process = subprocess.Popen(
        [sys.executable, "-m", "mercato", "run", "collector"],
        env={**os.environ, **_kafka_env(config), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        announced = process.stdout.readline()
        assert f"kafka topic {config.kafka_topic} on {config.kafka_bootstrap_servers}" in announced
        base = f"http://127.0.0.1:{env['MERCATO_COLLECTOR_PORT']}"
        wait_ready(f"{base}/readyz")
        events = [
            {
                "event_id": f"e{i}",
                "type": "t",
                "merchant_id": f"m{i}",
                "timestamp": "2026-11-26T11:00:00Z",
            }
            for i in range(10)
        ]
        request = urllib.request.Request(
            f"{base}/v1/events",
            data=msgspec.json.encode(events),
            headers={
                "Content-Type": "application/json",
                "Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
    finally:
        process.terminate()
        process.communicate(timeout=30)
    with KafkaLog(config) as log:
        stored = [e.key for p in range(2) for e in LogReader(log, p, 0)]
    assert sorted(stored) == sorted(f"m{i}" for i in range(10))


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_without_confluent_kafka_the_commands_say_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mercato.log

    for name in ("confluent_kafka", "mercato.log.kafka_admin", "mercato.log.kafka"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delattr(mercato.log, "kafka_admin", raising=False)
    monkeypatch.delattr(mercato.log, "kafka", raising=False)
    result = CliRunner().invoke(cli, ["kafka", "check"])
    assert result.exit_code == 1
    assert "kafka commands need confluent-kafka (mercato's kafka extra)" in result.output
    with pytest.raises(LogError, match=r"log\.backend kafka needs confluent-kafka"):
        open_log(Config(log=LogConfig(backend="kafka")))
