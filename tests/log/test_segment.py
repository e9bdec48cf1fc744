"""The file log's byte formats: frames, segment headers and the head."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercato.log.errors import BadFrame
from mercato.log.segment import (
    FRAME_HEADER_SIZE,
    Head,
    decode_frame,
    decode_head,
    decode_segment_header,
    encode_frame,
    encode_head,
    encode_segment_header,
    head_size,
    segment_header_size,
)

U64 = st.integers(min_value=0, max_value=2**64 - 1)
RECORDS = st.lists(st.tuples(st.text(), st.binary()), max_size=20)


@st.composite
def partitioned(draw: st.DrawFn) -> tuple[int, int]:
    """A partition count and a partition of it."""
    partitions = draw(st.integers(min_value=1, max_value=2**16))
    return partitions, draw(st.integers(min_value=0, max_value=partitions - 1))


@settings(max_examples=300, deadline=None)
@given(layout=partitioned(), base=U64, stamp=U64, records=RECORDS)
def test_frame_round_trip(
    layout: tuple[int, int], base: int, stamp: int, records: list[tuple[str, bytes]]
) -> None:
    partitions, partition = layout
    data = encode_frame(partition, base, stamp, records)
    assert data[:4] == b"MRF2"
    frame, decoded = decode_frame(data, partitions)
    assert decoded == records
    assert (frame.partition, frame.base_offset, frame.timestamp_ms) == (partition, base, stamp)
    assert (frame.pos, frame.end, frame.record_count) == (0, len(data), len(records))
    assert frame.payload_len == len(data) - FRAME_HEADER_SIZE
    with pytest.raises(BadFrame, match="does not exist"):  # a log with fewer partitions
        decode_frame(data, partition)


@settings(max_examples=300, deadline=None)
@given(records=RECORDS, data=st.data())
def test_any_flipped_bit_in_a_frame_is_detected(
    records: list[tuple[str, bytes]], data: st.DataObject
) -> None:
    frame = bytearray(encode_frame(2, 7, 1234, records))
    byte = data.draw(st.integers(min_value=0, max_value=len(frame) - 1), label="byte")
    frame[byte] ^= 1 << data.draw(st.integers(min_value=0, max_value=7), label="bit")
    with pytest.raises(BadFrame):
        decode_frame(bytes(frame), 4)


@pytest.mark.parametrize("cut", [0, 1, FRAME_HEADER_SIZE - 1, FRAME_HEADER_SIZE, -1])
def test_truncated_frame_is_refused(cut: int) -> None:
    data = encode_frame(0, 0, 0, [("k", b"value")])
    with pytest.raises(BadFrame):
        decode_frame(data[:cut], 1)


@settings(max_examples=100, deadline=None)
@given(sequence=U64, starts=st.lists(U64, min_size=1, max_size=64))
def test_segment_header_round_trip(sequence: int, starts: list[int]) -> None:
    data = encode_segment_header(sequence, starts)
    assert len(data) == segment_header_size(len(starts)) == 20 + 8 * len(starts)
    assert decode_segment_header(data, len(starts)) == (sequence, tuple(starts))
    assert decode_segment_header(data, len(starts) + 1) is None
    for byte in range(len(data)):
        damaged = bytearray(data)
        damaged[byte] ^= 0x10
        assert decode_segment_header(bytes(damaged), len(starts)) is None


@settings(max_examples=100, deadline=None)
@given(segment=U64, end=U64, offsets=st.lists(U64, min_size=1, max_size=64))
def test_head_round_trip(segment: int, end: int, offsets: list[int]) -> None:
    head = Head(segment, end, tuple(offsets))
    data = encode_head(head)
    assert len(data) == head_size(len(offsets)) == 24 + 8 * len(offsets)
    assert decode_head(data, len(offsets)) == head
    assert decode_head(data[:-1], len(offsets)) is None
    for byte in range(len(data)):
        damaged = bytearray(data)
        damaged[byte] ^= 0x01
        assert decode_head(bytes(damaged), len(offsets)) is None


def test_pwritev_all_writes_more_pieces_than_one_call_takes(tmp_path):
    import os

    from mercato.log.segment import pwritev_all

    pieces = [bytes([i % 251]) * (i % 7 + 1) for i in range(2000)]
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        os.pwrite(fd, b"head", 0)
        written = pwritev_all(fd, pieces, 4)
        assert written == sum(map(len, pieces))
        assert os.pread(fd, written + 10, 0) == b"head" + b"".join(pieces)
    finally:
        os.close(fd)
