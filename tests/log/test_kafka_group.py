"""Aggregators sharing a Kafka topic through a consumer group: partitions split between the
members, move on when one leaves or dies, and every event is counted exactly once."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from mercato.archive.layout import read_state
from mercato.config import LogConfig, StoreConfig
from mercato.log.errors import LogWriteError
from mercato.log.kafka import KafkaLog
from mercato.log.kafka_group import KafkaGroupAssignment
from mercato.log.kafka_mock import MockKafkaCluster
from mercato.metrics.definitions import load_definitions
from mercato.store.sqlite import SqliteStore

from ..aggregator.test_aggregator import DAY, order
from ..archive.conftest import assert_exactly_once
from .conftest import kafka_config

SESSION_MS = 6000  # Kafka's least session timeout: how long a dead member keeps its partitions


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_members_split_the_partitions_and_the_last_one_takes_all(
    kafka_cluster: MockKafkaCluster,
) -> None:
    config = kafka_config(kafka_cluster, 4)
    first = KafkaGroupAssignment(config, "split", SESSION_MS)
    second: KafkaGroupAssignment | None = None
    try:
        wait_for(lambda: first.owned() == [0, 1, 2, 3], 30, "the first member to own all")
        second = KafkaGroupAssignment(config, "split", SESSION_MS)
        joined = second

        def split() -> bool:
            mine, theirs = first.owned(), joined.owned()
            return bool(mine and theirs) and sorted(mine + theirs) == [0, 1, 2, 3]

        wait_for(split, 60, "the partitions to split between two members")
        second.close()
        second = None
        wait_for(lambda: first.owned() == [0, 1, 2, 3], 60, "the survivor to own all again")
    finally:
        first.close()
        if second is not None:
            second.close()


# A `mercato run aggregator` that dies by os._exit(9) inside its n-th batch write: the rows
# are in the open SQLite transaction, the COMMIT never runs.
DIES_MID_BATCH = textwrap.dedent(
    """
    import os, sqlite3, sys
    from mercato.store.sqlite import SqliteStore

    die_at, config = int(sys.argv[1]), sys.argv[2]
    state = {"writes": 0}
    connect = sqlite3.connect

    def dying_connect(*args, **kwargs):
        db = connect(*args, **kwargs)
        def trace(sql):
            if state["writes"] >= die_at and sql.strip().upper() == "COMMIT":
                os._exit(9)
        db.set_trace_callback(trace)
        return db

    sqlite3.connect = dying_connect
    write = SqliteStore.write

    def counting_write(self, *args, **kwargs):
        state["writes"] += 1
        return write(self, *args, **kwargs)

    SqliteStore.write = counting_write
    from mercato.cli import main
    sys.argv = ["mercato", "--config", config, "run", "aggregator"]
    main()
    """
)


def write_config(where: Path, log_config: LogConfig, group: str) -> Path:
    """A configuration file for aggregators of ``group`` on the topic of ``log_config``."""
    config = where / "mercato.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            data_dir = "{where / "data"}"
            [log]
            backend = "kafka"
            partitions = 4
            kafka_bootstrap_servers = "{log_config.kafka_bootstrap_servers}"
            kafka_topic = "{log_config.kafka_topic}"
            [aggregator]
            kafka_group = "{group}"
            kafka_session_timeout_ms = {SESSION_MS}
            max_batch_records = 25
            idle_sleep_ms = 50
            """
        )
    )
    return config


def counted(data: Path, merchants: Iterable[str]) -> dict[str, list[int]]:
    """Per merchant, [orders, revenue] in the store's serving version."""
    with SqliteStore(data / "store.sqlite3", StoreConfig()) as store:
        version = store.serving_version()
        assert version is not None
        got: dict[str, list[int]] = {}
        for merchant in merchants:
            rows = store.read_rows(version, merchant, ["gross_revenue"], *DAY)
            total = got.setdefault(merchant, [0, 0])
            for _, _, dimension, _, _, count, amount, *_ in rows:
                if dimension == "":
                    total[0] += count
                    total[1] += amount
        return got


class Member:
    """One aggregator process; its output (the group's assignments) in a file."""

    def __init__(self, name: str, args: list[str], where: Path) -> None:
        self.output = where / f"{name}.out"
        with open(self.output, "ab") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=out)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def assigned(self) -> list[list[int]]:
        return [
            [int(p) for p in found.split(",") if p.strip()]
            for found in re.findall(r"assigned partitions \[([\d, ]*)\]", self.text())
        ]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)


