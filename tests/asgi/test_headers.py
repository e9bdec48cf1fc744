"""A request's line and headers are bounded in bytes, in count and in time, on every server:
past a bound the answer is 431 or 408 at once, the connection is closed, and the server goes
on serving others."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.asgi import wire
from tests.asgi.conftest import StartServer

pytestmark = pytest.mark.slow

MB = 1024 * 1024
DEFAULT_MAX_HEADER_BYTES = 32 * 1024


def stream(sock: socket.socket, head: bytes, size: int) -> None:
    """Send ``head`` then ``size`` bytes of one endless header value, without waiting; the
    server may close the connection part way."""
    chunk = b"a" * MB
    try:
        sock.sendall(head)
        for _ in range(size // MB):
            sock.sendall(chunk)
    except OSError:
        pass


def test_a_huge_header_is_431_at_once_and_costs_no_memory(start_server: StartServer):
    server = start_server()
    assert server.livez() == 200
    before = server.rss_kb()
    with wire.connect(server.port) as sock:
        sender = threading.Thread(
            target=stream, args=(sock, b"GET /livez HTTP/1.1\r\nX-Huge: ", 64 * MB)
        )
        started = time.monotonic()
        sender.start()
        response = wire.read_response(sock)
        answered = time.monotonic() - started
        sender.join(timeout=60)
    assert (response.status, response.error_code()) == (431, "headers_too_large")
    assert response.headers["connection"] == "close"
    assert answered < 5, f"431 after {answered:.1f} s"
    grown = server.rss_kb() - before
    assert grown < 4 * 1024, f"the server grew by {grown} kB"
    assert server.livez() == 200


def test_the_byte_limit_is_exact(start_server: StartServer):
    server = start_server()

    def head_of(size: int) -> bytes:
        start = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Pad: "
        return start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"

    assert len(head_of(DEFAULT_MAX_HEADER_BYTES)) == DEFAULT_MAX_HEADER_BYTES
    assert wire.exchange(server.port, head_of(DEFAULT_MAX_HEADER_BYTES)).status == 200
    response = wire.exchange(server.port, head_of(DEFAULT_MAX_HEADER_BYTES + 1))
    assert (response.status, response.error_code()) == (431, "headers_too_large")


def test_a_long_request_line_counts_too(start_server: StartServer):
    server = start_server(max_header_bytes="4096")
    response = wire.exchange(server.port, wire.get("/livez?" + "q" * 5000))
    assert (response.status, response.error_code()) == (431, "headers_too_large")
    assert server.livez() == 200


def test_too_many_headers_is_431(start_server: StartServer):
    server = start_server()

    def headers(count: int) -> bytes:  # Host and count - 1 more
        return b"".join(b"X-H%d: v\r\n" % i for i in range(count - 1))

    assert wire.exchange(server.port, wire.get("/livez", headers(100))).status == 200
    response = wire.exchange(server.port, wire.get("/livez", headers(101)))
    assert (response.status, response.error_code()) == (431, "too_many_headers")
    assert server.livez() == 200


def test_a_trickled_header_is_cut_off_after_the_timeout(start_server: StartServer):
    server = start_server(header_timeout_seconds="1")
    stop = threading.Event()

    def trickle(sock: socket.socket) -> None:
        try:
            while not stop.wait(0.2):
                sock.sendall(b"X-Slow: v\r\n")
        except OSError:
            pass

    with wire.connect(server.port) as sock:
        # a first request on the connection is answered; the clock runs from the next one's
        # first byte, not from the connection's start
        sock.sendall(wire.get("/livez"))
        assert wire.read_response(sock).status == 200
        time.sleep(0.5)
        started = time.monotonic()
        sock.sendall(b"GET /livez HTTP/1.1\r\n")
        trickler = threading.Thread(target=trickle, args=(sock,))
        trickler.start()
        try:
            response = wire.read_response(sock)
        finally:
            stop.set()
            trickler.join()
        waited = time.monotonic() - started
        assert (response.status, response.error_code()) == (408, "header_timeout")
        assert 0.9 < waited < 4, f"408 after {waited:.1f} s"
        wire.read_until_closed(sock)

    with wire.connect(server.port) as silent:  # sends nothing at all: closed, no answer
        started = time.monotonic()
        assert wire.read_until_closed(silent) == b""
        assert 0.9 < time.monotonic() - started < 4

    assert server.livez() == 200


def test_what_is_not_http_is_400_in_json(start_server: StartServer):
    server = start_server()
    with wire.connect(server.port) as sock:
        sock.sendall(b"HELLO THERE\r\n\r\n")
        response = wire.read_response(sock)
        assert (response.status, response.error_code()) == (400, "bad_request")
        wire.read_until_closed(sock)
    assert server.livez() == 200
