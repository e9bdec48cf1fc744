"""The collector app's logic, driven in-process over ASGI with the in-memory log."""

import base64
import gzip
import threading
from datetime import UTC, datetime

import msgspec
import pytest

from mercato.collector.app import CollectorApp
from mercato.collector.keys import KeyStore
from mercato.collector.quarantine import Quarantine
from mercato.config import CollectorConfig
from mercato.events.model import decode_event
from mercato.log.base import LogReader
from mercato.log.errors import LogError
from mercato.log.memory import MemoryLog
from tests.inprocess import call

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class Collector:
    def __init__(self, tmp_path, **config):
        self.keys = KeyStore(tmp_path / "keys.json", reload_interval=0)
        self.key, self.secret = self.keys.create("web")
        self.log = MemoryLog(4)
        self.quarantine = Quarantine.on(MemoryLog(1))
        self.app = CollectorApp(
            CollectorConfig(**config),
            self.log,
            self.keys,
            quarantine=self.quarantine,
            clock=lambda: NOW,
        )

    def auth(self, secret=None):
        token = base64.b64encode(f"{secret or self.secret}:".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def post(self, path, body, content_type="application/json", headers=None, auth=True):
        if not isinstance(body, bytes):
            body = msgspec.json.encode(body)
        all_headers = {"Content-Type": content_type, **(self.auth() if auth else {})}
        return call(self.app, "POST", path, body, {**all_headers, **(headers or {})})

    def stored(self):
        return [
            decode_event(e.value)
            for p in range(self.log.partitions)
            for e in LogReader(self.log, p, 0)
        ]

    def quarantined(self):
        return self.quarantine.state().entries()


@pytest.fixture
def collector(tmp_path):
    c = Collector(tmp_path)
    yield c
    c.app.close()


def event(i=0, **overrides):
    return {
        "event_id": f"e{i}",
        "type": "order_completed",
        "merchant_id": f"m_{i % 7}",
        "timestamp": "2026-11-26T11:00:00Z",
        **overrides,
    }


def test_accepts_a_json_array(collector):
    response = collector.post("/v1/events", [event(i) for i in range(20)])
    assert response.status == 200
    assert response.json() == {"accepted": 20}
    assert sorted(e.event_id for e in collector.stored()) == sorted(f"e{i}" for i in range(20))


def test_accepts_ndjson(collector):
    body = b"\n".join(msgspec.json.encode(event(i)) for i in range(3))
    response = collector.post("/v1/events", body, "application/x-ndjson")
    assert response.status == 200
    assert len(collector.stored()) == 3


def test_gzip_body(collector):
    body = gzip.compress(msgspec.json.encode([event(1), event(2)]))
    response = collector.post("/v1/events", body, headers={"Content-Encoding": "gzip"})
    assert response.status == 200
    assert {e.event_id for e in collector.stored()} == {"e1", "e2"}


def test_a_batch_with_one_bad_event_is_rejected_whole(collector):
    events = [event(0), event(1), event(2, timestamp=12)]
    response = collector.post("/v1/events", events)
    assert response.status == 400
    assert response.json()["error"]["index"] == 2
    assert response.json()["error"]["field"] == "timestamp"
    assert collector.stored() == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic " + base64.b64encode(b"mk_nope:").decode()}, 401),
        ({"Authorization": "Basic !!!"}, 401),
        ({"Authorization": "Digest abc"}, 401),
    ],
)
def test_missing_or_unknown_write_key(collector, headers, status):
    response = collector.post("/v1/events", [event()], auth=False, headers=headers)
    assert response.status == status
    assert "www-authenticate" in response.headers
    assert collector.stored() == []


def test_revoked_key_is_forbidden(collector):
    collector.keys.revoke(collector.key.id)
    response = collector.post("/v1/events", [event()])
    assert response.status == 403
    assert collector.stored() == []


def test_bearer_token_is_accepted(collector):
    response = collector.post(
        "/v1/events", [event()], auth=False, headers={"Authorization": f"Bearer {collector.secret}"}
    )
    assert response.status == 200


