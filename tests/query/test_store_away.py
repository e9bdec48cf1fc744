"""A query API whose database is away answers 503 with Retry-After, not a 500."""

from __future__ import annotations

import msgspec

from mercato.config import ApiConfig
from mercato.metrics.definitions import load_definitions
from mercato.query.app import QueryApi
from mercato.query.tokens import TokenSigner
from mercato.store.errors import StoreUnavailableError
from mercato.store.sqlite import SqliteStore
from tests.inprocess import call


class AwayStore(SqliteStore):
    def serving_version(self) -> int | None:
        raise StoreUnavailableError("PostgreSQL store: connection refused")


def test_a_store_that_is_away_is_503_with_retry_after() -> None:
    signer = TokenSigner("secret")
    api = QueryApi(ApiConfig(), AwayStore.temporary(), load_definitions(), signer, "admin")
    token = signer.issue("m_1", 60)[0]
    answer = call(
        api.app, "GET", "/v1/metrics/orders", headers={"authorization": f"Bearer {token}"}
    )
    assert answer.status == 503
    assert answer.headers["retry-after"] == "1"
    error = msgspec.json.decode(answer.body)["error"]
    assert error["code"] == "store_unavailable"
    assert "connection refused" in error["message"]
