"""The merchant dashboard in real headless Chromium against a real ``mercato run api``: what
the page shows is what the query API answers for the same URL and token."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.dashboard.conftest import Known, Watched, new_watched, serve_copy
from tests.serving import M2_ONLY, SECRET, ApiProcess, token

pytestmark = pytest.mark.slow

ADDITIVE = ("count", "sum")
READ_TABLE = """(section) => [...section.querySelectorAll("tbody tr")].map((tr) => ({
  provisional: tr.classList.contains("provisional"),
  values: [...tr.querySelectorAll("td[data-value]")].map((td) => JSON.parse(td.dataset.value)),
  text: [...tr.querySelectorAll("td[data-value]")].map((td) => td.textContent),
}))"""
READ_TOTALS = """(section) => [...section.querySelectorAll("tfoot td")].slice(0, -1)
  .map((td) => td.dataset.value === undefined ? "—" : JSON.parse(td.dataset.value))"""


@pytest.fixture(scope="module")
def api(known: Known, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    process = serve_copy(known, tmp_path_factory.mktemp("dashboard") / "data")
    yield process
    process.stop()


def sign_in(watched: Watched, api: ApiProcess, merchant: str = "m_1", path: str = "/") -> str:
    bearer = token(merchant)
    watched.page.goto(f"{api.url}{path}#token={bearer}")
    loaded(watched)
    return bearer


def loaded(watched: Watched) -> None:
    watched.page.wait_for_url("**/app**")
    watched.page.wait_for_selector("body[data-loading=false]")


def expected_rows(answer: dict[str, Any]) -> list[list[Any]]:
    """Per period, the values the table must show: each series (each quantile of a
    percentile), then each compared series."""

    def columns(body: dict[str, Any]) -> list[list[Any]]:
        out = []
        for series in body["series"]:
            first = series["values"][0] if series["values"] else None
            if isinstance(first, dict):
                out += [[v[key] for v in series["values"]] for key in first]
            else:
                out.append(series["values"])
        return out

    lines = columns(answer)
    if "compare" in answer:
        for line in columns(answer["compare"]):
            lines.append(
                [line[i] if i < len(line) else None for i in range(len(answer["periods"]))]
            )
    return [[line[i] for line in lines] for i in range(len(answer["periods"]))]


def check_charts(watched: Watched, api: ApiProcess, bearer: str) -> dict[str, dict[str, Any]]:
    """Every chart's table equals the API's answer to the chart's own URL; returns them."""
    page = watched.page
    answers = {}
    sections = page.locator("section.metric")
    assert sections.count() >= 10
    for i in range(sections.count()):
        section = sections.nth(i)
        name = section.get_attribute("data-metric")
        src = section.get_attribute("data-src")
        assert src is not None
        assert "merchant" not in src
        status, answer = api.get(src, bearer)
        if section.get_attribute("data-state") == "error":
            assert status == 400, (name, answer)
            assert answer["error"]["message"] in section.inner_text()
            continue
        assert status == 200, answer
        assert section.get_attribute("data-state") == "ready"
        shown = section.evaluate(READ_TABLE)
        if answer["kind"] == "percentile":
            # a merge of KLL sketches compacts at random: two answers to the same request
            # differ within the sketch's error, so the screen is held to what the page got
            again = answer
            answer = watched.received(src)
            for ours, theirs in zip(expected_rows(again), expected_rows(answer), strict=True):
                for a, b in zip(ours, theirs, strict=True):
                    assert (a is None) == (b is None)
                    assert a is None or abs(a - b) <= 0.05 * max(abs(a), 1), (name, ours, theirs)
        assert [row["values"] for row in shown] == expected_rows(answer), name
        flags = answer["series"][0]["provisional"]
        assert [row["provisional"] for row in shown] == flags, name
        if answer["kind"] in ADDITIVE:
            totals = section.evaluate(READ_TOTALS)
            columns = list(zip(*expected_rows(answer), strict=True))
            assert totals == [sum(v or 0 for v in column) for column in columns], name
        if answer["kind"] == "count":
            assert [row["text"] for row in shown] == [
                [f"{v:,}" if v is not None else "—" for v in row["values"]] for row in shown
            ]
        answers[name] = answer
    return answers