@pytest.mark.parametrize("content_type", ["text/csv", "", "application/xml"])
def test_unsupported_content_type(collector, content_type):
    response = collector.post("/v1/events", [event()], content_type)
    assert response.status == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_body_over_the_limit_is_refused_from_content_length_before_reading(tmp_path, monkeypatch):
    c = Collector(tmp_path, max_body_bytes=1000)
    reads = []
    original = c.app._read_body

    async def spy(receive):
        reads.append(1)
        return await original(receive)

    monkeypatch.setattr(c.app, "_read_body", spy)
    response = c.post(
        "/v1/events", [event(i) for i in range(50)], headers={"Content-Length": "5000"}
    )
    assert response.status == 413
    assert reads == []


def test_body_over_the_limit_without_content_length_stops_reading(tmp_path):
    c = Collector(tmp_path, max_body_bytes=1000)
    response = c.post("/v1/events", [event(i) for i in range(50)])
    assert response.status == 413
    assert c.stored() == []


def test_gzip_bomb_is_refused(tmp_path):
    c = Collector(tmp_path, max_body_bytes=10_000)
    body = gzip.compress(b"[" + b" " * 1_000_000 + b"]")
    response = c.post("/v1/events", body, headers={"Content-Encoding": "gzip"})
    assert response.status == 413


def test_invalid_gzip_is_a_400(collector):
    response = collector.post("/v1/events", b"not gzip", headers={"Content-Encoding": "gzip"})
    assert response.status == 400
    assert response.json()["error"]["code"] == "invalid_gzip"


def test_event_over_the_limit_is_413_with_its_index(tmp_path):
    c = Collector(tmp_path, max_event_bytes=1000)
    response = c.post("/v1/events", [event(0), event(1, properties={"x": "y" * 2000})])
    assert response.status == 413
    assert response.json()["error"]["index"] == 1
    assert c.stored() == []


def test_log_failure_is_503_with_retry_after_and_not_ready(collector):
    collector.log.fail_appends = OSError(28, "No space left on device")
    response = collector.post("/v1/events", [event()])
    assert response.status == 503
    assert response.headers["retry-after"] == "1"
    assert "No space left" in response.json()["error"]["message"]
    assert call(collector.app, "GET", "/readyz").status == 503
    collector.log.fail_appends = None
    assert collector.post("/v1/events", [event()]).status == 200
    assert call(collector.app, "GET", "/readyz").status == 200


def test_overload_is_429_with_retry_after(tmp_path, monkeypatch):
    c = Collector(tmp_path, max_pending_events=10, retry_after_seconds=2)
    gate = threading.Event()
    original = c.log.submit

    def slow_submit(records):
        gate.wait(5)
        return original(records)

    monkeypatch.setattr(c.log, "submit", slow_submit)
    results = []

    def post():
        results.append(c.post("/v1/events", [event(i) for i in range(8)]).status)

    first = threading.Thread(target=post)
    first.start()
    while c.app._pending == 0:
        pass
    second = c.post("/v1/events", [event(i) for i in range(8)])
    gate.set()
    first.join()
    assert second.status == 429
    assert second.headers["retry-after"] == "2"
    assert results == [200]
    assert len(c.stored()) == 8


def test_segment_batch_with_write_key_in_body(collector):
    body = {
        "writeKey": collector.secret,
        "batch": [
            {"type": "track", "event": "Order Completed", "properties": {"merchant_id": "m_1"}},
            {"type": "page", "name": "Home", "context": {"groupId": "m_2"}},
        ],
        "sentAt": "2026-11-26T11:59:59Z",
    }
    response = collector.post("/v1/batch", body, "text/plain", auth=False)
    assert response.status == 200
    assert response.json() == {"success": True, "accepted": 2, "quarantined": []}
    assert {e.type for e in collector.stored()} == {"Order Completed", "page"}


def test_segment_without_any_key_is_401(collector):
    body = {"batch": [{"type": "track", "event": "x", "properties": {"merchant_id": "m"}}]}
    assert collector.post("/v1/batch", body, auth=False).status == 401
    assert collector.stored() == []


