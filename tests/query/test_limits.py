"""Hostile parameters get a clear 4xx at once, and one slow request holds no other.

Each case here once answered 500, or worked for seconds to minutes (and gigabytes) before its
400, on the thread that serves every merchant.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from mercato.config import Config, load_config
from mercato.metrics.definitions import load_definitions
from mercato.metrics.kernel import PARTIAL_SCHEMA
from mercato.query.server import LogOpener, build
from mercato.query.tokens import TokenSigner
from mercato.store.sqlite import SqliteStore
from tests.serving import ADMIN, SECRET, ApiProcess, token

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)


def settings(data: Path, **extra: str) -> Config:
    return load_config(
        env={
            "MERCATO_DATA_DIR": str(data),
            "MERCATO_API_SECRET": SECRET,
            "MERCATO_API_ADMIN_TOKEN": ADMIN,
            "MERCATO_API_RATE_LIMIT_BURST": "100000",
            **extra,
        }
    )


class InProcess:
    """The API app (operator endpoints included) on a real SQLite store, called in-process."""

    def __init__(self, data: Path) -> None:
        config = settings(data)
        self.store = SqliteStore(config.store_path, config.store)
        definitions = load_definitions()
        version = self.store.register_version(definitions.version, definitions.text)
        self.store.set_serving_version(version)
        self.api, _ = build(config, self.store, LogOpener(config))

    def get(self, path: str, headers: dict[str, Any] | None = None) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.api.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                return await client.get(path, headers=headers)

        return asyncio.run(send())

    def close(self) -> None:
        self.api.offload.close()
        self.store.close()


@pytest.fixture
def api(tmp_path: Path):
    served = InProcess(tmp_path)
    yield served
    served.close()


MERCHANT = {"Authorization": f"Bearer {token('m_1')}"}
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}

HOSTILE = [
    # every period boundary of 8,000 years was built before the point limit was checked
    "/v1/metrics/gross_revenue?from=0001-01-01&to=9999-12-31&granularity=day",
    "/v1/metrics/gross_revenue?from=0001-01-01&to=9999-12-31&granularity=hour",
    "/v1/metrics/gross_revenue?from=0001-01-01&to=9999-12-31&granularity=15m",
    "/v1/metrics/gross_revenue?from=2020-01-01&to=2199-12-31&granularity=15m",
    # local mean time (+5:53:20, +0:19:32) never falls on a quarter hour: searched backwards
    "/v1/metrics/orders?granularity=hour&tz=Asia/Kolkata&from=1900-01-01&to=1900-01-02",
    "/v1/metrics/orders?granularity=hour&tz=Europe/Amsterdam&from=1930-01-01&to=1930-01-02",
    "/v1/metrics/orders?top=%C2%B2&group_by=channel",  # "²": isdigit() but not int()
    "/v1/metrics/orders?from=0001-01-01&to=2026-01-01&compare=previous_period",
    "/v1/metrics/orders?from=0001-01-01&to=2026-01-01&compare=previous_year",
    "/v1/metrics/orders?from=1980-01-01&to=1981-01-01&compare=previous_year",
    "/v1/overview?from=0001-01-01",
    "/v1/overview?from=0001-01-01T00:00:00%2B14:00&to=2026-01-01",
    "/v1/metrics/orders?from=9999-12-01&to=9999-12-31&granularity=hour",
    "/v1/metrics/orders?from=9999-01-01&to=9999-12-31&granularity=week",
    "/v1/metrics/orders?from=9999-01-01&to=9999-12-31&granularity=month",
    "/v1/metrics/orders?from=9999-12-31T23:00:00-14:00&to=9999-12-31T23:30:00-14:00",
]


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_ranges_are_a_prompt_400(api: InProcess, path: str) -> None:
    began = time.perf_counter()
    answer = api.get(path, MERCHANT)
    elapsed = time.perf_counter() - began
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] in {
        "invalid_parameter",
        "out_of_range",
        "too_many_points",
    }
    assert elapsed < 1.0


def test_the_longest_range_of_a_granularity_is_answered(api: InProcess) -> None:
    # 5,000 periods are allowed: the limit is not off by one, and a range near it is cheap
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(minutes=15 * 5000)
    answer = api.get(
        f"/v1/metrics/orders?from={start.isoformat()}&to={end.isoformat()}&granularity=15m"
        "&tz=UTC".replace("+", "%2B"),
        MERCHANT,
    )
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["periods"]) == 5000
    over = end + timedelta(minutes=15)
    answer = api.get(
        f"/v1/metrics/orders?from={start.isoformat()}&to={over.isoformat()}&granularity=15m"
        "&tz=UTC".replace("+", "%2B"),
        MERCHANT,
    )
    assert answer.status_code == 400
    assert "5000" in answer.json()["error"]["message"]


def test_an_overview_from_the_earliest_day_has_no_previous_period(api: InProcess) -> None:
    answer = api.get("/v1/overview?from=1980-01-01&to=1980-02-01&tz=UTC", MERCHANT)
    assert answer.status_code == 200, answer.text
    assert all(kpi["previous"] is None for kpi in answer.json()["kpis"])


@pytest.mark.parametrize(
    "header",
    [
        "Bearer mt_\u00e9\u00e9.x",  # non-ASCII: hmac.compare_digest raised TypeError
        "Bearer \u00ff" * 3,
        "bearer \u00e9",
    ],
)
@pytest.mark.parametrize("path", ["/v1/metrics", "/v1/admin/jobs"])
def test_a_token_of_other_bytes_is_a_401_or_403(api: InProcess, header: str, path: str) -> None:
    answer = api.get(path, {"Authorization": header.encode("latin-1")})
    assert answer.status_code in (401, 403), answer.text


@pytest.mark.parametrize(
    "path",
    [
        "/v1/admin/jobs?limit=%C2%B2",
        "/v1/admin/archive?days=%C2%B2",
        "/v1/admin/versions/%C2%B2/diff",
        "/v1/admin/versions/1/diff?limit=%C2%B2",
        "/v1/admin/versions/1/diff?against=99999999999999999999999",
        "/v1/admin/versions/1/diff?from=0001-01-01&to=9999-12-31",
    ],
)
def test_admin_parameters_are_a_400(api: InProcess, path: str) -> None:
    answer = api.get(path, ADMIN_HEADERS)
    assert answer.status_code == 400, answer.text


# -- one slow request holds no other --------------------------------------------------------


def busy_merchant(store: SqliteStore, version: int, merchant: str) -> None:
    """A merchant with 200 members in every 15-minute bucket of 50 days: a grouped series
    of it folds a million rows."""
    buckets = range(int(NOW.timestamp()) - 50 * 86_400, int(NOW.timestamp()), 900)
    rows = [(b, f"member-{m:03d}") for b in buckets for m in range(200)]
    table = pa.table(
        {
            "merchant_id": [merchant] * len(rows),
            "metric": ["orders"] * len(rows),
            "dimension": ["channel"] * len(rows),
            "member": [m for _, m in rows],
            "bucket": [b for b, _ in rows],
            "count": [1] * len(rows),
            "sum": pa.nulls(len(rows), pa.int64()),
            "min": pa.nulls(len(rows), pa.int64()),
            "max": pa.nulls(len(rows), pa.int64()),
            "sketch": pa.nulls(len(rows), pa.binary()),
            "invalid": [0] * len(rows),
        },
        schema=PARTIAL_SCHEMA,
    )
    store.write(version, "test", table, {})


@pytest.mark.slow
def test_a_slow_request_does_not_hold_other_merchants(tmp_path: Path) -> None:
    config = settings(tmp_path)
    definitions = load_definitions()
    with SqliteStore(config.store_path, config.store) as store:
        version = store.register_version(definitions.version, definitions.text)
        store.set_serving_version(version)
        busy_merchant(store, version, "m_big")
    server = ApiProcess(tmp_path, {"MERCATO_API_RATE_LIMIT_BURST": "1000"})
    try:
        heavy = (
            "/v1/metrics/orders?granularity=hour&group_by=channel&top=100"
            f"&from={(NOW - timedelta(days=50)).date()}&to={NOW.date()}&tz=UTC"
        )
        light = "/v1/metrics/orders?from=2026-11-01&to=2026-11-02&tz=UTC"
        big, small = TokenSigner(SECRET).issue("m_big", 600)[0], token("m_small")
        began = time.perf_counter()
        status, _ = server.get(heavy, big)
        alone = time.perf_counter() - began
        assert status == 200
        assert alone > 0.5, f"the heavy request took only {alone:.2f} s: not heavy enough"

        finished: list[float] = []
        thread = threading.Thread(target=lambda: finished.append(_timed(server, heavy, big)))
        thread.start()
        time.sleep(alone / 5)  # the heavy one is folding now
        waited: list[float] = []
        while thread.is_alive() and len(waited) < 20:
            waited.append(_timed(server, light, small))
        thread.join()
        assert waited, "the heavy request ended before a light one was sent"
        # on the event loop, each light request waited for the heavy one to finish
        assert max(waited) < alone / 2, (waited, alone)
    finally:
        server.stop()


def _timed(server: ApiProcess, path: str, bearer: str) -> float:
    began = time.perf_counter()
    status, body = server.get(path, bearer)
    assert status == 200, body
    return time.perf_counter() - began


def test_an_admin_body_is_bounded(api: InProcess) -> None:
    async def post(body: bytes) -> httpx.Response:
        transport = httpx.ASGITransport(app=api.api.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.post("/v1/admin/tokens", content=body, headers=ADMIN_HEADERS)

    huge = b'{"merchant_id": "' + b"m" * (1 << 20) + b'"}'
    assert asyncio.run(post(huge)).status_code == 413
    assert asyncio.run(post(b'{"merchant_id": "m_1"}')).status_code == 200