def check_kpis(watched: Watched, api: ApiProcess, bearer: str) -> dict[str, Any]:
    calls = [c for c in watched.api_calls("/v1/overview") if "metrics=" not in c]
    overview: dict[str, Any]
    status, overview = api.get(calls[-1], bearer)
    assert status == 200
    tiles = watched.page.locator(".kpi")
    assert tiles.count() == len(overview["kpis"]) > 0
    for kpi in overview["kpis"]:
        tile = watched.page.locator(f'.kpi[data-metric="{kpi["metric"]}"]')
        assert json.loads(tile.get_attribute("data-value")) == kpi["value"]
        if kpi["unit"] == "money" and isinstance(kpi["value"], int):
            assert f"{kpi['value'] / 100:,.2f}" in tile.inner_text()
        elif kpi["unit"] is None and isinstance(kpi["value"], int):
            assert f"{kpi['value']:,}" in tile.inner_text()
    return overview


def query(watched: Watched) -> dict[str, list[str]]:
    return parse_qs(urlsplit(watched.page.url).query)


def test_sign_in_link_then_every_number_equals_the_api(watched, api, artifacts):
    bearer = sign_in(watched, api)
    page = watched.page
    assert "token" not in page.url  # the link's token left the address bar
    assert page.evaluate("sessionStorage.getItem('mercato.token')") == bearer
    overview = check_kpis(watched, api, bearer)
    answers = check_charts(watched, api, bearer)
    orders = answers["orders"]
    flags = orders["series"][0]["provisional"]
    assert True in flags, "a provisional day"
    assert False in flags, "a final day"
    complete = overview["complete_through"]
    assert complete is not None
    assert f"Complete through {complete[11:16]}" in page.locator("#complete").inner_text()
    assert orders["tz"] == "Asia/Kolkata"  # the merchant's zone by default
    paint = page.evaluate(
        "performance.getEntriesByName('mercato:kpis')[0].startTime"
        " - performance.getEntriesByType('navigation')[0].startTime"
    )
    print(f"\nfirst meaningful paint (KPI tiles filled) {paint:.0f} ms after navigation")
    page.screenshot(path=artifacts / "app-7d.png", full_page=True)
    assert watched.errors == []


def test_controls_change_the_url_and_the_numbers_follow(watched, api, artifacts):
    bearer = sign_in(watched, api)
    page = watched.page
    page.select_option("#range", "30d")
    loaded(watched)
    page.select_option("#granularity", "week")
    loaded(watched)
    page.select_option("#tz", "UTC")
    loaded(watched)
    page.select_option("#breakdown", "channel")
    loaded(watched)
    page.check("#compare")
    loaded(watched)
    page.select_option("#view", "lines")
    loaded(watched)
    assert query(watched) == {
        "range": ["30d"], "g": ["week"], "tz": ["UTC"], "by": ["channel"], "cmp": ["1"],
        "view": ["lines"],
    }  # fmt: skip
    answers = check_charts(watched, api, bearer)
    orders = answers["orders"]
    assert orders["granularity"] == "week"
    assert orders["tz"] == "UTC"
    assert {s["member"] for s in orders["series"]} == {"web", "pos", "mobile"}
    assert "compare" in orders
    assert orders["periods"][0].endswith("+00:00")
    page.screenshot(path=artifacts / "app-30d-week-utc-channel.png", full_page=True)

    # the address is the view: opened again (bookmarked, shared), it shows the same
    page.goto(page.url)
    loaded(watched)
    assert page.input_value("#range") == "30d"
    assert page.input_value("#breakdown") == "channel"
    assert page.is_checked("#compare")
    check_charts(watched, api, bearer)
    page.go_back()  # history holds each change
    loaded(watched)
    assert page.input_value("#view") == "stacked"

    # hours of a week: final hours, then provisional ones, marked on screen
    page.select_option("#range", "7d")
    loaded(watched)
    page.select_option("#granularity", "hour")
    loaded(watched)
    hourly = check_charts(watched, api, bearer)["orders"]
    flags = hourly["series"][0]["provisional"]
    first = flags.index(True)
    assert first > 100, "a week of hours: final up to the last few"
    assert not any(flags[:first])
    assert all(flags[first:])
    rows = page.locator("#metric-orders tbody tr")
    assert rows.nth(len(flags) - 1).inner_text().rstrip().endswith("provisional")
    assert rows.nth(0).inner_text().rstrip().endswith("final")
    page.screenshot(path=artifacts / "app-7d-hourly.png", full_page=False)
    assert watched.errors == []


