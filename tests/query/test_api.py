"""The query API as users run it: `mercato run api` in its own process, real HTTP."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mercato.config import StoreConfig
from mercato.demo.runner import free_port
from mercato.events.model import NormalizedEvent, encode_event
from mercato.metrics.batch import BatchBuilder
from mercato.metrics.definitions import load_definitions
from mercato.metrics.kernel import rollup
from mercato.query.tokens import TokenSigner
from mercato.store.sqlite import SqliteStore
from mercato.store.versions import register

pytestmark = pytest.mark.slow

SECRET = "test-secret"
ADMIN = "test-admin-token"
DAY0 = datetime(2026, 11, 20, tzinfo=UTC)


class Api:
    def __init__(self, port: int) -> None:
        self.port = port

    def get(self, path: str, token: str | None = None) -> tuple[int, dict[str, str], Any]:
        return self.call("GET", path, token)

    def call(
        self, method: str, path: str, token: str | None = None, body: object = None
    ) -> tuple[int, dict[str, str], Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            payload = msgspec.json.encode(body) if body is not None else None
            connection.request(method, path, payload, headers)
            response = connection.getresponse()
            data = response.read()
            return response.status, dict(response.getheaders()), msgspec.json.decode(data)
        finally:
            connection.close()


def fill(data: Path) -> None:
    definitions = load_definitions()
    events = [
        NormalizedEvent(
            event_id=f"e{i}",
            merchant_id="m_1" if i % 2 else "m_2",
            type="order_completed",
            event_time=DAY0 + timedelta(hours=i),
            received_at=DAY0 + timedelta(hours=i),
            properties={"amount": 1000 if i % 2 else 7, "channel": "web" if i % 3 else "pos"},
        )
        for i in range(96)  # 4 days, 48 orders each
    ]
    with SqliteStore(data / "store.sqlite3", StoreConfig()) as store:
        version = register(store, definitions)
        store.set_serving_version(version)
        table = BatchBuilder(definitions).batch([encode_event(e) for e in events])
        store.write(version, "test", rollup(table, definitions), {})


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    data = tmp_path_factory.mktemp("api")
    fill(data)
    port = free_port()
    env = {
        **os.environ,
        "MERCATO_DATA_DIR": str(data),
        "MERCATO_API_PORT": str(port),
        "MERCATO_API_SECRET": SECRET,
        "MERCATO_API_ADMIN_TOKEN": ADMIN,
        "MERCATO_API_RATE_LIMIT_PER_SECOND": "5",
        "MERCATO_API_RATE_LIMIT_BURST": "200",
    }
    with open(data / "api.out", "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mercato", "run", "api"], env=env, stdout=out, stderr=out
        )
    client = Api(port)
    deadline = time.monotonic() + 30
    while True:
        try:
            if client.get("/livez")[0] == 200:
                break
        except OSError:
            assert time.monotonic() < deadline, (data / "api.out").read_text()
            time.sleep(0.1)
    yield client
    process.terminate()
    assert process.wait(timeout=30) == 0


def token(merchant: str, ttl: int = 3600) -> str:
    return TokenSigner(SECRET).issue(merchant, ttl)[0]


RANGE = "from=2026-11-20&to=2026-11-24"


def test_daily_series_per_merchant(api):
    status, _, body = api.get(f"/v1/metrics/orders?{RANGE}", token("m_1"))
    assert status == 200, body
    assert body["series"] == [
        {"member": None, "values": [12, 12, 12, 12], "provisional": [True] * 4}
    ]
    assert body["complete_through"] is None
    _, _, revenue = api.get(f"/v1/metrics/gross_revenue?{RANGE}", token("m_2"))
    assert revenue["series"][0]["values"] == [84, 84, 84, 84]


def test_time_zone_shifts_the_days(api):
    _, _, body = api.get(f"/v1/metrics/orders?{RANGE}&tz=Asia/Kathmandu", token("m_1"))
    assert body["periods"][0] == "2026-11-20T00:00:00+05:45"
    # the first local day starts 18:15 UTC the day before: no orders before 00:00 UTC
    assert body["series"][0]["values"][0] == 9  # odd hours 1,3,...,17 (UTC) before 18:15
    assert sum(body["series"][0]["values"]) == 12 * 4 - 3  # the last 3 fall on 24 Nov


def test_group_by_compare_and_overview(api):
    _, _, body = api.get(
        f"/v1/metrics/orders?{RANGE}&group_by=channel&compare=previous_period", token("m_1")
    )
    members = {s["member"] for s in body["series"]}
    assert members == {"web", "pos"}
    assert body["compare"]["kind"] == "previous_period"
    assert body["compare"]["periods"][0] == "2026-11-16T00:00:00+00:00"
    _, _, overview = api.get(f"/v1/overview?{RANGE}", token("m_1"))
    kpis = {k["metric"]: k for k in overview["kpis"]}
    assert kpis["orders"]["value"] == 48
    assert kpis["average_order_value"]["value"] == 1000


def test_catalogue_and_docs(api):
    status, _, body = api.get("/v1/metrics", token("m_1"))
    assert status == 200
    assert "api_latency" in {m["name"] for m in body["metrics"]}
    status, _, spec = api.get("/openapi.json")
    assert status == 200
    assert "/v1/metrics/{name}" in spec["paths"]


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("/v1/metrics/orders?granularity=year", "granularity"),
        ("/v1/metrics/orders?tz=Mars/Olympus", "tz"),
        ("/v1/metrics/orders?from=yesterday", "from"),
        ("/v1/metrics/orders?from=2026-11-24&to=2026-11-20", "from"),
        ("/v1/metrics/orders?group_by=color", "group_by"),
        ("/v1/metrics/orders?compare=tomorrow", "compare"),
        ("/v1/metrics/orders?granularity=15m&from=2020-01-01", "periods"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(api, path, named):
    status, _, body = api.get(path, token("m_1"))
    assert status == 400
    assert named in body["error"]["message"]


def test_tokens_are_required_and_checked(api):
    assert api.get("/v1/metrics/orders")[0] == 401
    assert api.get("/v1/metrics/orders", "mt_forged.sig")[0] == 401
    assert api.get("/v1/metrics/orders", TokenSigner("other").issue("m_1", 60)[0])[0] == 401
    expired = TokenSigner(SECRET, clock=lambda: time.time() - 7200).issue("m_1", 60)[0]
    assert api.get("/v1/metrics/orders", expired)[0] == 401


def test_a_merchant_never_sees_another_merchants_data(api):
    own = api.get(f"/v1/metrics/gross_revenue?{RANGE}", token("m_2"))[2]
    assert sum(own["series"][0]["values"]) == 48 * 7
    for path in (
        f"/v1/metrics/gross_revenue?{RANGE}",
        f"/v1/metrics/orders?{RANGE}&group_by=channel",
        f"/v1/overview?{RANGE}",
        f"/v1/metrics/gross_revenue?{RANGE}&merchant_id=m_1",  # parameters cannot widen scope
    ):
        status, _, body = api.get(path, token("m_nobody"))
        assert status == 200
        assert "1000" not in msgspec.json.encode(body).decode()
    foreign = api.get("/v1/metrics/m_1", token("m_2"))  # ids as names answer like unknown ones
    unknown = api.get("/v1/metrics/nope", token("m_2"))
    assert foreign[0] == unknown[0] == 404


def test_admin_endpoints(api):
    assert api.call("POST", "/v1/admin/tokens", token("m_1"), {"merchant_id": "m_1"})[0] == 403
    status, _, body = api.call("POST", "/v1/admin/tokens", ADMIN, {"merchant_id": "m_1"})
    assert status == 200
    assert api.get(f"/v1/metrics/orders?{RANGE}", body["token"])[0] == 200
    status, _, _ = api.call(
        "PUT", "/v1/admin/merchants/m_1/timezone", ADMIN, {"timezone": "Asia/Kolkata"}
    )
    assert status == 200
    _, _, series = api.get(f"/v1/metrics/orders?{RANGE}", token("m_1"))
    assert series["tz"] == "Asia/Kolkata"
    bad = api.call("PUT", "/v1/admin/merchants/m_1/timezone", ADMIN, {"timezone": "Nowhere"})
    assert bad[0] == 400


def test_rate_limit_is_429_with_retry_after(api):
    merchant_token = token("m_busy")
    statuses = [api.get("/v1/metrics", merchant_token)[:2] for _ in range(260)]
    limited = [headers for status, headers in statuses if status == 429]
    assert limited, "no request was limited"
    assert int(limited[0]["retry-after"]) >= 1
