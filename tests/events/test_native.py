from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mercato.events.errors import EventTooLargeError, InvalidEventError
from mercato.events.model import decode_event
from mercato.events.native import decode_native, normalize_native
from mercato.events.rules import EventRules

RECEIVED = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def event(**overrides):
    base = {"type": "order_completed", "merchant_id": "m_1", "timestamp": "2026-11-26T11:59:00Z"}
    return {**base, **overrides}


DEFAULT_RULES = EventRules()


def normalize(events, rules=DEFAULT_RULES, *, ndjson=False):
    if ndjson:
        body = b"\n".join(msgspec.json.encode(e) for e in events) + b"\n"
    else:
        body = msgspec.json.encode(events)
    return normalize_native(decode_native(body, ndjson=ndjson), RECEIVED, "web", rules)


def test_array_and_ndjson_give_the_same_events():
    events = [event(event_id="a", properties={"amount": 1999}), event(event_id="b")]
    as_array = [decode_event(r.value) for r in normalize(events)]
    as_lines = [decode_event(r.value) for r in normalize(events, ndjson=True)]
    assert as_array == as_lines
    assert [e.event_id for e in as_array] == ["a", "b"]
    assert as_array[0].properties == {"amount": 1999}


def test_normalized_fields():
    (record,) = normalize([event(event_id="e1", context={"channel": "web"})])
    assert record.key == "m_1"
    got = decode_event(record.value)
    assert got.merchant_id == "m_1"
    assert got.type == "order_completed"
    assert got.event_time == datetime(2026, 11, 26, 11, 59, tzinfo=UTC)
    assert got.original_timestamp == got.event_time
    assert got.sent_at is None
    assert got.received_at == RECEIVED
    assert got.context == {"channel": "web"}
    assert got.source == "web"


def test_missing_event_ids_are_generated_unique():
    records = normalize([event(), event(), event()])
    ids = {decode_event(r.value).event_id for r in records}
    assert len(ids) == 3
    again = {decode_event(r.value).event_id for r in normalize([event()])}
    assert not ids & again


def test_sent_at_corrects_client_clock_skew():
    # client clock is 2 hours behind: it stamped 09:59 and sent at 10:00 its time
    (record,) = normalize([event(timestamp="2026-11-26T09:59:00Z", sent_at="2026-11-26T10:00:00Z")])
    assert decode_event(record.value).event_time == RECEIVED - timedelta(minutes=1)


def test_offsets_are_converted_to_utc():
    (record,) = normalize([event(timestamp="2026-11-26T17:14:00+05:45")])
    got = decode_event(record.value)
    assert got.event_time == datetime(2026, 11, 26, 11, 29, tzinfo=UTC)
    assert got.event_time.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("events", "index", "field"),
    [
        ([event(), {"type": "x", "timestamp": "2026-11-26T00:00:00Z"}], 1, "merchant_id"),
        ([event(), event(), event(type=5)], 2, "type"),
        ([event(timestamp="2026-11-26T11:59:00")], 0, "timestamp"),
        ([event(timestamp="yesterday")], 0, "timestamp"),
        ([event(merchant_id="")], 0, "merchant_id"),
        ([event(properties=[1, 2])], 0, "properties"),
        ([event(), event(context="web")], 1, "context"),
        ([event(merchantId="m")], 0, "merchantId"),
    ],
)
def test_errors_name_the_event_and_field(events, index, field):
    with pytest.raises(InvalidEventError) as info:
        normalize(events)
    assert (info.value.index, info.value.field) == (index, field)
    assert f"event {index}" in str(info.value)


def test_ndjson_errors_name_the_line():
    with pytest.raises(InvalidEventError) as info:
        normalize([event(), event(), {"type": "x"}], ndjson=True)
    assert info.value.index == 2


def test_bad_json_is_an_invalid_event_error():
    with pytest.raises(InvalidEventError, match="not valid JSON"):
        decode_native(b'[{"type": ', ndjson=False)


def test_future_timestamps_are_rejected_past_the_limit():
    rules = EventRules(max_future=timedelta(hours=1))
    normalize([event(timestamp="2026-11-26T12:59:00Z")], rules)
    with pytest.raises(InvalidEventError) as info:
        normalize([event(), event(timestamp="2026-11-26T13:01:00Z")], rules)
    assert (info.value.index, info.value.field) == (1, "timestamp")


def test_oversized_event_is_rejected_with_its_index():
    rules = EventRules(max_event_bytes=1024)
    big = event(properties={"blob": "x" * 2000})
    with pytest.raises(EventTooLargeError) as info:
        normalize([event(), big], rules)
    assert info.value.index == 1


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)