def test_two_aggregators_in_a_group_one_killed_mid_batch_count_every_event_once(
    kafka_cluster: MockKafkaCluster, tmp_path: Path
) -> None:
    log_config = kafka_config(kafka_cluster, 4)
    group = f"aggregators-{log_config.kafka_topic}"
    config = write_config(tmp_path, log_config, group)
    mercato = [sys.executable, "-m", "mercato", "--config", str(config), "run", "aggregator"]
    expected: dict[str, list[int]] = {}
    stop_producing = threading.Event()
    produced = threading.Event()

    def produce() -> None:
        # 200 orders every 0.1 s over 20 merchants, with a redelivery of every tenth
        with KafkaLog(log_config) as log:
            wave = 0
            while not stop_producing.is_set():
                records = []
                for i in range(wave * 200, wave * 200 + 200):
                    merchant = f"m_{i % 20}"
                    records.append(order(f"e{i}", merchant, amount=i))
                    got = expected.setdefault(merchant, [0, 0])
                    got[0] += 1
                    got[1] += i
                records += records[::10]
                log.append(records)
                wave += 1
                time.sleep(0.1)
        produced.set()

    members = {"steady": Member("steady", mercato, tmp_path)}
    producer = threading.Thread(target=produce)
    try:
        producer.start()
        wait_for(lambda: members["steady"].assigned() == [[0, 1, 2, 3]], 90, "the first member")
        # the second joins, and the group splits the topic between them: every write of the
        # second is made in a group of two
        dies = [sys.executable, "-c", DIES_MID_BATCH, "40", str(config)]
        members["dying"] = Member("dying", dies, tmp_path)

        def split() -> bool:
            steady, dying = members["steady"].assigned(), members["dying"].assigned()
            return bool(steady and dying)

        wait_for(split, 90, "the group to give both aggregators partitions")
        dying = members["dying"].process
        dying.wait(timeout=120)  # it dies inside its 40th batch write
        assert dying.returncode == 9, members["dying"].text()
        given_up = sorted(p for ps in members["dying"].assigned() for p in ps)
        # after the session times out, the survivor owns the dead member's partitions
        wait_for(
            lambda: set(given_up) <= {p for ps in members["steady"].assigned()[1:] for p in ps},
            60,
            "the survivor to take the dead member's partitions",
        )
        # a restarted member joins again and takes a share back
        members["restarted"] = Member("restarted", mercato, tmp_path)
        wait_for(lambda: bool(members["restarted"].assigned()), 90, "the restarted member")
        time.sleep(2)
    finally:
        stop_producing.set()
        producer.join(timeout=60)
    assert produced.is_set()

    definitions = load_definitions()
    consumer = f"aggregator/{definitions.version}"
    with KafkaLog(log_config) as log:
        ends = {p: log.end_offset(p) for p in range(4)}

    def drained() -> bool:
        with SqliteStore(tmp_path / "data" / "store.sqlite3", StoreConfig()) as store:
            return store.offsets(consumer) == ends

    def committed() -> dict[int, int]:  # what lag tools see: the group's committed offsets
        reader = Consumer(
            {"bootstrap.servers": log_config.kafka_bootstrap_servers, "group.id": group}
        )
        try:
            wanted = [TopicPartition(log_config.kafka_topic, p) for p in range(4)]
            return {tp.partition: tp.offset for tp in reader.committed(wanted, timeout=10)}
        finally:
            reader.close()

    try:
        wait_for(drained, 90, "the aggregators to count the whole topic")
        wait_for(lambda: committed() == ends, 30, "the group's offsets for lag tools")
    finally:
        for member in members.values():
            member.stop()
    for name in ("steady", "restarted"):
        assert members[name].process.returncode == 0, members[name].text()

    assert counted(tmp_path / "data", expected) == expected


def test_the_aggregator_and_the_archiver_ride_out_all_brokers_down(tmp_path: Path) -> None:
    expected: dict[str, list[int]] = {}

    def produce(log: KafkaLog, first: int) -> None:
        records = []
        for i in range(first, first + 2000):
            merchant = f"m_{i % 20}"
            records.append(order(f"e{i}", merchant, amount=i))
            got = expected.setdefault(merchant, [0, 0])
            got[0] += 1
            got[1] += i
        for _ in range(20):  # the producer may need a moment to reconnect: a client retries
            try:
                log.append(records)
                return
            except LogWriteError:
                time.sleep(0.5)
        pytest.fail("the log accepted nothing after the brokers came back")

    with MockKafkaCluster(brokers=3) as cluster:
        log_config = kafka_config(cluster, 4)
        config = write_config(tmp_path, log_config, "outage")
        run = [sys.executable, "-m", "mercato", "--config", str(config), "run"]
        consumer = f"aggregator/{load_definitions().version}"
        archive = tmp_path / "data" / "archive"
        with KafkaLog(log_config) as log:
            produce(log, 0)
            members = [
                Member("aggregator", [*run, "aggregator"], tmp_path),
                Member("archiver", [*run, "archiver"], tmp_path),
            ]
            try:

                def drained() -> bool:
                    ends = {p: log.end_offset(p) for p in range(4)}
                    with SqliteStore(tmp_path / "data" / "store.sqlite3", StoreConfig()) as s:
                        counted = s.offsets(consumer) == ends
                    return counted and read_state(archive).next_offsets() == ends

                wait_for(drained, 90, "the first events to be counted and archived")
                cluster.all_brokers_down()
                time.sleep(4)
                cluster.all_brokers_up()
                produce(log, 2000)
                wait_for(drained, 90, "the events after the outage")
                for member in members:  # neither gave up, and both noticed the brokers away
                    assert member.process.poll() is None, member.text()
                assert "trying again" in members[0].text()
                assert "starting over" in members[1].text()
            finally:
                for member in members:
                    member.stop()
            for member in members:
                assert member.process.returncode == 0, member.text()
            assert_exactly_once(archive, log)
    assert counted(tmp_path / "data", expected) == expected
