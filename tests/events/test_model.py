from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mercato.events.model import (
    NormalizedEvent,
    ObjectEvent,
    OutgoingEvent,
    correct_time,
    decode_event,
    encode_event,
)
from mercato.metrics.batch import BatchBuilder
from mercato.metrics.definitions import load_definitions

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=20)
)
json_objects = st.dictionaries(
    st.text(max_size=10),
    st.recursive(
        json_scalars,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        max_leaves=8,
    ),
    max_size=5,
)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
texts = st.text(min_size=1, max_size=40)


@given(
    event_id=texts,
    merchant_id=texts,
    type_=texts,
    event_time=times,
    original=st.none() | times,
    sent_at=st.none() | times,
    received_at=times,
    properties=json_objects,
    context=json_objects,
    source=st.text(max_size=20),
)
def test_normalized_event_round_trips(
    event_id,
    merchant_id,
    type_,
    event_time,
    original,
    sent_at,
    received_at,
    properties,
    context,
    source,
):
    event = NormalizedEvent(
        event_id=event_id,
        merchant_id=merchant_id,
        type=type_,
        event_time=event_time,
        original_timestamp=original,
        sent_at=sent_at,
        received_at=received_at,
        properties=properties,
        context=context,
        source=source,
    )
    assert decode_event(encode_event(event)) == event


@given(properties=json_objects, context=json_objects, at=times)
def test_writer_view_with_raw_payloads_reads_back_as_the_normalized_event(properties, context, at):
    outgoing = OutgoingEvent(
        "e1",
        "m1",
        "t",
        at,
        at,
        None,
        at,
        msgspec.Raw(msgspec.json.encode(properties)),
        msgspec.Raw(msgspec.json.encode(context)),
        "web",
    )
    decoded = decode_event(encode_event(outgoing))
    assert decoded.properties == properties
    assert decoded.context == context
    assert decoded.event_time == at


def test_field_order_is_the_documented_one():
    assert OutgoingEvent.__struct_fields__ == NormalizedEvent.__struct_fields__


def test_correct_time_applies_segment_rule():
    received = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    original = datetime(2026, 1, 1, 13, 0, tzinfo=UTC)  # client clock one hour fast
    sent = datetime(2026, 1, 1, 13, 0, 5, tzinfo=UTC)
    assert correct_time(original, sent, received) == received - timedelta(seconds=5)


def test_correct_time_without_sent_at_converts_to_utc():
    kolkata = timezone(timedelta(hours=5, minutes=30))
    original = datetime(2026, 1, 1, 5, 30, tzinfo=kolkata)
    corrected = correct_time(original, None, datetime(2026, 1, 2, tzinfo=UTC))
    assert corrected == datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    assert corrected.tzinfo is UTC


def test_decode_rejects_a_record_without_merchant():
    with pytest.raises(msgspec.ValidationError, match="merchant_id"):
        decode_event(
            b'{"event_id":"e","type":"t","event_time":"2026-01-01T00:00:00Z",'
            b'"received_at":"2026-01-01T00:00:00Z"}'
        )


def test_object_form_from_direct_producers_reads_the_same():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    event = NormalizedEvent(
        event_id="e", merchant_id="m", type="t", event_time=at, received_at=at, properties={"a": 1}
    )
    as_object = encode_event(ObjectEvent(**msgspec.structs.asdict(event)))
    assert as_object.startswith(b'{"event_id":"e"')
    assert decode_event(as_object) == event
    assert decode_event(encode_event(event)) == event
    assert encode_event(event).startswith(b'["e","m","t"')


@pytest.mark.parametrize("space", [b" ", b"\n", b"\r\n\t "])
def test_records_opening_with_whitespace_decode_in_both_forms(space: bytes) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    event = NormalizedEvent(event_id="e", merchant_id="m", type="t", event_time=at, received_at=at)
    as_object = encode_event(ObjectEvent(**msgspec.structs.asdict(event)))
    for value in (space + as_object, space + encode_event(event)):
        assert decode_event(value) == event
        decoded = BatchBuilder(load_definitions()).decode([value, encode_event(event)])
        assert [e.event_id for e in decoded] == ["e", "e"]
