"""The file log's bytes on disk: frames, segment headers, the head, and scanning them.

All integers are little-endian. A **segment** file starts with a segment header and holds
frames of every partition, in the order they were committed::

    segment header (20 + 8·N bytes)
    byte  size  field
       0     4  magic          b"MRS2"
       4     4  crc            CRC-32C of bytes 8..end
       8     8  sequence       the segment's number (its file name, 20 decimal digits)
      16     4  partitions     N
      20   8·N  start offsets  per partition, the offset of its first record in this segment

    frame (40 bytes + payload): one append's records for one partition
    byte  size  field
       0     4  magic          b"MRF2"
       4     4  header_crc     CRC-32C of bytes 8..40
       8     4  payload_len
      12     4  record_count
      16     4  partition
      20     8  base_offset    offset of the frame's first record in its partition
      28     8  timestamp_ms   wall-clock time of the append
      36     4  payload_crc    CRC-32C of the payload
      40     …  payload        msgpack array of [key (str), value (bin)] pairs

Record ``i`` of a frame has offset ``base_offset + i``; a partition's frames continue each
other's offsets across the whole log, starting at the segment header's start offset.

The **head** file (24 + 8·N bytes) is the high watermark and the writers' lock::

       0     4  magic          b"MRH2"
       4     4  crc            CRC-32C of bytes 8..end
       8     8  segment        sequence of the active segment
      16     8  end            bytes of the active segment that are durable and visible
      24   8·N  next offsets   per partition, the offset its next record will get
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import crc32c
import msgspec

from mercato.log.errors import BadFrame

FRAME_MAGIC = b"MRF2"
SEGMENT_MAGIC = b"MRS2"
HEAD_MAGIC = b"MRH2"
_FRAME = struct.Struct("<4sIIIIQQI")
_PREFIX = struct.Struct("<4sIQQ")
FRAME_HEADER_SIZE = _FRAME.size
MAX_PAYLOAD = 2**32 - 1
READ_AHEAD = 256 * 1024

_DECODER = msgspec.msgpack.Decoder(list[tuple[str, bytes]])
ENCODER = msgspec.msgpack.Encoder()


def crc(data: bytes | memoryview) -> int:
    value: int = crc32c.crc32c(data)
    return value


class Frame(NamedTuple):
    pos: int
    payload_len: int
    record_count: int
    partition: int
    base_offset: int
    timestamp_ms: int
    payload_crc: int

    @property
    def end(self) -> int:
        return self.pos + FRAME_HEADER_SIZE + self.payload_len


class Head(NamedTuple):
    segment: int
    end: int
    next_offsets: tuple[int, ...]


def frame_header(
    payload_len: int, count: int, partition: int, base: int, timestamp_ms: int, payload_crc: int
) -> bytes:
    body = _FRAME.pack(
        FRAME_MAGIC, 0, payload_len, count, partition, base, timestamp_ms, payload_crc
    )[8:]
    return FRAME_MAGIC + struct.pack("<I", crc(body)) + body


def parse_frame_header(buf: bytes | memoryview, off: int, pos: int, partitions: int) -> Frame:
    magic, header_crc, *fields = _FRAME.unpack_from(buf, off)
    if magic != FRAME_MAGIC:
        raise BadFrame(pos, "bad magic")
    if crc(buf[off + 8 : off + FRAME_HEADER_SIZE]) != header_crc:
        raise BadFrame(pos, "header checksum mismatch")
    frame = Frame(pos, *fields)
    if frame.partition >= partitions:
        raise BadFrame(pos, f"partition {frame.partition} does not exist")
    return frame


def decode_payload(frame: Frame, payload: bytes | memoryview) -> list[tuple[str, bytes]]:
    try:
        records = _DECODER.decode(payload)
    except msgspec.DecodeError as exc:
        raise BadFrame(frame.pos, f"payload does not decode: {exc}") from None
    if len(records) != frame.record_count:
        raise BadFrame(frame.pos, f"{len(records)} records, header says {frame.record_count}")
    return records


def encode_frame(
    partition: int, base_offset: int, timestamp_ms: int, records: Sequence[tuple[str, bytes]]
) -> bytes:
    """One frame holding ``records`` (key, value pairs), exactly as stored in a segment."""
    payload = ENCODER.encode(list(records))
    header = frame_header(
        len(payload), len(records), partition, base_offset, timestamp_ms, crc(payload)
    )
    return header + payload


def decode_frame(data: bytes, partitions: int) -> tuple[Frame, list[tuple[str, bytes]]]:
    """The header and records of the frame ``data``; raises :class:`BadFrame` if invalid."""
    if len(data) < FRAME_HEADER_SIZE:
        raise BadFrame(0, "incomplete frame header")
    frame = parse_frame_header(data, 0, 0, partitions)
    if frame.end != len(data):
        raise BadFrame(0, f"the header says {frame.end} bytes, got {len(data)}")
    payload = memoryview(data)[FRAME_HEADER_SIZE:]
    if crc(payload) != frame.payload_crc:
        raise BadFrame(0, "payload checksum mismatch")
    return frame, decode_payload(frame, payload)


def _fixed_with_crc(magic: bytes, first: int, second: int, offsets: Sequence[int]) -> bytes:
    body = struct.pack(f"<QQ{len(offsets)}Q", first, second, *offsets)
    return magic + struct.pack("<I", crc(body)) + body


def segment_header_size(partitions: int) -> int:
    return _PREFIX.size + 8 * partitions - 4


def encode_segment_header(sequence: int, starts: Sequence[int]) -> bytes:
    body = struct.pack(f"<QI{len(starts)}Q", sequence, len(starts), *starts)
    return SEGMENT_MAGIC + struct.pack("<I", crc(body)) + body


def decode_segment_header(data: bytes, partitions: int) -> tuple[int, tuple[int, ...]] | None:
    """``(sequence, start offsets)``, or ``None`` when ``data`` is not a valid header."""
    if len(data) != segment_header_size(partitions) or data[:4] != SEGMENT_MAGIC:
        return None
    if crc(data[8:]) != struct.unpack_from("<I", data, 4)[0]:
        return None
    sequence, count, *starts = struct.unpack_from(f"<QI{partitions}Q", data, 8)
    if count != partitions:
        return None
    return sequence, tuple(starts)


def head_size(partitions: int) -> int:
    return _PREFIX.size + 8 * partitions


def encode_head(head: Head) -> bytes:
    return _fixed_with_crc(HEAD_MAGIC, head.segment, head.end, head.next_offsets)


def decode_head(data: bytes, partitions: int) -> Head | None:
    if len(data) != head_size(partitions) or data[:4] != HEAD_MAGIC:
        return None
    if crc(data[8:]) != struct.unpack_from("<I", data, 4)[0]:
        return None
    segment, end, *offsets = struct.unpack_from(f"<QQ{partitions}Q", data, 8)
    return Head(segment, end, tuple(offsets))


def frames(
    fd: int,
    pos: int,
    limit: int,
    expected: list[int] | None,
    partitions: int,
    *,
    payloads: bool,
) -> Iterator[tuple[Frame, memoryview]]:
    """The frames from byte ``pos`` up to ``limit``, checked; payloads too with ``payloads``.

    ``expected`` holds each partition's next offset and is advanced in place; a frame that does
    not continue its partition is invalid. Raises :class:`BadFrame` at the first frame that is
    invalid or does not end by ``limit``. Reads ahead so that small frames cost no syscall.
    """
    empty = memoryview(b"")
    buf, at = empty, pos
    while pos < limit:
        off = pos - at
        if off + FRAME_HEADER_SIZE > len(buf):
            buf, at, off = memoryview(os.pread(fd, min(READ_AHEAD, limit - pos), pos)), pos, 0
            if len(buf) < FRAME_HEADER_SIZE:
                raise BadFrame(pos, "incomplete frame header")
        frame = parse_frame_header(buf, off, pos, partitions)
        if frame.end > limit:
            raise BadFrame(pos, "incomplete frame")
        if expected is not None and frame.base_offset != expected[frame.partition]:
            raise BadFrame(
                pos,
                f"partition {frame.partition} offset {frame.base_offset}, "
                f"expected {expected[frame.partition]}",
            )
        payload = empty
        if payloads:
            size = FRAME_HEADER_SIZE + frame.payload_len
            if off + size > len(buf):
                buf, at, off = memoryview(os.pread(fd, max(size, READ_AHEAD), pos)), pos, 0
                if len(buf) < size:
                    raise BadFrame(pos, "incomplete frame")
            payload = buf[off + FRAME_HEADER_SIZE : off + size]
            if crc(payload) != frame.payload_crc:
                raise BadFrame(pos, "payload checksum mismatch")
        if expected is not None:
            expected[frame.partition] = frame.base_offset + frame.record_count
        yield frame, payload
        pos = frame.end


def find_valid_frame(fd: int, start: int, size: int, partitions: int) -> int | None:
    """The position of the first valid frame at or after byte ``start``, if there is one."""
    pos = start
    while pos < size:
        chunk = os.pread(fd, min(READ_AHEAD, size - pos), pos)
        i = chunk.find(FRAME_MAGIC)
        while i != -1:
            try:
                next(frames(fd, pos + i, size, None, partitions, payloads=True))
                return pos + i
            except (BadFrame, StopIteration):
                i = chunk.find(FRAME_MAGIC, i + 1)
        if not chunk or pos + len(chunk) >= size:
            return None
        pos += len(chunk) - (len(FRAME_MAGIC) - 1)  # a magic split between chunks: next time
    return None


def pwrite_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, pos)
        if written <= 0:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        view, pos = view[written:], pos + written


_IOV_MAX = 512


def pwritev_all(fd: int, pieces: Sequence[bytes], pos: int) -> int:
    """Write ``pieces`` back to back at ``pos`` without joining them; return the bytes written."""
    start = pos
    for i in range(0, len(pieces), _IOV_MAX):
        batch = pieces[i : i + _IOV_MAX]
        size = sum(len(piece) for piece in batch)
        written = os.pwritev(fd, batch, pos)
        if written < size:  # rare for regular files: finish the rest the slow way
            pwrite_all(fd, b"".join(batch)[written:], pos + written)
        pos += size
    return pos - start


def describe(exc: OSError) -> str:
    return exc.strerror or os.strerror(exc.errno or errno.EIO)


def segment_name(sequence: int) -> str:
    return f"{sequence:020d}.log"


def list_segments(directory: str | os.PathLike[str]) -> list[int]:
    return sorted(
        int(name[:20])
        for name in os.listdir(directory)
        if len(name) == 24 and name.endswith(".log") and name[:20].isdigit()
    )
