"""Accepting connections: all that are waiting, each time the listening socket is ready, and
those past the connection limit answered 503 at once.

uvloop's own server accepts one connection per event-loop iteration. On a collector busy
decoding batches an iteration takes a few hundred milliseconds, so under load hundreds of
connections waited in the kernel's listen queue, unseen and unanswered, for minutes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
from collections.abc import Callable, Sized

from mercato.asgi import refusals
from mercato.asgi.limits import OnRefusal, ServerLimits
from mercato.asgi.protocol import LINGER_SECONDS

logger = logging.getLogger("mercato.asgi")

BACKLOG = 2048  # as uvicorn; the kernel caps it at net.core.somaxconn
ACCEPTS_PER_WAKEUP = 1000  # then other callbacks run before the rest are taken
OUT_OF_DESCRIPTORS_PAUSE_SECONDS = 1.0
DRAIN_BYTES = 256 * 1024
SPARE_DESCRIPTORS = 256  # for the log's segments, the store, and the like


def reserve_descriptors(max_connections: int) -> None:
    """Raise the soft limit on open files (up to the hard one, as Go's runtime does) so that
    ``max_connections`` connections fit, and as many refused ones lingering; warn when the
    hard limit is lower: past it, new connections wait unseen to be accepted."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * max_connections + SPARE_DESCRIPTORS
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        logger.warning(
            "open files are limited to %d, too few for max_connections = %d; raise the limit "
            "(ulimit -n) or lower max_connections",
            target,
            max_connections,
        )


def bind(host: str, port: int, backlog: int = BACKLOG) -> list[socket.socket]:
    """Listening sockets for ``host`` (every address it resolves to, as asyncio's
    ``create_server``; all interfaces for ``""``) and ``port``."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Acceptor:
    """Accepts on one listening socket and hands each connection to a new protocol, or, with
    ``max_connections`` open (``connections`` plus those being opened), answers it 503 with
    Retry-After without reading its request."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        connections: Sized,
        limits: ServerLimits,
        on_refusal: OnRefusal,
    ) -> None:
        self._sock = sock
        self._factory = protocol_factory
        self._connections = connections
        self._limits = limits
        self._on_refusal = on_refusal
        self._refusal = refusals.over_connections(
            limits.max_connections, limits.retry_after_seconds
        ).response()
        self._opening: set[asyncio.Task[object]] = set()
        self._lingering: dict[int, tuple[socket.socket, asyncio.TimerHandle]] = {}
        self._loop = asyncio.get_running_loop()

    def start(self) -> None:
        if self._sock.fileno() != -1:  # not closed while accepting was paused
            self._loop.add_reader(self._sock.fileno(), self._accept_waiting)

    def close(self) -> None:
        """Stop accepting; connections already handed on stay open."""
        if self._sock.fileno() != -1:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        for fd in list(self._lingering):
            self._end_linger(fd)

    def _accept_waiting(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                # Out of descriptors or memory: connections wait in the kernel until some close.
                logger.error("cannot accept connections: %s", exc)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(OUT_OF_DESCRIPTORS_PAUSE_SECONDS, self.start)
                return
            if len(self._connections) + len(self._opening) >= self._limits.max_connections:
                self._refuse(conn)
            else:
                self._open(conn)

    def _open(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task: asyncio.Task[object] = self._loop.create_task(
            self._loop.connect_accepted_socket(self._factory, conn)
        )
        self._opening.add(task)
        task.add_done_callback(lambda done: self._opened(conn, done))

    def _opened(self, conn: socket.socket, task: asyncio.Task[object]) -> None:
        self._opening.discard(task)
        if task.cancelled() or task.exception() is not None:
            conn.close()

    def _refuse(self, conn: socket.socket) -> None:
        """Answer 503, half-close, and read (and drop) what the client sends until it closes
        or the linger ends: closing with its request unread would reset the connection and
        could lose the answer."""
        self._on_refusal("max_connections")
        try:
            conn.setblocking(False)
            _drain(conn)
            conn.send(self._refusal)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
            return
        if len(self._lingering) >= self._limits.max_connections:
            conn.close()
            return
        fd = conn.fileno()
        self._lingering[fd] = (conn, self._loop.call_later(LINGER_SECONDS, self._end_linger, fd))
        self._loop.add_reader(fd, self._linger, fd)

    def _linger(self, fd: int) -> None:
        conn = self._lingering[fd][0]
        try:
            if _drain(conn):
                return
        except OSError:
            pass
        self._end_linger(fd)

    def _end_linger(self, fd: int) -> None:
        conn, timer = self._lingering.pop(fd)
        timer.cancel()
        self._loop.remove_reader(fd)
        conn.close()


def _drain(conn: socket.socket) -> bool:
    """Read and drop what has arrived; False once the client has closed."""
    for _ in range(DRAIN_BYTES // 65536):
        try:
            if not conn.recv(65536):
                return False
        except BlockingIOError:
            return True
    return True
