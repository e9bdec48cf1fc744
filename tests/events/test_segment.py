from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from mercato.events.errors import InvalidEventError
from mercato.events.model import decode_event
from mercato.events.rules import EventRules
from mercato.events.segment import decode_batch, decode_single, normalize_segment

RECEIVED = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


DEFAULT_RULES = EventRules()


def normalize_batch(body, rules=DEFAULT_RULES):
    """The events of a batch; raises the first rejection's error."""
    batch = decode_batch(msgspec.json.encode(body))
    records, rejections = normalize_segment(batch, RECEIVED, "web", rules)
    if rejections:
        raise rejections[0].error
    return [decode_event(r.value) for r in records]


def track(**overrides):
    base = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "msg-1",
        "properties": {"merchant_id": "m_7", "revenue": 1999},
    }
    return {**base, **overrides}


def test_track_in_a_batch():
    (got,) = normalize_batch({"batch": [track()], "sentAt": "2026-11-26T12:00:00Z"})
    assert got.event_id == "msg-1"
    assert got.type == "Order Completed"
    assert got.merchant_id == "m_7"
    assert got.properties["revenue"] == 1999
    assert got.source == "web"


def test_timestamp_correction_uses_sent_at_and_original_timestamp():
    # device clock 3 hours fast: originalTimestamp and sentAt both read 3 h ahead
    (got,) = normalize_batch(
        {
            "batch": [track(originalTimestamp="2026-11-26T14:59:50Z")],
            "sentAt": "2026-11-26T15:00:00Z",
        }
    )
    assert got.event_time == RECEIVED - timedelta(seconds=10)
    assert got.original_timestamp == datetime(2026, 11, 26, 14, 59, 50, tzinfo=UTC)
    assert got.sent_at == datetime(2026, 11, 26, 15, 0, tzinfo=UTC)


def test_message_sent_at_wins_over_batch_sent_at():
    (got,) = normalize_batch(
        {
            "batch": [
                track(originalTimestamp="2026-11-26T10:00:00Z", sentAt="2026-11-26T10:00:30Z")
            ],
            "sentAt": "2026-11-26T10:05:00Z",
        }
    )
    assert got.event_time == RECEIVED - timedelta(seconds=30)


def test_client_set_timestamp_is_used_as_is():
    (got,) = normalize_batch(
        {
            "batch": [
                track(timestamp="2026-11-20T08:00:00Z", originalTimestamp="2026-11-26T11:00:00Z")
            ],
            "sentAt": "2026-11-26T11:00:05Z",
        }
    )
    assert got.event_time == datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def test_no_times_at_all_means_received_at():
    (got,) = normalize_batch({"batch": [track()]})
    assert got.event_time == RECEIVED


def test_merchant_id_falls_back_to_context_group_id():
    (got,) = normalize_batch(
        {"batch": [track(properties={"revenue": 5}, context={"groupId": "m_9"})]}
    )
    assert got.merchant_id == "m_9"


def test_merchant_id_paths_are_configurable():
    rules = EventRules(merchant_id_paths=("traits.shop",))
    message = {"type": "identify", "userId": "u1", "traits": {"shop": "m_3", "plan": "pro"}}
    (got,) = normalize_batch({"batch": [message]}, rules)
    assert got.merchant_id == "m_3"
    assert got.type == "identify"
    assert got.properties == {"shop": "m_3", "plan": "pro"}
    assert got.context["userId"] == "u1"


def test_batch_context_is_overlaid_by_message_context_and_ids_are_kept():
    (got,) = normalize_batch(
        {
            "batch": [track(context={"ip": "1.2.3.4"}, anonymousId="anon", userId="u")],
            "context": {"library": {"name": "analytics-python"}, "ip": "0.0.0.0"},
        }
    )
    assert got.context == {
        "library": {"name": "analytics-python"},
        "ip": "1.2.3.4",
        "anonymousId": "anon",
        "userId": "u",
    }


@pytest.mark.parametrize("call", ["page", "screen"])
def test_page_and_screen_names(call):
    (got,) = normalize_batch(
        {"batch": [{"type": call, "name": "Home", "properties": {"merchant_id": "m_1"}}]}
    )
    assert got.type == call
    assert got.properties == {"merchant_id": "m_1", "name": "Home"}


def test_single_call_endpoint_sets_the_type():
    batch = decode_single(
        msgspec.json.encode({"event": "Signed Up", "properties": {"merchant_id": "m"}}), "track"
    )
    (record,), [] = normalize_segment(batch, RECEIVED, "web", EventRules())
    assert decode_event(record.value).type == "Signed Up"


def test_missing_message_ids_are_generated():
    got = normalize_batch({"batch": [track(messageId=None), track(messageId=None)]})
    assert got[0].event_id != got[1].event_id


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (track(event=None), "event"),
        (track(properties={}), "properties.merchant_id"),
        (track(type="purchase"), "type"),
        (track(originalTimestamp="not a time"), "originalTimestamp"),
        (track(timestamp="2026-11-28T12:00:01Z"), "timestamp"),
    ],
)
def test_errors_name_the_message_and_field(message, field):
    with pytest.raises(InvalidEventError) as info:
        normalize_batch({"batch": [track(), message]})
    assert (info.value.index, info.value.field) == (1, field)


