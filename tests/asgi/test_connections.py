"""Connections past ``max_connections`` are answered 503 with Retry-After as they are
accepted, and closed; the server goes on serving the ones it has."""

from __future__ import annotations

import socket
import time

import pytest

from tests.asgi import wire
from tests.asgi.conftest import StartServer

pytestmark = pytest.mark.slow


def hold(port: int) -> socket.socket:
    """A connection answered 200 and kept open (keep-alive). The connections of the server's
    start-up checks may take a moment to be closed: until then this one is refused."""
    deadline = time.monotonic() + 5
    while True:
        sock = wire.connect(port)
        sock.sendall(wire.get("/livez"))
        if wire.read_response(sock).status == 200:
            return sock
        sock.close()
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_connection_past_the_limit_is_503_at_once(start_server: StartServer):
    server = start_server(max_connections="3")
    held: list[socket.socket] = []
    try:
        held.extend(hold(server.port) for _ in range(3))
        with wire.connect(server.port) as extra:
            started = time.monotonic()
            extra.sendall(wire.get("/livez"))
            response = wire.read_response(extra)
            assert time.monotonic() - started < 2
            assert (response.status, response.error_code()) == (503, "too_many_connections")
            assert response.headers["retry-after"] == "1"
            wire.read_until_closed(extra)
        for sock in held:  # the connections it has are still served
            sock.sendall(wire.get("/livez"))
            assert wire.read_response(sock).status == 200
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while server.livez() != 200:  # once the held ones are closed, there is room again
        assert time.monotonic() < deadline
        time.sleep(0.05)
    if server.role == "collector":
        metrics = wire.exchange(server.port, wire.get("/metrics")).body.decode()
        counted = 'mercato_ingest_refused_total{reason="max_connections"} '
        assert float(metrics.split(counted)[1].split()[0]) >= 1