@given(properties=json_values, context=json_values, source=st.text(max_size=8))
def test_payloads_are_accepted_exactly_when_they_are_objects(properties, context, source):
    body = msgspec.json.encode([event(properties=properties, context=context)])
    events = decode_native(body, ndjson=False)
    if not isinstance(context, dict) or not isinstance(properties, dict):
        with pytest.raises(InvalidEventError) as info:
            normalize_native(events, RECEIVED, source, EventRules())
        assert info.value.field == ("context" if not isinstance(context, dict) else "properties")
        return
    (record,) = normalize_native(events, RECEIVED, source, EventRules())
    stored = decode_event(record.value)
    assert (stored.properties, stored.context, stored.source) == (properties, context, source)


def test_past_timestamps_are_rejected_past_the_limit():
    rules = EventRules(max_past=timedelta(days=365))
    normalize([event(timestamp="2025-11-27T12:00:00Z")], rules)
    for timestamp in ("2025-11-26T11:59:59Z", "0001-01-01T00:00:00Z"):
        with pytest.raises(InvalidEventError) as info:
            normalize([event(), event(timestamp=timestamp)], rules)
        assert (info.value.index, info.value.field, info.value.reason) == (
            1,
            "timestamp",
            "timestamp",
        )
        assert "too far in the past" in info.value.message


@pytest.mark.parametrize(
    ("timestamp", "sent_at", "words"),
    [
        ("0001-01-01T00:00:00+01:00", None, "past"),  # before year 1 in UTC
        ("9999-12-31T23:59:59-01:00", None, "future"),  # after 9999 in UTC
        ("0001-01-01T00:00:00Z", "9999-12-31T00:00:00Z", "past"),  # corrected before year 1
        ("9999-12-31T00:00:00Z", "0001-01-01T00:00:00Z", "future"),
    ],
)
def test_times_beyond_what_a_date_holds_are_errors_not_crashes(timestamp, sent_at, words):
    with pytest.raises(InvalidEventError, match=f"too far in the {words}") as info:
        normalize([event(timestamp=timestamp, sent_at=sent_at)])
    assert info.value.field == "timestamp"


def test_merchant_ids_are_1_to_256_characters():
    normalize([event(merchant_id="m" * 256)])
    for bad in ("m" * 257, ""):
        with pytest.raises(InvalidEventError) as info:
            normalize([event(), event(merchant_id=bad)])
        assert (info.value.index, info.value.field) == (1, "merchant_id")
        assert info.value.reason == "merchant_id"


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("ndjson", [False, True])
@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_json_too_deep_to_decode_names_the_event(ndjson, depth):
    deep = b'{"x": ' + b"[" * depth + b"]" * depth + b"}"
    events = [
        msgspec.json.encode(event()),
        msgspec.json.encode(event())[:-1] + b', "properties": ' + deep + b"}",
    ]
    body = b"\n".join(events) if ndjson else b"[" + b",".join(events) + b"]"
    with pytest.raises(InvalidEventError, match="nested too deeply") as info:
        decode_native(body, ndjson=ndjson)
    assert info.value.index == 1


def test_events_deeper_than_the_limit_are_rejected():
    rules = EventRules(max_depth=8)
    # the record is an array holding the properties object: {"a": [[..1..]]} at depth 1 + 1 + n
    normalize([event(properties={"a": nested(6)})], rules)
    with pytest.raises(InvalidEventError, match="nested more than 8 levels deep") as info:
        normalize([event(), event(properties={"a": nested(7)})], rules)
    assert (info.value.index, info.value.reason) == (1, "too_deep")


@pytest.mark.parametrize("huge", [b"1e400", b"-1E+999", b"9" * 309 + b".5", b"2e308"])
@pytest.mark.parametrize("field", ["properties", "context"])
def test_numbers_no_float_holds_are_refused_naming_the_event(huge: bytes, field: str) -> None:
    # valid JSON, but no reader of the log decodes it: accepted, the event would be lost
    good = msgspec.json.encode(event())
    bad = msgspec.json.encode(event(**{field: {}}))
    bad = bad.replace(
        b'"' + field.encode() + b'":{}', b'"' + field.encode() + b'":{"x":' + huge + b"}"
    )
    with pytest.raises(InvalidEventError) as caught:
        decode_native(b"[" + good + b"," + bad + b"]", ndjson=False)
    assert (caught.value.index, caught.value.field) == (1, field)
    assert "64-bit float" in caught.value.message


def test_big_numbers_a_float_holds_and_numbers_in_strings_are_fine() -> None:
    body = msgspec.json.encode(
        [event(properties={"amount": 1e300, "note": "1e999", "id": 10**40, "tiny": 1e-300})]
    )
    (decoded,) = decode_native(body, ndjson=False)
    (record,) = normalize_native([decoded], datetime(2026, 11, 26, tzinfo=UTC), "s", DEFAULT_RULES)
    assert decode_event(record.value).properties["note"] == "1e999"
