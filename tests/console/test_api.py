"""The operator console's endpoints (``/v1/admin/...``) through a real ``mercato run api``
process, with a real collector feeding the log: lag, ingest rates, jobs run now, versions with
their diff, promote and rollback in child processes, archive coverage and merchant lookup."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest

from mercato.archive.layout import PartitionState, file_name, hour_dir, update_state
from mercato.config import StoreConfig
from mercato.metrics.definitions import load_definitions
from mercato.metrics.kernel import PARTIAL_SCHEMA
from mercato.names import SEALED_THROUGH
from mercato.query.openapi import openapi
from mercato.store.sqlite import SqliteStore
from tests.conftest import CollectorFactory
from tests.serving import ADMIN, ApiProcess, fill, shadow_version, token

pytestmark = pytest.mark.slow

READS = [
    "/v1/admin/pipeline",
    "/v1/admin/ingest",
    "/v1/admin/jobs",
    "/v1/admin/versions",
    "/v1/admin/versions/1/diff",
    "/v1/admin/operations",
    "/v1/admin/archive",
    "/v1/admin/merchants/m_1",
    "/v1/admin/quarantine",
]
ACTIONS = ["/v1/admin/jobs/seal/run", "/v1/admin/versions/1/promote", "/v1/admin/rollback"]


class Setup(NamedTuple):
    api: ApiProcess
    data: Path
    post: Callable[[list[dict[str, object]]], tuple[int, dict[str, str], bytes]]
    post_elsewhere: Callable[[list[dict[str, object]]], tuple[int, dict[str, str], bytes]]
    shadow: int
    collector: Any = None


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("operations")
    data = root / "data"
    data.mkdir()
    known = fill(data, datetime.now(UTC), days=4)
    shadow = shadow_version(data, known)
    factory = CollectorFactory(data, root)
    collectors = [factory(data, MERCATO_LOG_PARTITIONS="2") for _ in range(2)]
    targets = ",".join(f"127.0.0.1:{c.port}" for c in collectors)
    api = ApiProcess(data, {"MERCATO_API_COLLECTORS": targets})
    try:
        yield Setup(
            api, data, collectors[0].post_events, collectors[1].post_events, shadow, collectors[0]
        )
    finally:
        api.stop()
        factory.kill_all()


def order(i: int, merchant: str = "m_1") -> dict[str, object]:
    at = datetime.now(UTC).isoformat()
    return {"event_id": f"live-{merchant}-{i}", "type": "order_completed",
            "merchant_id": merchant, "timestamp": at, "properties": {"amount": 100}}  # fmt: skip


def wait_for_operations(api: ApiProcess) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 120
    while True:
        status, body = api.get("/v1/admin/operations", ADMIN)
        assert status == 200
        if all(o["finished_at"] is not None for o in body["operations"]):
            return list(body["operations"])
        assert time.monotonic() < deadline, body
        time.sleep(0.3)


def test_admin_endpoints_need_the_admin_token(setup):
    merchant = token("m_1")
    for path in READS:
        assert setup.api.get(path)[0] == 401, path
        status, body = setup.api.get(path, merchant)
        assert status == 403, path
        assert body["error"]["message"] == "this endpoint needs the admin token"
        assert setup.api.get(path, ADMIN)[0] == 200, path
    for path in ACTIONS:
        assert setup.api.call("POST", path, merchant)[0] == 403, path
    assert setup.api.get("/v1/admin/operations", ADMIN)[1]["operations"] == []


def test_every_admin_endpoint_is_in_the_openapi_document(setup):
    documented = set(openapi()["paths"])
    for path in [*READS, *ACTIONS]:
        template = (
            path.replace("/1/", "/{version}/")
            .replace("/seal/", "/{name}/")
            .replace("/m_1", "/{merchant_id}")
        )
        assert template in documented, path
    assert setup.api.get("/openapi.json")[1]["paths"].keys() == documented


def test_pipeline_shows_lag_per_partition_per_consumer(setup):
    assert setup.post([order(i) for i in range(30)])[0] == 200
    assert setup.post([order(i, "m_2") for i in range(20)])[0] == 200
    definitions = load_definitions()
    consumer = f"aggregator/{definitions.version}"
    with SqliteStore(setup.data / "store.sqlite3", StoreConfig()) as store:
        # an aggregator that has read 5 records of partition 0 and none of partition 1
        store.write(1, consumer, PARTIAL_SCHEMA.empty_table(), {0: 5})
        sealed = store.watermark(SEALED_THROUGH, 1)
    assert sealed is not None
    status, body = setup.api.get("/v1/admin/pipeline", ADMIN)
    assert status == 200
    ends = {p["partition"]: p["end_offset"] for p in body["partitions"]}
    assert sum(ends.values()) >= 50
    rows = {c["consumer"]: c for c in body["consumers"]}
    assert rows[consumer]["serving"] is True
    assert rows[consumer]["lag"] == {"0": ends[0] - 5, "1": ends[1]}
    assert rows[consumer]["total_lag"] == sum(ends.values()) - 5
    assert body["freshness"]["newest_event_at"] is not None
    assert body["freshness"]["sealed_through"] == datetime.fromtimestamp(sealed, UTC).isoformat()


def test_ingest_rates_and_errors_are_summed_over_the_collectors(setup):
    before = setup.api.get("/v1/admin/ingest", ADMIN)[1]  # a sample before
    accepted = before["totals"]["events"].get("accepted", 0)
    assert setup.post([order(100 + i) for i in range(40)])[0] == 200
    assert setup.post_elsewhere([order(200 + i) for i in range(30)])[0] == 200
    assert setup.post([{"type": "order_completed"}])[0] == 400  # no merchant: rejected
    time.sleep(5.2)  # the next sample is due after the monitor's interval
    status, body = setup.api.get("/v1/admin/ingest", ADMIN)
    assert status == 200
    assert body["error"] is None
    assert len(body["collectors"]) == 2
    assert body["totals"]["events"]["accepted"] - accepted >= 70  # 40 + 30: both scraped
    assert body["totals"]["requests"]["400"] >= 1
    latest = body["points"][-1]
    assert latest["accepted_per_second"] > 0
    assert latest["log_events_per_second"] > 0
    assert latest["client_errors_per_second"] > 0
    assert latest["server_errors_per_second"] == 0


def test_a_job_runs_now_once_at_a_time_and_is_recorded(setup):
    started = setup.api.call("POST", "/v1/admin/jobs/seal/run", ADMIN)
    assert started[0] == 202
    assert started[1]["command"] == ["jobs", "run", "seal"]
    again = setup.api.call("POST", "/v1/admin/jobs/seal/run", ADMIN)
    assert again[0] == 409
    assert "running already" in again[1]["error"]["message"]
    assert setup.api.call("POST", "/v1/admin/jobs/nope/run", ADMIN)[0] == 404
    done = next(o for o in wait_for_operations(setup.api) if o["id"] == started[1]["id"])
    runs = setup.api.get("/v1/admin/jobs", ADMIN)[1]["runs"]
    manual = [r for r in runs if r["job"] == "seal" and r["params"] == {"trigger": "manual"}]
    assert manual, runs
    assert (manual[0]["status"] == "succeeded") == (done["exit_code"] == 0)
    last = manual[0]
    assert done["result"] == {
        "job": "seal",
        "run_id": last["id"],
        "attempt": last["attempt"],
        "status": last["status"],
    }
    assert "seal: attempt 1 of 3 started" in done["output"]  # the scheduler's logging


def test_versions_diff_then_promote_and_roll_back(setup):
    status, body = setup.api.get("/v1/admin/versions", ADMIN)
    assert status == 200
    assert body["serving"] == 1
    assert [v["id"] for v in body["versions"]] == [1, setup.shadow]
    today = datetime.now(UTC).date()
    diff = setup.api.get(
        f"/v1/admin/versions/{setup.shadow}/diff?from={today - timedelta(days=1)}"
        f"&to={today + timedelta(days=1)}",
        ADMIN,
    )[1]
    assert diff["old"] == 1
    revenue = [r for r in diff["rows"] if r["metric"] == "gross_revenue"]
    assert revenue, "web orders only: less revenue"
    assert all(r["new"] < r["old"] for r in revenue if r["old"] and r["new"] is not None)
    assert setup.api.get("/v1/admin/versions/99/diff", ADMIN)[0] == 404
    assert setup.api.get("/v1/admin/versions/x/diff", ADMIN)[0] == 400
    assert setup.api.call("POST", "/v1/admin/versions/99/promote", ADMIN)[0] == 404

    assert setup.api.call("POST", f"/v1/admin/versions/{setup.shadow}/promote", ADMIN)[0] == 202
    promoted = wait_for_operations(setup.api)[0]
    assert promoted["command"] == ["promote", str(setup.shadow)]
    assert promoted["exit_code"] == 0, promoted["output"]
    assert (promoted["result"]["version"], promoted["result"]["previous"]) == (setup.shadow, 1)
    assert f"version {setup.shadow} serves now (was 1)" in promoted["output"]
    assert setup.api.get("/v1/admin/versions", ADMIN)[1]["serving"] == setup.shadow
    assert setup.api.call("POST", "/v1/admin/rollback", ADMIN)[0] == 202
    rolled = wait_for_operations(setup.api)[0]
    assert rolled["command"] == ["rollback"]
    assert rolled["exit_code"] == 0, rolled["output"]
    assert (rolled["result"]["version"], rolled["result"]["previous"]) == (1, setup.shadow)
    assert setup.api.get("/v1/admin/versions", ADMIN)[1]["serving"] == 1


def test_archive_size_and_hour_coverage(setup):
    archive = setup.data / "archive"
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with SqliteStore(setup.data / "store.sqlite3", StoreConfig()) as store:
        sealed_hour = datetime.fromtimestamp(max(store.sealed_hours(1)), UTC)
    hours = [sealed_hour, now - timedelta(hours=1), now - timedelta(hours=2)]
    for n, hour in enumerate(hours):
        directory = archive / hour_dir(hour)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / file_name(0, n * 10, n * 10 + 9)).write_bytes(b"x" * (100 + n))
    # a file past the committed offset: left by a crash, not counted
    (archive / hour_dir(hours[1]) / file_name(0, 30, 39)).write_bytes(b"y" * 1000)
    update_state(archive, {0: PartitionState(next_offset=30)})
    status, body = setup.api.get("/v1/admin/archive?days=3", ADMIN)
    assert status == 200, body
    assert body["exists"] is True
    assert body["files"] == 3
    assert body["bytes"] == 100 + 101 + 102
    assert body["partitions"] == [{"partition": 0, "next_offset": 30, "watermark": None}]
    cells = {h["hour"]: h for h in body["hours"]}
    assert len(cells) == 72
    assert cells[hours[1].isoformat()]["files"] == 1
    if sealed_hour.isoformat() in cells:
        assert cells[sealed_hour.isoformat()]["sealed"] is True
    assert cells[now.isoformat()] == {"hour": now.isoformat(), "files": 0, "bytes": 0,
                                      "sealed": False}  # fmt: skip
    assert setup.api.get("/v1/admin/archive?days=0", ADMIN)[0] == 400


def test_merchant_lookup(setup):
    status, body = setup.api.get("/v1/admin/merchants/m_1", ADMIN)
    assert status == 200
    assert body["timezone"] == "Asia/Kolkata"
    assert body["has_data"] is True
    assert body["counts"]["orders"] > 0
    status, body = setup.api.get("/v1/admin/merchants/m_nobody", ADMIN)
    assert status == 200
    assert body == {"merchant_id": "m_nobody", "timezone": None, "timezone_set": False,
                    "has_data": False, "lookback_days": 90, "counts": body["counts"]}  # fmt: skip
    assert not any(body["counts"].values())


def test_quarantine_counts_by_reason_and_the_newest_entries(setup):
    status, body = setup.api.get("/v1/admin/quarantine", ADMIN)
    assert (status, body["exists"], body["total"], body["latest"]) == (200, True, 0, [])
    old = "2001-01-01T00:00:00Z"
    batch = {
        "batch": [
            {"type": "track", "event": "Order Completed", "messageId": "q-0", "properties": {}},
            {"type": "page", "messageId": "q-1", "timestamp": old, "context": {"groupId": "m_1"}},
            {"type": "track", "event": "Order Completed", "messageId": "q-2", "properties": {}},
        ]
    }  # fmt: skip
    headers = {**setup.collector.auth(), "Content-Type": "application/json"}
    status, _, answer = setup.collector.request(
        "POST", "/v1/batch", msgspec.json.encode(batch), headers
    )
    assert status == 200, answer
    assert len(msgspec.json.decode(answer)["quarantined"]) == 3
    status, body = setup.api.get("/v1/admin/quarantine?limit=2", ADMIN)
    assert status == 200
    assert (body["total"], body["by_reason"]) == (3, {"merchant_id": 2, "timestamp": 1})
    assert [e["event_id"] for e in body["latest"]] == ["q-2", "q-1"]
    newest = body["latest"][0]
    assert (newest["reason"], newest["source"], newest["index"]) == ("merchant_id", "test", 2)
    assert msgspec.json.decode(newest["message"])["messageId"] == "q-2"
    assert setup.api.get("/v1/admin/quarantine?limit=101", ADMIN)[0] == 400
