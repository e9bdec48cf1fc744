"""The collector under more load than it can take, as users run it (`mercato run collector`,
real HTTP): it sheds early and visibly, a fresh connection is answered within a bounded
time, and nothing it acknowledged is lost."""

from __future__ import annotations

import base64
import itertools
import selectors
import socket
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from mercato.config import load_config
from mercato.events.model import decode_event
from mercato.log import open_log
from mercato.log.base import LogReader
from tests.asgi import wire
from tests.conftest import CollectorProcess

pytestmark = pytest.mark.slow

CLIENTS = 4
CONNECTIONS_PER_CLIENT = 100
EVENTS_PER_REQUEST = 500
TAG = b"T" * 16  # replaced by a request's own tag, so every event id is unique
tags = itertools.count(1)


def batch_template(events: int) -> bytes:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return msgspec.json.encode(
        [
            {
                "event_id": f"{TAG.decode()}-{i:03d}",
                "type": "order_completed",
                "merchant_id": f"m_{i % 50}",
                "timestamp": now,
                "properties": {"amount": 1999, "currency": "EUR", "sku": f"sku-{i}"},
            }
            for i in range(events)
        ]
    )


def event_ids(tag: str, events: int) -> set[str]:
    return {f"{tag}-{i:03d}" for i in range(events)}


