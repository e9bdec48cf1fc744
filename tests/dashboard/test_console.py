"""The operator console in real headless Chromium: admin token only; what it shows is what the
admin endpoints answer; its actions (run a job, promote, roll back) go through them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any, NamedTuple

import msgspec
import pytest
from playwright.sync_api import expect

from tests.conftest import CollectorFactory
from tests.dashboard.conftest import Known, Watched
from tests.serving import ADMIN, ApiProcess, events, shadow_version, token

pytestmark = pytest.mark.slow


class Console(NamedTuple):
    api: ApiProcess
    shadow: int


@pytest.fixture(scope="module")
def console(known: Known, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    root = tmp_path_factory.mktemp("console")
    data = root / "data"
    shutil.copytree(known.data, data)
    shadow = shadow_version(data, events(known.now))
    factory = CollectorFactory(data, root)
    collector = factory(data, MERCATO_LOG_PARTITIONS="2")
    api = ApiProcess(data, {"MERCATO_COLLECTOR_PORT": str(collector.port)})
    order = {"type": "order_completed", "merchant_id": "m_1", "timestamp": known.now.isoformat()}
    assert collector.post_events([{**order, "event_id": f"c{i}"} for i in range(25)])[0] == 200
    # two Segment messages the collector quarantines (no merchant id; a type it does not know)
    unknown = [{"type": "track", "event": "Viewed", "messageId": "qm", "properties": {}},
               {"type": "purchase", "messageId": "qt"}]  # fmt: skip
    headers = {**collector.auth(), "Content-Type": "application/json"}
    body = msgspec.json.encode({"batch": unknown})
    assert collector.request("POST", "/v1/batch", body, headers)[0] == 200
    try:
        yield Console(api, shadow)
    finally:
        api.stop()
        factory.kill_all()


def open_console(watched: Watched, api: ApiProcess) -> None:
    page = watched.page
    page.goto(f"{api.url}/")
    page.fill("#token", ADMIN)
    page.click("button[type=submit]")
    page.wait_for_url("**/console")
    page.wait_for_selector("body[data-ready=true]")
    page.on("dialog", lambda dialog: dialog.accept())


def finished_operations(watched: Watched, count: int) -> Any:
    rows = watched.page.locator("#operations tbody tr")
    rows.nth(count - 1).wait_for()
    expect(watched.page.locator("#operations")).not_to_contain_text("running…", timeout=120_000)
    return rows


def test_the_console_refuses_a_merchant_token(watched, console, artifacts):
    watched.expect_refusals()
    page = watched.page
    bearer = token("m_1")
    page.goto(f"{console.api.url}/console#token={bearer}")
    page.wait_for_selector("#refused")
    assert "needs the admin token" in page.locator("#refused").inner_text()
    assert page.locator("#lag table, #jobs table, #versions table").count() == 0
    page.screenshot(path=artifacts / "console-merchant-refused.png")
    # signing in with a merchant token leads to the merchant's page, never the console
    page.evaluate("sessionStorage.clear()")
    page.goto(f"{console.api.url}/?next=/console")
    page.fill("#token", bearer)
    page.click("button[type=submit]")
    page.wait_for_url("**/app")
    assert console.api.get("/v1/admin/pipeline", bearer)[0] == 403
    assert watched.errors == []


def test_the_console_shows_what_the_admin_endpoints_answer(watched, console, artifacts):
    open_console(watched, console.api)
    page = watched.page
    _, pipeline = console.api.get("/v1/admin/pipeline", ADMIN)
    for consumer in pipeline["consumers"]:
        row = page.locator(f'#lag tr[data-consumer="{consumer["consumer"]}"]')
        assert int(row.locator("td[data-lag]").get_attribute("data-lag")) == consumer["total_lag"]
    assert sum(p["end_offset"] for p in pipeline["partitions"]) == 25
    _, jobs = console.api.get("/v1/admin/jobs", ADMIN)
    assert [r.get_attribute("data-job") for r in page.locator("#jobs tbody tr").all()] == [
        j["name"] for j in jobs["jobs"]
    ]
    assert page.locator(f'#versions tr[data-version="{console.shadow}"]').count() == 1
    _, quarantine = console.api.get("/v1/admin/quarantine?limit=10", ADMIN)
    assert quarantine["by_reason"] == {"merchant_id": 1, "schema": 1}
    assert page.locator("#quarantine-total").get_attribute("data-total") == "2"
    for reason, count in quarantine["by_reason"].items():
        assert page.locator(f'#quarantine tr[data-reason="{reason}"] td').inner_text() == str(count)
    shown = [
        r.get_attribute("data-entry") for r in page.locator("#quarantine tr[data-entry]").all()
    ]
    assert shown == [str(e["id"]) for e in quarantine["latest"]]
    assert "qt" in page.locator("#quarantine tr[data-entry]").first.inner_text()
    # the ingest chart once the monitor has two samples (it samples every 5 s)
    page.wait_for_selector("#ingest canvas", timeout=30_000)
    assert "sampled every 5 s" in page.locator("#ingest-status").inner_text()
    page.fill("#merchant-id", "m_1")
    page.click("#merchant-form button")
    page.wait_for_selector("#merchant [data-has-data]")
    assert "Asia/Kolkata" in page.locator("#merchant").inner_text()
    assert page.locator("#merchant [data-has-data]").get_attribute("data-has-data") == "true"
    page.screenshot(path=artifacts / "console.png", full_page=True)

    # a support engineer opens the merchant's dashboard: a tab signed in as that merchant
    with page.context.expect_page() as opened:
        page.get_by_role("button", name="Open this merchant's dashboard (1-hour token)").click()
    merchant_page = opened.value
    merchant_page.wait_for_url("**/app")
    merchant_page.wait_for_selector("body[data-loading=false]")
    assert "Asia/Kolkata" in merchant_page.locator("#tz").inner_text()
    assert "token" not in merchant_page.url
    assert watched.errors == []


def test_run_a_job_then_promote_and_roll_back_from_the_console(watched, console, artifacts):
    open_console(watched, console.api)
    page = watched.page
    page.get_by_role("button", name="Run seal now").click()
    rows = finished_operations(watched, 1)
    assert "mercato jobs run seal" in rows.nth(0).inner_text()
    runs = console.api.get("/v1/admin/jobs", ADMIN)[1]["runs"]
    assert any(r["job"] == "seal" and r["params"] == {"trigger": "manual"} for r in runs)

    page.get_by_role("button", name=f"Diff {console.shadow} vs 1").click()
    page.wait_for_selector("#diff table")
    assert "gross_revenue" in page.locator("#diff").inner_text()

    page.get_by_role("button", name=f"Promote {console.shadow}").click()
    rows = finished_operations(watched, 2)
    assert "succeeded" in rows.nth(0).inner_text(), rows.nth(0).inner_text()
    assert console.api.get("/v1/admin/versions", ADMIN)[1]["serving"] == console.shadow
    page.wait_for_selector(f'#versions tr[data-version="{console.shadow}"] >> text=(serving)')
    page.screenshot(path=artifacts / "console-promoted.png", full_page=True)
    page.get_by_role("button", name="Roll back to version 1").click()
    rows = finished_operations(watched, 3)
    assert "succeeded" in rows.nth(0).inner_text()
    assert console.api.get("/v1/admin/versions", ADMIN)[1]["serving"] == 1
    assert watched.errors == []
