"""Retention waits for the consumers that matter: the serving aggregator and the archiver."""

from __future__ import annotations

from pathlib import Path

from mercato.archive.layout import PartitionState, update_state
from mercato.archive.retention import consumed_offsets, enforce_retention
from mercato.config import Config, load_config
from mercato.log import open_log
from mercato.log.base import Record
from mercato.metrics.definitions import load_definitions
from mercato.metrics.kernel import empty_partials
from mercato.store import open_store
from mercato.store.versions import register


def settings(data: Path, waits: str = "aggregator,archiver") -> Config:
    return load_config(
        env={
            "MERCATO_DATA_DIR": str(data),
            "MERCATO_LOG_PARTITIONS": "2",
            "MERCATO_LOG_SEGMENT_BYTES": "4096",
            "MERCATO_LOG_RETENTION_HOURS": "1",
            "MERCATO_LOG_FSYNC": "false",
            "MERCATO_LOG_RETENTION_WAITS_FOR": waits,
        }
    )


def test_the_slowest_consumer_holds_retention_back(tmp_path: Path) -> None:
    config = settings(tmp_path)
    definitions = load_definitions()
    assert consumed_offsets(config) == {0: 0, 1: 0}  # nobody has read anything
    with open_store(config) as store:
        version = register(store, definitions)
        store.set_serving_version(version)
        store.write(version, f"aggregator/{definitions.version}", empty_partials(), {0: 10, 1: 5})
    assert consumed_offsets(config) == {0: 0, 1: 0}  # the archiver has not run
    update_state(config.archive_path, {0: PartitionState(7), 1: PartitionState(9)})
    assert consumed_offsets(config) == {0: 7, 1: 5}
    assert consumed_offsets(settings(tmp_path, "aggregator")) == {0: 10, 1: 5}
    assert consumed_offsets(settings(tmp_path, "")) is None


def test_segments_go_only_once_both_consumers_passed_them(tmp_path: Path) -> None:
    config = settings(tmp_path)
    definitions = load_definitions()
    later = 2**62  # every segment is far older than the one-hour retention
    log = open_log(config)
    try:
        for i in range(40):
            log.append([Record(f"m{j}", f"{'x' * 200}{i}-{j}".encode()) for j in range(4)])
        ends = {p: log.end_offset(p) for p in range(2)}
        assert enforce_retention(config, log, later) == 0  # nobody has read anything
        update_state(config.archive_path, {p: PartitionState(e) for p, e in ends.items()})
        assert enforce_retention(config, log, later) == 0  # the aggregator has not
        with open_store(config) as store:
            version = register(store, definitions)
            store.set_serving_version(version)
            store.write(version, f"aggregator/{definitions.version}", empty_partials(), ends)
        assert enforce_retention(config, log, later) > 0
        assert log.start_offset(0) > 0 or log.start_offset(1) > 0
    finally:
        log.close()