def post(collector: CollectorProcess, body: bytes) -> bytes:
    auth = base64.b64encode(f"{collector.secret}:".encode()).decode()
    head = (
        f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Connection:
    sock: socket.socket
    out: memoryview
    tag: str
    inbox: bytes = b""


@dataclass
class Tally:
    acknowledged: set[str] = field(default_factory=set)  # tags of requests answered 200
    statuses: dict[int, int] = field(default_factory=dict)
    shed_without_retry_after: int = 0


class Client(threading.Thread):
    """Keep-alive connections posting batches of new events, each connection sending its next
    batch the moment it is answered (after Retry-After if the answer has one, as SDKs do), and
    opening a new connection when the server closes one."""

    def __init__(self, collector: CollectorProcess, connections: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.collector = collector
        self.connections = connections
        self.stop = stop
        self.template = batch_template(EVENTS_PER_REQUEST)
        self.selector = selectors.DefaultSelector()
        self.resting: list[tuple[float, Connection]] = []
        self.tally = Tally()

    def run(self) -> None:
        for _ in range(self.connections):
            self.open()
        while not self.stop.is_set():
            now = time.monotonic()
            for due, connection in [r for r in self.resting if r[0] <= now]:
                self.resting.remove((due, connection))
                self.send_next(connection)
            for key, events in self.selector.select(0.05):
                try:
                    self.step(key.data, events)
                except OSError:
                    self.selector.unregister(key.fileobj)
                    key.data.sock.close()
                    self.open()
        for key in list(self.selector.get_map().values()):
            registered: Connection = key.data  # with its socket, in open()
            registered.sock.close()

    def open(self) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", self.collector.port))
        connection = Connection(sock, memoryview(b""), "")
        self.selector.register(sock, selectors.EVENT_READ, connection)
        self.send_next(connection)

    def send_next(self, connection: Connection) -> None:
        connection.tag = f"{next(tags):016x}"
        body = self.template.replace(TAG, connection.tag.encode())
        connection.out = memoryview(post(self.collector, body))
        events = selectors.EVENT_READ | selectors.EVENT_WRITE
        self.selector.modify(connection.sock, events, connection)

    def step(self, connection: Connection, events: int) -> None:
        if events & selectors.EVENT_WRITE and connection.out:
            try:
                connection.out = connection.out[connection.sock.send(connection.out) :]
            except BlockingIOError:
                return
            if not connection.out:
                self.selector.modify(connection.sock, selectors.EVENT_READ, connection)
        if events & selectors.EVENT_READ:
            chunk = connection.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError
            connection.inbox += chunk
            head, found, rest = connection.inbox.partition(b"\r\n\r\n")
            headers = head.lower().decode("latin-1")
            length = int(headers.split("content-length:")[1].split("\r\n")[0]) if found else 0
            if not found or len(rest) < length:
                return
            connection.inbox = rest[length:]
            status = int(headers.split()[1])
            self.tally.statuses[status] = self.tally.statuses.get(status, 0) + 1
            if status == 200:
                self.tally.acknowledged.add(connection.tag)
            elif "retry-after:" not in headers:
                self.tally.shed_without_retry_after += 1
            if "connection: close" in headers or connection.out:
                raise ConnectionResetError  # or answered before the body was all sent
            if status == 200:
                self.send_next(connection)
            else:
                self.selector.modify(connection.sock, selectors.EVENT_READ, connection)
                retry_after = int(headers.split("retry-after:")[1].split("\r\n")[0])
                self.resting.append((time.monotonic() + retry_after, connection))


def fresh_request(collector: CollectorProcess, tag: str) -> tuple[float, wire.Response]:
    """A new connection sending one event: how long until it is answered, and the answer."""
    started = time.monotonic()
    with wire.connect(collector.port, timeout=15) as sock:
        sock.sendall(post(collector, batch_template(1).replace(TAG, tag.encode())))
        response = wire.read_response(sock)
    return time.monotonic() - started, response


def scrape(collector: CollectorProcess) -> str:
    """The collector's /metrics, once the backlog of a load just stopped lets it answer (a
    scrape is a request like any other: a saturated collector may shed it with a 503)."""
    deadline = time.monotonic() + 30
    while True:
        response = wire.exchange(collector.port, wire.get("/metrics"))
        if response.status == 200 or time.monotonic() > deadline:
            assert response.status == 200, response
            return response.body.decode()
        time.sleep(0.5)


def stored_ids(data_dir: Path) -> set[str]:
    config = load_config(env={"MERCATO_DATA_DIR": str(data_dir)})
    with closing(open_log(config)) as log:
        return {
            decode_event(entry.value).event_id
            for partition in range(log.partitions)
            for entry in LogReader(log, partition, 0)
        }


def test_a_saturated_collector_answers_a_fresh_connection_at_once_and_loses_nothing(
    collector_factory,
):
    collector = collector_factory()
    stop = threading.Event()
    clients = [Client(collector, CONNECTIONS_PER_CLIENT, stop) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    fresh: list[tuple[str, float, wire.Response]] = []
    try:
        time.sleep(4)  # every connection has sent its first batch, most are waiting
        for n in range(3):
            tag = f"fresh{n:011d}"
            fresh.append((tag, *fresh_request(collector, tag)))
            time.sleep(0.5)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=30)
    metrics = scrape(collector)
    assert collector.stop() == 0

    for _, waited, response in fresh:
        assert waited < 2, f"a fresh request waited {waited:.1f} s for {response.status}"
        assert response.status in (200, 429, 503), response
        if response.status != 200:
            assert response.headers["retry-after"] == "1"
    tallies = [client.tally for client in clients]
    statuses = {s: sum(t.statuses.get(s, 0) for t in tallies) for s in (200, 429, 503)}
    assert statuses[200] > 0, statuses  # the collector kept working...
    assert statuses[429] + statuses[503] > 0, statuses  # ...and was saturated: it shed load
    assert sum(t.shed_without_retry_after for t in tallies) == 0

    # counted where operators look: 503s as refusals, 429s as overloaded events
    def total(prefix: str) -> float:
        return sum(
            float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix)
        )

    if statuses[503]:
        assert total("mercato_ingest_refused_total{") > 0, metrics
    if statuses[429]:
        assert total('mercato_ingest_events_total{result="overloaded"}') > 0, metrics

    acknowledged = {tag for t in tallies for tag in t.acknowledged}
    acknowledged |= {tag for tag, _, response in fresh if response.status == 200}
    stored = stored_ids(collector.data_dir)
    for tag in acknowledged:
        events = 1 if tag.startswith("fresh") else EVENTS_PER_REQUEST
        assert event_ids(tag, events) <= stored, f"events of request {tag} were acknowledged"


def test_a_client_sending_its_body_slowly_holds_no_slot(collector_factory):
    collector = collector_factory(MERCATO_COLLECTOR_MAX_REQUESTS_IN_FLIGHT="1")
    body = batch_template(10).replace(TAG, b"slow" + b"0" * 12)
    request = post(collector, body)
    slow = [wire.connect(collector.port) for _ in range(3)]
    try:
        for sock in slow:
            sock.sendall(request[: len(request) - len(body) // 2])
        for n in range(3):  # the one slot is free for requests that have arrived
            started = time.monotonic()
            one = batch_template(1).replace(TAG, f"quick{n:011d}".encode())
            assert wire.exchange(collector.port, post(collector, one)).status == 200
            assert time.monotonic() - started < 0.5
        for sock in slow:
            sock.sendall(request[len(request) - len(body) // 2 :])
            assert wire.read_response(sock).status == 200
    finally:
        for sock in slow:
            sock.close()


def test_a_client_expecting_100_continue_is_asked_for_its_body(collector_factory):
    collector = collector_factory()
    request = post(collector, batch_template(1).replace(TAG, b"expect" + b"0" * 10))
    head, _, body = request.partition(b"\r\n\r\n")
    with wire.connect(collector.port, timeout=5) as sock:
        sock.sendall(head + b"\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert wire.read_response(sock).status == 200
