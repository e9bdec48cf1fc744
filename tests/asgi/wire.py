"""HTTP/1.1 over a raw socket, for tests that must send what a well-behaved client never
would (huge, endless or trickled headers) and read exactly what comes back."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import msgspec


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def error_code(self) -> str:
        return str(msgspec.json.decode(self.body)["error"]["code"])


def connect(port: int, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def get(path: str, extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + extra + b"\r\n"


def read_response(sock: socket.socket) -> Response:
    """One response (its body by Content-Length); raises on a timeout or an early close."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    while len(body) < int(headers.get("content-length", "0")):
        body += _recv(sock)
    return Response(int(lines[0].split()[1]), headers, body)


def read_until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection; raises on the socket's timeout."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def exchange(port: int, request: bytes) -> Response:
    with connect(port) as sock:
        sock.sendall(request)
        return read_response(sock)


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the server closed the connection before answering")
    return chunk