@pytest.mark.parametrize("call_type", ["track", "identify", "page", "screen", "group", "alias"])
def test_segment_single_calls(collector, call_type):
    message = {
        "event": "Clicked",
        "properties": {"merchant_id": "m_5"},
        "traits": {"merchant_id": "m_5"},
    }
    message["context"] = {"groupId": "m_5"}
    response = collector.post(f"/v1/{call_type}", message)
    assert response.status == 200
    (stored,) = collector.stored()
    assert stored.merchant_id == "m_5"
    assert stored.type == ("Clicked" if call_type == "track" else call_type)


def test_unknown_endpoint_and_method(collector):
    assert collector.post("/v1/nothing", [event()]).status == 404
    assert call(collector.app, "GET", "/v1/events").status == 405
    assert call(collector.app, "GET", "/nope").status == 404


def test_health_and_metrics(collector):
    assert call(collector.app, "GET", "/livez").json() == {"status": "ok"}
    assert call(collector.app, "GET", "/readyz").status == 200
    collector.post("/v1/events", [event(i) for i in range(5)])
    collector.post("/v1/events", [event(0), event(1, timestamp="2030-01-01T00:00:00Z")])
    text = call(collector.app, "GET", "/metrics").body.decode()
    assert 'mercato_ingest_events_total{result="accepted"} 5.0' in text
    assert 'mercato_ingest_events_total{result="invalid"} 2.0' in text
    assert 'mercato_ingest_requests_total{endpoint="events",status="400"} 1.0' in text
    assert "mercato_ingest_request_duration_seconds_bucket" in text
    assert 'mercato_ingest_batch_events_bucket{le="10.0"} 1.0' in text


def test_cors_preflight_and_origin(collector):
    response = call(
        collector.app, "OPTIONS", "/v1/batch", headers={"Origin": "https://shop.example"}
    )
    assert response.status == 204
    assert "authorization" in response.headers["access-control-allow-headers"]
    response = collector.post("/v1/events", [event()], headers={"Origin": "https://shop.example"})
    assert response.headers["access-control-allow-origin"] == "https://shop.example"


def test_shutdown_drains(collector):
    collector.app.close()
    response = collector.post("/v1/events", [event()])
    assert response.status == 503
    assert call(collector.app, "GET", "/readyz").status == 503


# -- Segment: invalid messages are quarantined, the rest accepted --------------------------------


def track(i, merchant="m_1", **overrides):
    properties = {"merchant_id": merchant} if merchant is not None else {"shop": "s_1"}
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": f"msg-{i}",
        "originalTimestamp": "2026-11-26T11:00:00Z",
        "properties": properties,
        **overrides,
    }


def test_a_segment_batch_with_an_invalid_message_accepts_the_others(collector):
    batch = [track(i) for i in range(6)] + [track(6, merchant=None)]
    response = collector.post("/v1/batch", {"batch": batch, "sentAt": "2026-11-26T11:00:01Z"})
    assert response.status == 200
    body = response.json()
    assert (body["success"], body["accepted"]) == (True, 6)
    (error,) = body["quarantined"]
    assert (error["index"], error["field"], error["reason"]) == (
        6,
        "properties.merchant_id",
        "merchant_id",
    )
    assert sorted(e.event_id for e in collector.stored()) == [f"msg-{i}" for i in range(6)]
    (entry,) = collector.quarantined()
    assert (entry.index, entry.event_id, entry.reason, entry.source) == (
        6,
        "msg-6",
        "merchant_id",
        "web",
    )
    paths = "properties.merchant_id, context.groupId"
    assert entry.error == f"event 6: properties.merchant_id: no merchant id; set one of {paths}"
    text = call(collector.app, "GET", "/metrics").body.decode()
    assert 'mercato_collector_quarantined_events_total{reason="merchant_id"} 1.0' in text
    assert 'mercato_ingest_events_total{result="quarantined"} 1.0' in text
    assert 'mercato_ingest_events_total{result="accepted"} 6.0' in text