def nested_list(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def rejected(body, rules=DEFAULT_RULES):
    batch = decode_batch(body if isinstance(body, bytes) else msgspec.json.encode(body))
    records, rejections = normalize_segment(batch, RECEIVED, "web", rules)
    return [decode_event(r.value) for r in records], rejections


def test_each_message_is_judged_alone():
    good, bad = rejected({"batch": [track(messageId="a"), track(event=None), track(messageId="c")]})
    assert [e.event_id for e in good] == ["a", "c"]
    (rejection,) = bad
    assert (rejection.index, rejection.error.field, rejection.error.reason) == (
        1,
        "event",
        "schema",
    )
    assert msgspec.json.decode(rejection.message) == track(event=None)
    assert rejection.event_id == "msg-1"


def test_a_rejected_message_without_id_keeps_the_id_it_was_given():
    _, (rejection,) = rejected({"batch": [track(messageId=None, properties={})]})
    assert rejection.event_id
    assert rejection.event_id != "msg-1"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"type": "track", "event": "x", "userId": [1]}, "schema"),
        (3, "schema"),
        (track(properties={"merchant_id": "m" * 257}), "merchant_id"),
        (track(properties={"merchant_id": ""}), "merchant_id"),
        (track(properties={"merchant_id": "x"}, context={"groupId": "m" * 300}), None),
        (track(timestamp="0001-01-01T00:00:00Z"), "timestamp"),
        (track(originalTimestamp="2000-01-01T00:00:00Z"), "timestamp"),
        (
            track(originalTimestamp="0001-01-01T00:00:00Z", sentAt="9999-12-31T00:00:00Z"),
            "timestamp",
        ),
        (track(timestamp="0001-01-01T00:00:00+01:00"), "timestamp"),
        (track(properties={"merchant_id": "m", "blob": "x" * 40_000}), "too_large"),
        (track(properties={"merchant_id": "m", "deep": [[[[[[[[[[1]]]]]]]]]]}), None),
        (track(properties={"merchant_id": "m", "deep": nested_list(70)}), "too_deep"),
    ],
)
def test_why_a_message_is_rejected(message, reason):
    good, bad = rejected({"batch": [track(messageId="ok"), message]})
    assert [e.event_id for e in good] == ["ok"] + ([] if reason else ["msg-1"])
    assert [r.error.reason for r in bad] == ([reason] if reason else [])
    assert all(r.index == 1 and r.error.message.startswith("event 1") for r in bad)


def test_merchant_ids_from_the_configured_path_get_the_same_rule_as_native_ones():
    rules = EventRules(merchant_id_paths=("context.groupId",))
    good, _ = rejected({"batch": [track(context={"groupId": "m" * 256})]}, rules)
    assert good[0].merchant_id == "m" * 256
    _, (bad,) = rejected({"batch": [track(context={"groupId": "m" * 257})]}, rules)
    assert (bad.error.field, bad.error.reason) == ("context.groupId", "merchant_id")
    assert "1 to 256 characters" in bad.error.message


@pytest.mark.parametrize("depth", [1_000, 200_000])
def test_a_message_too_deep_to_decode_is_rejected_alone(depth):
    deep = b"[" * depth + b"]" * depth
    bad_message = b'{"type": "track", "event": "x", "properties": {"deep": ' + deep + b"}}"
    ok = msgspec.json.encode(track(messageId="ok"))
    body = (
        b'{"sentAt": "2026-11-26T12:00:00Z", "batch": ['
        + ok
        + b", "
        + bad_message
        + b", "
        + ok
        + b"]}"
    )
    good, (bad,) = rejected(body)
    assert [e.event_id for e in good] == ["ok", "ok"]
    assert (bad.index, bad.error.reason) == (1, "malformed")
    assert "nested too deeply" in bad.error.message
    assert bad.message == bad_message


@pytest.mark.parametrize(
    "body",
    [
        b'{"batch": [{"type": "track"}, ' + b"[" * 5000 + b"]" * 5000 + b"], oops}",
        b'{"batch": [{"type": "track"}, ' + b"[" * 5000 + b"]" * 5000 + b", {]}",
        b'{"context": ' + b"[" * 5000 + b"]" * 5000 + b', "batch": []}',
        b'{"batch": ' + b"{" * 5000,
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_a_request_that_is_not_json_or_too_deep_as_a_whole_is_an_error(body):
    with pytest.raises(InvalidEventError):
        decode_batch(body)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"batch": {}}, "batch"),
        ({"batch": [], "sentAt": "yesterday"}, "sentAt"),
        ({"batch": [], "context": []}, "context"),
        ({"batch": [], "writeKey": 5}, "writeKey"),
    ],
)
def test_what_the_messages_share_is_checked_for_the_whole_request(body, field):
    with pytest.raises(InvalidEventError) as info:
        decode_batch(msgspec.json.encode(body))
    assert info.value.field == field
    assert info.value.index is None
