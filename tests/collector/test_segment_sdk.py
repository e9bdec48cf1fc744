"""Segment's official Python SDK (segment-analytics-python) against `mercato run collector`
in its own process, and `mercato quarantine` as operators run it.

The SDK treats a 400 as final and drops the whole batch: one invalid message must not cost
the valid ones, and the invalid one must be kept where an operator can bring it in later.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest
from segment import analytics  # type: ignore[import-untyped]  # segment-analytics-python

from tests.collector.test_server import stored_events

pytestmark = pytest.mark.slow


def mercato(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "MERCATO_DATA_DIR": str(data_dir), **env}
    environment.pop("MERCATO_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "mercato", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return msgspec.json.decode(result.stdout)


def sdk_client(collector: Any, write_key: str, errors: list[Exception]) -> Any:
    return analytics.Client(
        write_key=write_key,
        host=f"http://127.0.0.1:{collector.port}",
        on_error=lambda error, batch: errors.append(error),
        upload_interval=1.0,  # the seven calls below go out as one batch
        max_retries=1,
    )


def test_one_invalid_message_in_an_sdk_batch_is_quarantined_and_replayed_once(
    collector_factory,
):
    c = collector_factory()
    errors: list[Exception] = []
    client = sdk_client(c, c.secret, errors)
    for i in range(6):
        client.track(
            user_id=f"u{i}",
            event="Order Completed",
            properties={"merchant_id": "m_1", "amount": 1000 + i},
            message_id=f"sdk-{i}",
        )
    # this producer puts its merchant under another name
    client.track(
        user_id="u6", event="Order Completed", properties={"shop_id": "m_2"}, message_id="sdk-6"
    )
    client.shutdown()
    assert errors == []
    metrics = c.request("GET", "/metrics")[2].decode()
    assert 'mercato_ingest_requests_total{endpoint="batch",status="200"} 1.0' in metrics
    assert 'mercato_collector_quarantined_events_total{reason="merchant_id"} 1.0' in metrics
    assert sorted(e.event_id for e in stored_events(c.data_dir)) == [f"sdk-{i}" for i in range(6)]

    listed = json_of(mercato(c.data_dir, "quarantine", "list", "--format", "json"))
    assert (listed["total"], listed["by_reason"]) == (1, {"merchant_id": 1})
    (entry,) = listed["entries"]
    assert (entry["event_id"], entry["index"], entry["source"]) == ("sdk-6", 6, "test")
    assert entry["field"] == "properties.merchant_id"
    shown = json_of(mercato(c.data_dir, "quarantine", "show", str(entry["id"]), "--format", "json"))
    assert msgspec.json.decode(shown["message"])["properties"] == {"shop_id": "m_2"}
    table = mercato(c.data_dir, "quarantine", "list")
    assert "1 open entry: 1 merchant_id" in table.stdout

    # replayed before the configuration is fixed: still invalid, still quarantined
    still = json_of(mercato(c.data_dir, "quarantine", "replay", "--all", "--format", "json"))
    assert (still["replayed"], [e["attempts"] for e in still["still_invalid"]]) == ([], [1])
    assert len(stored_events(c.data_dir)) == 6

    fixed = {
        "MERCATO_COLLECTOR_SEGMENT_MERCHANT_ID_PATHS": "properties.merchant_id,properties.shop_id"
    }
    replay = mercato(c.data_dir, "quarantine", "replay", "--all", **fixed)
    assert replay.returncode == 0, replay.stderr
    assert "replayed 1 event(s) into the log" in replay.stdout
    again = json_of(
        mercato(c.data_dir, "quarantine", "replay", "--all", "--format", "json", **fixed)
    )
    assert again["replayed"] == []
    refused = mercato(c.data_dir, "quarantine", "replay", str(entry["id"]), **fixed)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: no open quarantine entry {entry['id']}")
    assert "Traceback" not in refused.stderr

    stored = stored_events(c.data_dir)
    assert Counter(e.event_id for e in stored) == Counter(f"sdk-{i}" for i in range(7))
    (late,) = [e for e in stored if e.event_id == "sdk-6"]
    assert (late.merchant_id, late.source, late.type) == ("m_2", "test", "Order Completed")
    assert json_of(mercato(c.data_dir, "quarantine", "list", "--format", "json"))["total"] == 0
    assert mercato(c.data_dir, "quarantine", "list").stdout.strip() == "the quarantine is empty"


def test_the_sdk_logs_what_went_wrong_not_unknown(collector_factory):
    c = collector_factory()
    errors: list[Exception] = []
    client = sdk_client(c, "wk_not_a_key", errors)
    client.track(user_id="u", event="Signed Up", properties={"merchant_id": "m_1"})
    client.shutdown()
    (error,) = errors
    assert str(error) == "[Segment] unauthorized: unknown write key (401)"


def test_purge_and_set_merchant_from_the_command_line(collector_factory):
    c = collector_factory()
    errors: list[Exception] = []
    client = sdk_client(c, c.secret, errors)
    for i in range(3):
        client.track(user_id="u", event="Viewed", properties={}, message_id=f"p-{i}")
    client.shutdown()
    assert errors == []
    ids = [
        e["id"]
        for e in json_of(mercato(c.data_dir, "quarantine", "list", "--format", "json"))["entries"]
    ]
    assert len(ids) == 3
    purged = mercato(c.data_dir, "quarantine", "purge", str(ids[0]))
    assert (purged.returncode, purged.stdout.strip()) == (0, "purged 1 entry")
    replay = mercato(
        c.data_dir, "quarantine", "replay", *map(str, ids[1:]), "--set-merchant", "m_7"
    )
    assert replay.returncode == 0, replay.stderr
    stored = stored_events(c.data_dir)
    assert sorted((e.event_id, e.merchant_id) for e in stored) == [("p-1", "m_7"), ("p-2", "m_7")]
    assert mercato(c.data_dir, "quarantine", "purge", "--all").stdout.strip() == "purged 0 entries"
