"""Drive an ASGI app in-process, through httpx's ASGI transport: for tests of an app's logic.

No server and no socket: the request goes straight into the app's ``__call__``. Tests that need
a real server start one in a separate process instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import msgspec


class Response(msgspec.Struct):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


def call(
    app: Any, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> Response:
    """Send one request through ``app`` and collect its response."""
    return asyncio.run(_call(app, method, path, body, headers or {}))


async def _call(app: Any, method: str, path: str, body: bytes, headers: dict[str, str]) -> Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        answer = await client.request(method, path, content=body, headers=headers)
    return Response(answer.status_code, dict(answer.headers), answer.content)
