"""Every endpoint of the query API, merchant and admin, under arbitrary parameters.

Hypothesis drives each route's path parameters, query parameters (the ones it reads and
random others), tokens and bodies with arbitrary text, numbers, dates, times and Unicode.
Whatever comes in: no 5xx, an answer within a second, and memory that stays bounded.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Mount, Route

from mercato.config import load_config
from mercato.console.launcher import Action, Ending, Launcher
from mercato.query.app import QueryApi
from mercato.query.server import LogOpener, build
from mercato.store.sqlite import SqliteStore
from tests.serving import ADMIN, SECRET, fill, token

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
PARAMETERS = ["from", "to", "tz", "granularity", "group_by", "top", "compare", "metrics",
              "limit", "days", "against"]  # fmt: skip


class IdleRunner:
    """Actions the console would start: recorded, never run."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, ...]] = []

    def run(self, action: Action, timeout: float, output: Callable[[str], None]) -> Ending:
        self.commands.append(action.command)
        return Ending()

    def stop(self) -> None:
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    data: Path = tmp_path_factory.mktemp("fuzz")
    fill(data, NOW, days=3)
    config = load_config(
        env={
            "MERCATO_DATA_DIR": str(data),
            "MERCATO_API_SECRET": SECRET,
            "MERCATO_API_ADMIN_TOKEN": ADMIN,
            "MERCATO_API_RATE_LIMIT_BURST": "1000000",
            "MERCATO_API_RATE_LIMIT_PER_SECOND": "1000000",
        }
    )
    store = SqliteStore(config.store_path, config.store)
    api, operator = build(config, store, LogOpener(config))
    operator.launcher = Launcher(IdleRunner())
    yield api, operator
    api.offload.close()
    store.close()


def routes(api: QueryApi) -> list[tuple[str, str]]:
    """(method, path template) of every route, the static files' mount included."""
    found = []
    for route in api.app.routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or {"GET"}):
                if method != "HEAD":
                    found.append((method, route.path))
        elif isinstance(route, Mount):
            found.append(("GET", route.path + "/{path}"))
    return found


TEXT = st.text(st.characters(codec="utf-8"), max_size=30)
DATES = st.dates().map(str)
TIMES = st.datetimes(timezones=st.timezones()).map(lambda t: t.isoformat())
NUMBERS = st.integers(-(2**70), 2**70).map(str)
WEIRD_DIGITS = st.text(st.sampled_from("²³¹٣۴߅०১੧૨୩௪౫೬൭෮๑໒༣၄႕០᠑᥆᧐᪀᭐᮰᱀᱐꘠꣐꤀꧐꩐꯰０"), min_size=1)
VALUE = st.one_of(TEXT, DATES, TIMES, NUMBERS, WEIRD_DIGITS,
                  st.sampled_from(["day", "hour", "15m", "week", "month", "UTC", "Asia/Kolkata",
                                   "Pacific/Kiritimati", "Africa/Monrovia", "channel",
                                   "previous_year", "previous_period", "orders", "0", "-1",
                                   "99999999999999999999", "1e9", "0001-01-01",
                                   "9999-12-31"]))  # fmt: skip
QUERY = st.dictionaries(st.one_of(st.sampled_from(PARAMETERS), TEXT), VALUE, max_size=6)


@st.composite
def requests(
    draw: st.DrawFn, endpoints: list[tuple[str, str]]
) -> tuple[str, str, dict[bytes, bytes], bytes]:
    method, template = draw(st.sampled_from(endpoints))
    path = template
    while "{" in path:
        name = path[path.index("{") + 1 : path.index("}")]
        known = st.sampled_from(["1", "orders", "seal", "m_1"])
        value = draw(st.one_of(TEXT, NUMBERS, WEIRD_DIGITS, known))
        path = path.replace("{" + name + "}", quote(value, safe="") or "x", 1)
    query = draw(QUERY)
    if query:
        path += "?" + urlencode(query)
    bearer = draw(st.one_of(st.sampled_from([token("m_1"), token("m_2"), ADMIN]),
                            TEXT.map(lambda t: "mt_" + t)))  # fmt: skip
    headers = {b"authorization": b"Bearer " + bearer.encode("utf-8")}
    body = b""
    if method != "GET":
        body = draw(st.one_of(
            st.binary(max_size=64),
            st.dictionaries(TEXT, st.one_of(TEXT, st.integers(), st.none(), st.booleans()),
                            max_size=4).map(lambda d: repr(d).replace("'", '"').encode()),
            st.sampled_from([b'{"merchant_id": "m_9", "ttl_seconds": 60}',
                             b'{"timezone": "Asia/Kolkata"}', b'{"timezone": "Mars/Olympus"}',
                             b'{"merchant_id": 5}', b"[]", b"null"]),
        ))  # fmt: skip
    return method, path, headers, body


async def send(
    api: QueryApi,
    method: str,
    path: str,
    headers: Mapping[str, str] | Mapping[bytes, bytes],
    body: bytes,
) -> int:
    transport = httpx.ASGITransport(app=api.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        answer = await client.request(method, path, headers=headers, content=body)
        return answer.status_code


def test_every_endpoint_under_arbitrary_parameters(served) -> None:
    api, operator = served
    endpoints = routes(api)
    assert len(endpoints) > 15  # every merchant and admin route, the pages and static files
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seen: set[int] = set()

    @settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
    @given(request=requests(endpoints))
    def check(request: tuple[str, str, dict[bytes, bytes], bytes]) -> None:
        method, path, headers, body = request
        began = time.perf_counter()
        status = asyncio.run(send(api, method, path, headers, body))
        elapsed = time.perf_counter() - began
        seen.add(status)
        assert status < 500, (method, path, status)
        assert elapsed < 1.0, (method, path, elapsed)

    check()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 300, f"peak memory grew by {grown_mb:.0f} MB"
    assert {200, 400, 401} <= seen  # the requests reached the handlers
    del operator


@pytest.mark.parametrize(
    "path",
    [
        "/v1/metrics/orders?granularity=15m&from=2026-11-23&to=2026-11-26&group_by=channel",
        "/v1/overview?from=2013-06-01&to=2026-11-26",  # 4,926 days
        "/v1/metrics/gross_revenue?granularity=month&from=1980-01-01&to=2199-12-01&tz=Asia/Kathmandu",
    ],
)
def test_the_largest_allowed_requests_answer_in_time(served, path: str) -> None:
    api, _ = served
    began = time.perf_counter()
    status = asyncio.run(send(api, "GET", path, {"authorization": f"Bearer {token('m_1')}"}, b""))
    assert status == 200
    assert time.perf_counter() - began < 1.0
