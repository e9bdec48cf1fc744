"""The bounds every Mercato HTTP server holds its clients to, and the hook that counts refusals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mercato.asgi.refusals import Reason

OnRefusal = Callable[[Reason], None]


class ServerSettings(Protocol):
    """The keys of a config section (``[collector]``, ``[api]``) that bound its server."""

    @property
    def max_connections(self) -> int: ...
    @property
    def max_requests_in_flight(self) -> int: ...
    @property
    def max_queue_seconds(self) -> float: ...
    @property
    def max_header_bytes(self) -> int: ...
    @property
    def max_headers(self) -> int: ...
    @property
    def header_timeout_seconds(self) -> float: ...


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """A connection accepted with ``max_connections`` open is answered 503 with Retry-After
    and closed. At most ``max_requests_in_flight`` requests run at once; the others wait, and
    one that has waited ``max_queue_seconds`` is answered 503 with Retry-After. A request whose
    line and headers are over ``max_header_bytes``, or that has more than ``max_headers``
    headers, is answered 431; one whose line and headers have not all arrived
    ``header_timeout_seconds`` after its first byte is answered 408 (a connection that sends
    nothing that long is closed). Both close the connection. A request asks for its slot once
    its body has arrived (up to ``buffered_body_bytes``), so a slow sender holds none."""

    max_connections: int = 1000
    max_requests_in_flight: int = 64
    max_queue_seconds: float = 0.5
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout_seconds: float = 10.0
    retry_after_seconds: int = 1
    # A request's body is read whole before it asks for a slot, up to this many bytes; a
    # longer one is handed to the app as it arrives (the app refuses it).
    buffered_body_bytes: int = 1024 * 1024

    @classmethod
    def of(
        cls,
        settings: ServerSettings,
        *,
        retry_after_seconds: int = 1,
        buffered_body_bytes: int = 1024 * 1024,
    ) -> ServerLimits:
        return cls(
            max_connections=settings.max_connections,
            max_requests_in_flight=settings.max_requests_in_flight,
            max_queue_seconds=settings.max_queue_seconds,
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout_seconds=settings.header_timeout_seconds,
            retry_after_seconds=retry_after_seconds,
            buffered_body_bytes=buffered_body_bytes,
        )


def ignore(reason: Reason) -> None:
    """The refusal hook of a server that does not count refusals."""
