"""The collector as users run it: `mercato run collector` in its own process, real HTTP,
the file log on disk. Everything acknowledged with 200 must be in the log, exactly as sent."""

from __future__ import annotations

import gzip
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mercato.config import load_config
from mercato.events.model import NormalizedEvent, decode_event
from mercato.log import open_log
from mercato.log.base import LogReader

pytestmark = pytest.mark.slow


def event(
    event_id: str | None = None, merchant: str = "m_1", **overrides: object
) -> dict[str, object]:
    return {
        "event_id": event_id or uuid.uuid4().hex,
        "type": "order_completed",
        "merchant_id": merchant,
        "timestamp": "2026-11-26T11:00:00Z",
        "properties": {"amount": 1999, "currency": "EUR"},
        **overrides,
    }


def stored_events(data_dir: Path, partitions: int = 8) -> list[NormalizedEvent]:
    config = load_config(
        env={"MERCATO_DATA_DIR": str(data_dir), "MERCATO_LOG_PARTITIONS": str(partitions)}
    )
    with closing(open_log(config)) as log:
        entries = [e for p in range(log.partitions) for e in LogReader(log, p, 0)]
        for p in range(log.partitions):
            offsets = [e.offset for e in entries if e.partition == p]
            assert offsets == list(range(log.start_offset(p), log.end_offset(p)))
    return [decode_event(e.value) for e in entries]


def error_of(response: tuple[int, dict[str, str], bytes]) -> dict[str, Any]:
    error: dict[str, Any] = msgspec.json.decode(response[2])["error"]
    return error


def test_error_cases_over_http(collector_factory):
    c = collector_factory(MERCATO_COLLECTOR_MAX_BODY_BYTES="20000")
    json_type = {"Content-Type": "application/json"}

    status, _, _ = c.request("POST", "/v1/events", b"[{", {**c.auth(), **json_type})
    assert status == 400

    response = c.post_events([event(), event(type=None)])
    assert response[0] == 400
    assert (error_of(response)["index"], error_of(response)["field"]) == (1, "type")

    assert c.request("POST", "/v1/events", b"[]", json_type)[0] == 401
    bad_key = {"Authorization": "Basic bWtfbm9wZTo=", **json_type}
    assert c.request("POST", "/v1/events", b"[]", bad_key)[0] == 401

    wrong_type = {**c.auth(), "Content-Type": "application/xml"}
    assert c.request("POST", "/v1/events", b"<a/>", wrong_type)[0] == 415

    big = msgspec.json.encode([event() for _ in range(200)])
    status, _, body = c.request("POST", "/v1/events", big, {**c.auth(), **json_type})
    assert status == 413, body

    assert c.request("GET", "/v1/nothing")[0] == 405
    assert c.request("POST", "/v1/nothing", b"{}", {**c.auth(), **json_type})[0] == 404
    assert stored_events(c.data_dir) == []


def test_revoked_key_is_refused_by_a_running_collector(collector_factory, tmp_path):
    c = collector_factory()
    assert c.post_events([event()])[0] == 200
    env = {**os.environ, "MERCATO_DATA_DIR": str(c.data_dir)}
    mercato = [sys.executable, "-m", "mercato"]
    listed = subprocess.run(
        [*mercato, "keys", "list"], env=env, capture_output=True, text=True, check=True
    )
    key_id = next(word for word in listed.stdout.split() if word.startswith("wk_"))
    subprocess.run([*mercato, "keys", "revoke", key_id], env=env, check=True, capture_output=True)
    deadline = time.monotonic() + 5
    while c.post_events([event()])[0] == 200:
        assert time.monotonic() < deadline, "revoked key still accepted after 5 s"
        time.sleep(0.2)
    assert c.post_events([event()])[0] == 403


def test_chunked_body_over_the_limit_is_413(collector_factory):
    c = collector_factory(MERCATO_COLLECTOR_MAX_BODY_BYTES="10000")
    connection = http.client.HTTPConnection("127.0.0.1", c.port, timeout=10)
    body = msgspec.json.encode([event() for _ in range(100)])
    chunks = (body[i : i + 1000] for i in range(0, len(body), 1000))
    connection.request(
        "POST",
        "/v1/events",
        chunks,
        {**c.auth(), "Content-Type": "application/json"},
        encode_chunked=True,
    )
    try:
        assert connection.getresponse().status == 413
    finally:
        connection.close()
    assert stored_events(c.data_dir) == []


def test_overload_is_429_with_retry_after(collector_factory):
    c = collector_factory(MERCATO_COLLECTOR_MAX_PENDING_EVENTS="3")
    status, headers, _ = c.post_events([event() for _ in range(5)])
    assert status == 429
    assert headers["retry-after"] == "1"
    assert stored_events(c.data_dir) == []