def test_csv_export_holds_the_api_values(watched, api):
    bearer = sign_in(watched, api, path="/app?range=30d&by=country&cmp=1")
    section = watched.page.locator("#metric-gross_revenue")
    status, answer = api.get(section.get_attribute("data-src"), bearer)
    assert status == 200
    with watched.page.expect_download() as download:
        section.get_by_role("button", name="Download CSV").click()
    rows = list(csv.reader(io.StringIO(download.value.path().read_text())))
    header, body = rows[0], rows[1:]
    members = [s["member"] for s in answer["series"]]
    assert header[1 : 1 + len(members)] == members
    assert [r[0] for r in body] == answer["periods"]
    values = [[int(c) if c else None for c in r[1:-1]] for r in body]
    assert values == expected_rows(answer)
    assert [r[-1] for r in body] == [
        "provisional" if p else "final" for p in answer["series"][0]["provisional"]
    ]
    assert watched.errors == []


def test_a_year_of_daily_points_draws_at_once(watched, api, known):
    today = known.now.date()
    start = today.replace(year=today.year - 1)
    bearer = sign_in(watched, api, path=f"/app?range=custom&from={start}&to={today}&g=day")
    answers = check_charts(watched, api, bearer)
    assert len(answers["gross_revenue"]["periods"]) >= 365
    assert watched.page.locator("#metric-gross_revenue canvas").count() == 1
    assert watched.errors == []


def test_a_merchant_sees_only_its_own_data(watched, api, artifacts):
    page = watched.page
    # hand-edited: the page has no merchant parameter, so these change nothing
    bearer = sign_in(watched, api, path="/app?merchant=m_2&merchant_id=m_2&by=channel")
    answers = check_charts(watched, api, bearer)
    assert {s["member"] for s in answers["orders"]["series"]} <= {"web", "pos", "mobile"}
    text = page.locator("main").inner_text()
    assert not any(member in text for member in M2_ONLY)
    assert not any("m_2" in call for call in watched.api_calls("/v1/"))
    assert page.locator("[name*=merchant], [id*=merchant]").count() == 0

    # a token this server did not sign (another deployment's, or forged for m_2) gets nothing
    watched.expect_refusals()
    page.evaluate("sessionStorage.clear()")
    page.goto(f"{api.url}/app?by=channel#token={token('m_2', secret='another-secret')}")
    page.wait_for_selector("#fatal:not([hidden])")
    assert "refused" in page.locator("#fatal").inner_text()
    assert page.locator(".kpi, section.metric").count() == 0
    assert not any(member in page.content() for member in M2_ONLY)
    page.screenshot(path=artifacts / "app-foreign-token.png")
    # and the sign-in page refuses it too
    page.goto(f"{api.url}/")
    page.fill("#token", token("m_2", secret="another-secret"))
    page.click("button[type=submit]")
    page.wait_for_selector("#error:not(:empty)")
    assert "refused" in page.locator("#error").inner_text()
    assert page.url.endswith("/")
    assert SECRET not in page.content()
    assert watched.errors == []


def test_keyboard_labels_and_phone_width(browser, api, artifacts):
    context, watched = new_watched(browser, width=390, height=844)
    try:
        sign_in(watched, api)
        page = watched.page
        for control in page.locator("#controls select, #controls input").all():
            if control.is_visible():
                assert control.evaluate("(e) => e.labels.length") > 0
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{overflow}px wider than a phone"
        page.screenshot(path=artifacts / "app-phone.png", full_page=False)
        page.focus("#range")
        page.keyboard.press("ArrowDown")  # Last 7 days -> Last 30 days, with the keyboard
        loaded(watched)
        assert query(watched)["range"] == ["30d"]
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "granularity"
        assert watched.errors == []
    finally:
        context.close()