def test_a_single_segment_call_that_is_invalid_is_quarantined(collector):
    response = collector.post("/v1/track", {"event": "Clicked", "properties": {"merchant_id": 5.5}})
    assert response.status == 200
    assert response.json()["accepted"] == 0
    (entry,) = collector.quarantined()
    assert (entry.endpoint, entry.index, entry.reason) == ("track", 0, "merchant_id")
    assert collector.stored() == []


def test_segment_request_problems_are_still_refused_whole(collector, tmp_path):
    ok = {"batch": [track(0)]}
    assert collector.post("/v1/batch", b"{not json").status == 400
    assert collector.post("/v1/batch", {"batch": {}}).status == 400
    assert collector.post("/v1/batch", {"batch": [], "sentAt": "soon"}).status == 400
    assert collector.post("/v1/track", b"[1, 2").status == 400
    assert collector.post("/v1/batch", ok, "application/xml").status == 415
    assert collector.post("/v1/batch", ok, auth=False).status == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"mk_nope:").decode()}
    assert collector.post("/v1/batch", ok, auth=False, headers=wrong).status == 401
    small = Collector(tmp_path / "small", max_body_bytes=100)
    assert small.post("/v1/batch", {"batch": [track(i) for i in range(5)]}).status == 413
    collector.keys.revoke(collector.key.id)
    assert collector.post("/v1/batch", {"batch": [track(0, merchant=None)]}).status == 403
    assert collector.stored() == []
    assert collector.quarantined() == []


def test_segment_error_bodies_carry_what_the_sdks_log(collector):
    response = collector.post("/v1/batch", {"batch": [track(0)]}, auth=False)
    body = response.json()
    assert (body["code"], body["message"]) == ("unauthorized", body["error"]["message"])
    assert body["message"] == "a write key is required (Basic auth or writeKey)"
    assert call(collector.app, "GET", "/v1/batch").json()["code"] == "method_not_allowed"
    native = collector.post("/v1/events", b"[")
    assert set(native.json()) == {"error"}


def test_without_a_quarantine_a_segment_batch_is_accepted_or_refused_whole(tmp_path):
    c = Collector(tmp_path)
    c.app = CollectorApp(CollectorConfig(), c.log, c.keys, clock=lambda: NOW)
    response = c.post("/v1/batch", {"batch": [track(0), track(1, merchant=None)]})
    assert response.status == 400
    assert (response.json()["error"]["index"], response.json()["code"]) == (1, "invalid_event")
    assert c.stored() == []


def test_a_quarantine_that_cannot_write_is_503_and_the_collector_stays_ready(collector):
    collector.quarantine.log().fail_appends = OSError("disk full")
    response = collector.post("/v1/batch", {"batch": [track(0), track(1, merchant=None)]})
    assert response.status == 503
    assert response.headers["retry-after"] == "1"
    assert collector.quarantined() == []
    # the log itself is fine: the collector stays ready for everything else
    assert call(collector.app, "GET", "/readyz").status == 200
    assert collector.post("/v1/batch", {"batch": [track(2)]}).status == 200


def test_a_quarantine_that_cannot_open_is_503_until_it_can(tmp_path):
    c = Collector(tmp_path)
    opened = MemoryLog(1)
    attempts = []

    def opener():
        attempts.append(1)
        if len(attempts) == 1:
            raise LogError("kafka topic 'x-quarantine' does not exist")
        return opened

    c.quarantine = Quarantine(opener, retry_seconds=0)
    c.app = CollectorApp(
        CollectorConfig(), c.log, c.keys, quarantine=c.quarantine, clock=lambda: NOW
    )
    bad = {"batch": [track(0, merchant=None)]}
    response = c.post("/v1/batch", bad)
    assert (response.status, response.json()["code"]) == (503, "quarantine_unavailable")
    assert c.post("/v1/batch", {"batch": [track(1)]}).status == 200  # no quarantine needed
    assert c.post("/v1/batch", bad).status == 200
    assert len(c.quarantined()) == 1


# -- limits: depth, past timestamps, merchant ids ------------------------------------------------


def deep(depth):
    return b"[" * depth + b"]" * depth