def test_gzip_ndjson_and_segment_over_http(collector_factory):
    c = collector_factory()
    ndjson = b"\n".join(msgspec.json.encode(event(f"n{i}")) for i in range(3))
    headers = {**c.auth(), "Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    assert c.request("POST", "/v1/events", gzip.compress(ndjson), headers)[0] == 200

    batch = {
        "batch": [
            {
                "type": "track",
                "event": "Order Completed",
                "messageId": "seg-1",
                "originalTimestamp": "2026-11-26T15:00:00Z",
                "properties": {"merchant_id": "m_2", "revenue": 10},
            }
        ],
        "sentAt": "2026-11-26T15:00:10Z",
    }
    headers = {**c.auth(), "Content-Type": "text/plain"}
    before = time.time()
    status, _, body = c.request("POST", "/v1/batch", msgspec.json.encode(batch), headers)
    assert (status, msgspec.json.decode(body)) == (
        200,
        {"success": True, "accepted": 1, "quarantined": []},
    )

    by_id = {e.event_id: e for e in stored_events(c.data_dir)}
    assert {"n0", "n1", "n2", "seg-1"} == set(by_id)
    segment = by_id["seg-1"]
    # corrected time = receivedAt - 10 s, whatever the client's clock said
    skew = segment.received_at - segment.event_time
    assert skew.total_seconds() == pytest.approx(10, abs=1e-6)
    assert segment.received_at.timestamp() >= before - 1


def test_metrics_and_health(collector_factory):
    c = collector_factory()
    c.post_events([event() for _ in range(3)])
    assert c.request("GET", "/livez")[0] == 200
    assert c.request("GET", "/readyz")[0] == 200
    status, _, body = c.request("GET", "/metrics")
    assert status == 200
    assert b'mercato_ingest_events_total{result="accepted"} 3.0' in body


def post_many(c, batches: int, size: int, tag: str, acknowledged: list[str]) -> None:
    for b in range(batches):
        ids = [f"{tag}-{b}-{i}" for i in range(size)]
        response = c.post_events([event(i, merchant=f"m_{hash(i) % 50}") for i in ids])
        assert response[0] == 200, response
        acknowledged.extend(ids)


def test_two_collector_processes_append_to_one_log(collector_factory):
    first = collector_factory()
    second = collector_factory()
    acknowledged: list[str] = []
    threads = [
        threading.Thread(target=post_many, args=(c, 40, 50, f"{c.port}-{t}", acknowledged))
        for c in (first, second)
        for t in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(acknowledged) == 2 * 3 * 40 * 50
    stored = Counter(e.event_id for e in stored_events(first.data_dir))
    assert stored == Counter(acknowledged)  # every event once: nothing lost, nothing doubled


class Load:
    """Client threads posting batches of unique events until stopped or the server dies;
    ``acknowledged`` holds the ids of every event answered 200."""

    def __init__(self, collector, clients: int, batch: int, tag: str) -> None:
        self.collector = collector
        self.acknowledged: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._batch, self._tag = batch, tag
        self.threads = [threading.Thread(target=self._client, args=(n,)) for n in range(clients)]
        for t in self.threads:
            t.start()

    def _client(self, n: int) -> None:
        b = 0
        while not self.stop.is_set():
            ids = [f"{self._tag}{n}-{b}-{i}" for i in range(self._batch)]
            b += 1
            events = [event(i, merchant=f"m_{i[-2:]}") for i in ids]
            try:
                status, _, _ = self.collector.post_events(events)
            except (OSError, http.client.HTTPException):  # the server died mid-request
                return
            if status == 200:
                with self._lock:
                    self.acknowledged.extend(ids)

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    def finish(self) -> list[str]:
        self.stop.set()
        for t in self.threads:
            t.join()
        return self.acknowledged


def test_kill_9_under_load_loses_nothing_acknowledged(collector_factory):
    c = collector_factory()
    load = Load(c, clients=6, batch=100, tag="k")
    load.wait_for(20_000)
    c.stop(signal.SIGKILL)
    acknowledged = load.finish()
    assert len(acknowledged) >= 20_000

    restarted = collector_factory(c.data_dir)  # reopens and recovers the log
    assert restarted.post_events([event("after-restart")])[0] == 200
    restarted.stop()
    stored = Counter(e.event_id for e in stored_events(c.data_dir))
    missing = [i for i in acknowledged if i not in stored]
    assert missing == []
    assert stored["after-restart"] == 1


def test_disk_full_is_503_and_loses_nothing_acknowledged(collector_factory, small_disk):
    mountpoint = small_disk.path
    data = mountpoint / "data"
    c = collector_factory(data)
    filler = mountpoint / "filler"
    filler.write_bytes(b"\0" * 512 * 1024)
    acknowledged: list[str] = []
    statuses: Counter[int] = Counter()
    retry_after = None
    for b in range(400):
        ids = [f"d{b}-{i}" for i in range(50)]
        status, headers, _ = c.post_events([event(i, merchant=f"m_{i}") for i in ids])
        statuses[status] += 1
        if status == 200:
            acknowledged.extend(ids)
        else:
            assert status == 503
            retry_after = headers.get("retry-after")
            if statuses[503] >= 5:
                break
    assert statuses[503] >= 5, statuses
    assert retry_after == "1"
    assert c.request("GET", "/readyz")[0] == 503

    filler.unlink()  # space comes back: the same collector accepts again
    ids = [f"after-{i}" for i in range(50)]
    status, _, body = c.post_events([event(i) for i in ids])
    assert status == 200, body
    acknowledged.extend(ids)
    c.stop()

    stored = Counter(e.event_id for e in stored_events(data))
    assert [i for i in acknowledged if stored[i] != 1] == []
    assert sum(stored.values()) == len(acknowledged)  # a 503 left nothing behind


def test_sigterm_finishes_requests_in_flight_and_exits_cleanly(collector_factory):
    c = collector_factory()
    load = Load(c, clients=4, batch=200, tag="t")
    load.wait_for(5_000)
    assert c.stop(signal.SIGTERM) == 0
    acknowledged = load.finish()
    stored = Counter(e.event_id for e in stored_events(c.data_dir))
    assert [i for i in acknowledged if stored[i] != 1] == []
