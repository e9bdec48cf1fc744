"""``mercato kafka create-topics|check`` and ``mercato log stats`` on the Kafka log, run as
real processes against the mock cluster of this test process.

The mock cluster answers no controller in its metadata, so AdminClient's CreateTopics cannot
run against it: creating a topic that does not exist yet is not tested here (only the
"already exists" path, which reads metadata as against a real cluster)."""

from __future__ import annotations

import os
import subprocess
import sys

import msgspec

from mercato.config import LogConfig
from mercato.log.base import Record
from mercato.log.kafka import KafkaLog
from mercato.log.kafka_mock import MockKafkaCluster

from .conftest import kafka_config


def mercato(config: LogConfig, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    full_env.pop("MERCATO_CONFIG", None)
    full_env |= {
        "MERCATO_LOG_BACKEND": "kafka",
        "MERCATO_LOG_PARTITIONS": str(config.partitions),
        "MERCATO_LOG_KAFKA_BOOTSTRAP_SERVERS": config.kafka_bootstrap_servers,
        "MERCATO_LOG_KAFKA_TOPIC": config.kafka_topic,
    }
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


def test_a_missing_topic_or_another_partition_count_is_one_line(
    kafka_cluster: MockKafkaCluster,
) -> None:
    config = kafka_config(kafka_cluster, 4)
    missing = mercato(config, "kafka", "check", MERCATO_LOG_KAFKA_TOPIC="no-such-topic")
    assert missing.returncode == 1
    assert "does not exist; run `mercato kafka create-topics`" in missing.stderr
    other = mercato(config, "kafka", "create-topics", MERCATO_LOG_PARTITIONS="6")
    assert other.returncode == 1
    assert "has 4 partitions, the configuration says 6" in other.stderr
    for result in (missing, other):
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
