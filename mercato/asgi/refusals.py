"""What a server answers on its own, before or instead of the app: a connection or request
refused for a limit. The body is JSON like the apps' errors, and the connection is closed."""

from __future__ import annotations

import http
from dataclasses import dataclass
from typing import Literal

import msgspec

Reason = Literal[
    "max_connections",
    "max_requests_in_flight",
    "headers_too_large",
    "too_many_headers",
    "header_timeout",
    "bad_request",
]


@dataclass(frozen=True, slots=True)
class Refusal:
    """One refusal: its status and error, and the reason it is counted under."""

    status: int
    code: str
    message: str
    reason: Reason
    retry_after: int | None = None

    def body(self) -> bytes:
        return msgspec.json.encode({"error": {"code": self.code, "message": self.message}})

    def headers(self) -> list[tuple[bytes, bytes]]:
        body = self.body()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if self.retry_after is not None:
            headers.append((b"retry-after", b"%d" % self.retry_after))
        return headers

    def response(self, *, keep_alive: bool = False) -> bytes:
        """The whole HTTP/1.1 response; ``connection: close`` unless ``keep_alive``."""
        status = f"HTTP/1.1 {self.status} {http.HTTPStatus(self.status).phrase}\r\n".encode()
        headers = self.headers() if keep_alive else [*self.headers(), (b"connection", b"close")]
        return status + b"".join(b"%s: %s\r\n" % h for h in headers) + b"\r\n" + self.body()


def over_connections(limit: int, retry_after: int) -> Refusal:
    return Refusal(
        503,
        "too_many_connections",
        f"the server has its limit of {limit} connections open; retry later",
        "max_connections",
        retry_after,
    )


def over_requests_in_flight(limit: int, retry_after: int) -> Refusal:
    return Refusal(
        503,
        "too_many_requests_in_flight",
        f"the server is working on its limit of {limit} requests; retry later",
        "max_requests_in_flight",
        retry_after,
    )


def headers_too_large(limit: int) -> Refusal:
    return Refusal(
        431,
        "headers_too_large",
        f"the request line and headers are over the limit of {limit} bytes",
        "headers_too_large",
    )


def too_many_headers(limit: int) -> Refusal:
    return Refusal(
        431,
        "too_many_headers",
        f"the request has more than {limit} headers",
        "too_many_headers",
    )


def header_timeout(seconds: float) -> Refusal:
    return Refusal(
        408,
        "header_timeout",
        f"the request line and headers did not arrive within {seconds:g} s",
        "header_timeout",
    )


def bad_request() -> Refusal:
    return Refusal(400, "bad_request", "the request is not valid HTTP/1.1", "bad_request")
