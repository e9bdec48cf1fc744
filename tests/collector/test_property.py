"""The collector under arbitrary JSON (hypothesis), in-process over ASGI with memory logs.

Bodies are built as JSON *text* from fragments, so they can be deeper than any Python object
msgspec could encode, and hold what no encoder writes: lone surrogates, bytes that are not
UTF-8, numbers past every range. Whatever arrives, the collector answers below 500 within a
second, and the log grows by exactly what the answer says was accepted (Segment: the
quarantine by exactly the rest of the batch).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mercato.collector.app import CollectorApp
from mercato.collector.keys import KeyStore
from mercato.collector.quarantine import Quarantine
from mercato.config import CollectorConfig
from mercato.events.model import decode_event
from mercato.log.base import Log
from mercato.log.memory import MemoryLog
from tests.inprocess import Response, call

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SLOWEST_ANSWER = 1.0
PROPERTY = settings(
    max_examples=200,
    deadline=5_000,  # per example (two requests); the one-second bound is asserted per answer
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Target(NamedTuple):
    app: CollectorApp
    log: MemoryLog
    quarantine: MemoryLog
    auth: dict[str, str]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    keys = KeyStore(Path(tmp_path_factory.mktemp("keys")) / "keys.json", reload_interval=0)
    _, secret = keys.create("web")
    log, quarantined = MemoryLog(4), MemoryLog(1)
    app = CollectorApp(
        CollectorConfig(),
        log,
        keys,
        quarantine=Quarantine.on(quarantined),
        clock=lambda: NOW,
    )
    auth = {"Authorization": "Basic " + base64.b64encode(f"{secret}:".encode()).decode()}
    yield Target(app, log, quarantined, auth)
    app.close()


def size(log: Log) -> int:
    return sum(log.end_offset(p) for p in range(log.partitions))


def ends(log: Log) -> list[int]:
    return [log.end_offset(p) for p in range(log.partitions)]


def assert_readable(log: Log, since: list[int]) -> None:
    """Every record appended since ``since`` decodes as a normalized event, as the archiver
    and the aggregator read it: an event accepted but unreadable would be lost."""
    for partition, start in enumerate(since):
        for entry in log.read(partition, start, 10_000):
            decode_event(entry.value)


def post(target: Target, path: str, body: bytes, content_type: str) -> Response:
    headers = {"Content-Type": content_type, **target.auth}
    started = time.perf_counter()
    response = call(target.app, "POST", path, body, headers)
    took = time.perf_counter() - started
    assert response.status < 500, response.body
    assert took < SLOWEST_ANSWER, f"{took:.2f} s for {len(body)} bytes"
    event(f"{path} answered {response.status}")
    return response


# -- JSON text from fragments -------------------------------------------------------------------

encode = msgspec.json.encode
odd_text = st.text(
    st.characters(codec="utf-8")
    | st.sampled_from(["\u0000", "\u202e", "\ufeff", "\u0301", "\U0001f600", "\uffff", "\n"]),
    max_size=12,
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | odd_text
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(odd_text, inner, max_size=6),
    max_leaves=10,
)
# What no encoder writes: numbers past every range, escapes of lone surrogates, bytes that are
# not UTF-8, bare words; and text that is not JSON at all.
raw_scalars = st.sampled_from(
    [b"1" * 5000, b"1e999", b"-0", b"-1e-999", b'"\\ud800"', b'"\\udc00x"', b'"\xff\xfe"',
     b'"\\u0000"', b"NaN", b"Infinity", b"tru", b'"unterminated', b"", b"{", b"]", b"0x10"]
)  # fmt: skip


@st.composite
def fragments(draw: st.DrawFn) -> bytes:
    """JSON text of one value: mostly well formed, sometimes deep, sometimes broken."""
    kind = draw(st.sampled_from(["value", "value", "value", "deep", "raw", "wide"]))
    if kind == "raw":
        return draw(raw_scalars)
    if kind == "wide":
        count = draw(st.integers(0, 2000))
        return b"[" + b",".join([b"1"] * count) + b"]"
    text = encode(draw(values))
    if kind == "deep":
        depth = draw(st.sampled_from([2, 30, 63, 64, 65, 200, 900, 999, 1000, 1001, 5000, 50_000]))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        text = opener * depth + text + closer * depth
    return text


good_times = st.sampled_from(
    ["2026-11-26T11:00:00Z", "2026-11-26T12:00:00.123456+05:45", "2021-11-27T12:00:00Z",
     "2026-11-27T11:59:59Z", "2026-11-26T06:00:00-05:00"]
)  # fmt: skip
odd_times = st.sampled_from(
    ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
     "2021-11-26T11:59:59Z", "2026-11-27T12:00:01Z", "2026-11-26", "yesterday",
     "2026-11-26T11:00:00", ""]
)  # fmt: skip
good_ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8) | st.just("m" * 256)
odd_ids = st.sampled_from(["m" * 257, ""]) | st.integers() | st.lists(st.integers(), max_size=2)
objects_ = st.dictionaries(odd_text, values, max_size=5)
Field = tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]  # (valid, odd)


@st.composite
def objects(draw: st.DrawFn, fields: dict[str, Field], required: frozenset[str]) -> bytes:
    """A JSON object text: a valid one most of the time; else each field may be left out,
    oddly typed, or any fragment, and unknown fields may come along."""
    clean = draw(st.sampled_from([True, True, False]))
    members = []
    for name, (valid, odd) in fields.items():
        choice = "valid" if clean else draw(
            st.sampled_from(["valid"] * 5 + ["omitted", "odd", "odd", "fragment", "fragment"])
        )  # fmt: skip
        if choice == "omitted" or (
            choice == "valid" and name not in required and draw(st.booleans())
        ):
            continue
        if choice == "fragment":
            members.append(encode(name) + b":" + draw(fragments()))
        else:
            members.append(encode(name) + b":" + encode(draw(valid if choice == "valid" else odd)))
    if not clean:
        for name in draw(st.lists(odd_text, max_size=2)):
            members.append(encode(name) + b":" + draw(fragments()))
    order = draw(st.permutations(members))
    return b"{" + b",".join(order) + b"}"


native_events = objects(
    {
        "type": (good_ids, st.just("x" * 257) | st.integers()),
        "merchant_id": (good_ids, odd_ids),
        "timestamp": (good_times, odd_times),
        "event_id": (good_ids, odd_ids),
        "sent_at": (good_times, odd_times),
        "properties": (objects_, values),
        "context": (objects_, values),
    },
    frozenset({"type", "merchant_id", "timestamp"}),
)
segment_messages = objects(
    {
        "type": (
            st.sampled_from(["track", "identify", "page", "screen", "group", "alias"]),
            st.sampled_from(["buy", ""]) | st.integers(),
        ),
        "event": (good_ids, st.just("") | st.integers()),
        "messageId": (good_ids, odd_ids),
        "timestamp": (good_times, odd_times),
        "originalTimestamp": (good_times, odd_times),
        "sentAt": (good_times, odd_times),
        "userId": (good_ids | st.integers(), st.lists(st.integers(), max_size=2)),
        "anonymousId": (good_ids, odd_ids),
        "name": (odd_text, st.integers()),
        "properties": (
            st.fixed_dictionaries({"merchant_id": good_ids}, optional={"x": values}),
            st.fixed_dictionaries({"merchant_id": odd_ids}) | values,
        ),
        "traits": (st.fixed_dictionaries({"merchant_id": good_ids}), values),
        "context": (
            st.fixed_dictionaries({}, optional={"groupId": good_ids, "ip": odd_text}),
            values,
        ),
    },
    frozenset({"type", "event", "properties", "traits"}),
)


def array(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn from as often as its weight says."""
    indexes = [i for i, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(indexes).flatmap(lambda i: choices[i][1])


def sometimes(strategy: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes | None]:
    """None four times in five: mostly well formed requests, sometimes any body at all."""
    return weighted((4, st.none()), (1, strategy))


# -- the properties -----------------------------------------------------------------------------


@PROPERTY
@given(
    events=st.lists(weighted((9, native_events), (1, fragments())), max_size=8),
    ndjson=st.booleans(),
    whole=sometimes(fragments()),
)
def test_native_answers_and_the_log_agree(target, events, ndjson, whole):
    if whole is not None:
        body = whole
    elif ndjson:
        body = b"\n".join(events)
    else:
        body = array(events)
    before, offsets = size(target.log), ends(target.log)
    response = post(
        target, "/v1/events", body, "application/x-ndjson" if ndjson else "application/json"
    )
    grown = size(target.log) - before
    assert_readable(target.log, offsets)
    if response.status == 200:
        event(f"accepted {min(grown, 2)}+")
        assert response.json()["accepted"] == grown
    else:
        assert grown == 0
        error = response.json()["error"]
        assert error["message"]
        if "index" in error:
            assert error["message"].startswith(f"event {error['index']}")


@PROPERTY
@given(
    messages=st.lists(weighted((9, segment_messages), (1, fragments())), max_size=8),
    sent_at=weighted((4, st.none()), (4, good_times), (1, odd_times), (1, fragments())),
    context=weighted(
        (4, st.none()), (4, st.just(b'{"library": {"name": "analytics-python"}}')), (1, fragments())
    ),
    endpoint=st.sampled_from(["batch", "batch", "batch", "track", "identify", "page"]),
    whole=sometimes(fragments()),
)
def test_segment_answers_the_log_and_the_quarantine_agree(
    target, messages, sent_at, context, endpoint, whole
):
    if whole is not None:
        body = whole
    elif endpoint != "batch":
        body = messages[0] if messages else b"{}"
    else:
        members = [b'"batch":' + array(messages)]
        if sent_at is not None:
            members.append(
                b'"sentAt":' + (encode(sent_at) if isinstance(sent_at, str) else sent_at)
            )
        if context is not None:
            members.append(b'"context":' + context)
        body = b"{" + b",".join(members) + b"}"
    logged, quarantined, offsets = size(target.log), size(target.quarantine), ends(target.log)
    response = post(target, f"/v1/{endpoint}", body, "text/plain")
    logged, quarantined = size(target.log) - logged, size(target.quarantine) - quarantined
    assert_readable(target.log, offsets)
    answer = response.json()
    if response.status != 200:
        assert (logged, quarantined) == (0, 0)
        assert answer["message"] == answer["error"]["message"]  # what the SDKs log
        return
    assert answer["accepted"] == logged
    assert len(answer["quarantined"]) == quarantined
    event(f"some quarantined: {quarantined > 0}, some accepted: {logged > 0}")
    if whole is None:  # the request was well formed, so every message went somewhere
        assert logged + quarantined == (len(messages) if endpoint == "batch" else 1)
    indexes = [q["index"] for q in answer["quarantined"]]
    assert indexes == sorted(set(indexes))