def nested_list(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [1_000, 50_000])
def test_native_json_too_deep_is_400_naming_the_event(collector, depth):
    body = b"[" + msgspec.json.encode(event(0)) + b"," + msgspec.json.encode(event(1))[:-1]
    body += b', "properties": {"x": ' + deep(depth) + b"}}]"
    response = collector.post("/v1/events", body)
    assert response.status == 400
    assert response.json()["error"]["index"] == 1
    assert "nested too deeply" in response.json()["error"]["message"]
    assert collector.stored() == []


def test_native_events_deeper_than_the_limit_are_400(tmp_path):
    c = Collector(tmp_path, max_nesting_depth=10)
    # the event's object, its properties, then the lists
    assert c.post("/v1/events", [event(0, properties={"a": nested_list(8)})]).status == 200
    response = c.post("/v1/events", [event(1, properties={"a": nested_list(9)})])
    assert response.status == 400
    assert response.json()["error"]["message"] == "event 0: nested more than 10 levels deep"


@pytest.mark.parametrize("depth", [1_000, 50_000])
def test_segment_message_too_deep_is_quarantined_alone(collector, depth):
    bad = (
        b'{"type": "track", "event": "x", "properties": {"merchant_id": "m", "x": '
        + deep(depth)
        + b"}}"
    )
    body = b'{"batch": [' + msgspec.json.encode(track(0)) + b", " + bad + b"]}"
    response = collector.post("/v1/batch", body)
    assert response.status == 200
    assert response.json()["accepted"] == 1
    (entry,) = collector.quarantined()
    assert (entry.index, entry.reason) == (1, "malformed")
    assert collector.quarantine.messages([entry.id]) == {entry.id: bad}


def test_segment_body_too_deep_as_a_whole_is_400(collector):
    assert collector.post("/v1/batch", deep(5_000)).status == 400
    assert collector.post("/v1/track", deep(5_000)).status == 400
    context = b'{"context": {"x": ' + deep(5_000) + b'}, "batch": []}'
    response = collector.post("/v1/batch", context)
    assert (response.status, response.json()["error"]["field"]) == (400, "context")


def test_timestamps_too_far_in_the_past_are_refused(collector):
    response = collector.post("/v1/events", [event(0), event(1, timestamp="0001-01-01T00:00:00Z")])
    assert response.status == 400
    assert (response.json()["error"]["index"], response.json()["error"]["field"]) == (
        1,
        "timestamp",
    )
    old = track(1, originalTimestamp="0001-01-01T00:00:00Z")
    response = collector.post("/v1/batch", {"batch": [track(0), old]})
    assert [q["reason"] for q in response.json()["quarantined"]] == ["timestamp"]
    assert [e.event_id for e in collector.stored()] == ["msg-0"]


def test_max_past_seconds_is_configurable(tmp_path):
    c = Collector(tmp_path, max_past_seconds=3600)
    assert c.post("/v1/events", [event(0, timestamp="2026-11-26T11:00:00Z")]).status == 200
    assert c.post("/v1/events", [event(1, timestamp="2026-11-26T10:59:59Z")]).status == 400


def test_merchant_ids_over_256_characters_are_refused_on_both_endpoints(collector):
    assert collector.post("/v1/events", [event(0, merchant_id="m" * 257)]).status == 400
    response = collector.post(
        "/v1/batch", {"batch": [track(0, merchant="m" * 257), track(1, "m" * 256)]}
    )
    assert [(q["index"], q["reason"]) for q in response.json()["quarantined"]] == [
        (0, "merchant_id")
    ]
    assert [e.merchant_id for e in collector.stored()] == ["m" * 256]


def test_a_segment_batch_of_too_many_messages_is_refused_whole(tmp_path):
    c = Collector(tmp_path, segment_max_messages=3)
    assert c.post("/v1/batch", {"batch": [track(i) for i in range(3)]}).status == 200
    response = c.post("/v1/batch", {"batch": [track(i, merchant=None) for i in range(4)]})
    assert (response.status, response.json()["code"]) == (413, "too_many_messages")
    assert response.json()["message"] == "batch has 4 messages, over the limit of 3"
    assert c.quarantined() == []
    assert len(c.stored()) == 3
