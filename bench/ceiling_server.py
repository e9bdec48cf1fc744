"""The ceiling for the collector benchmark: a bare ASGI endpoint served by the same uvicorn
setup, which decodes the body with msgspec (the same event struct) and appends it to a file
without fsync. No auth, no normalization, no partitioning, no durability."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

import msgspec
import uvicorn

from mercato.events.native import NativeEvent

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

decoder = msgspec.json.Decoder(list[NativeEvent])


def make_app(path: str) -> ASGIApp:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if scope["path"] == "/readyz":
            count = 0
        else:
            count = len(decoder.decode(body))
            os.write(fd, body)
        payload = msgspec.json.encode({"accepted": count})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", required=True)
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.file),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
