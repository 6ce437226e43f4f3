"""Records of a segment file as bytes: encoding, checking, and telling a torn tail from damage.

The sans-I/O half of the on-disk log (broker/storage/segments.py does the file work).
A record is a fixed header and a body, big-endian:

    +------------+-----------+-----------------+-----------+------------------+
    | length u32 | crc32 u32 | first seq u64   | ts_us u64 | body (length)    |
    +------------+-----------+-----------------+-----------+------------------+

The CRC covers the seq, ts_us and the body (and in a run record the length
word too, so that no flipped bit turns one kind into the other). A **run record** (the top bit of
`length` set; the rest is the body's length) holds one PUB's run of payloads,
as a Kafka record batch does: its body is `count u32`, `count` sizes (u32)
and the payloads, one after the other; one header and one CRC for the whole
run keep the per-message work of a broker on disk to a few C calls. A record
without that bit (what brokers before run records wrote, still read) holds
one payload: its body is the payload.

`scan` checks records one by one and, where the good part ends early, decides
what the rest is: a crash mid-write can only leave the *last* record short,
or a prefix of it followed by zeros, so anything else (an impossible length,
a bad record with intact records or non-zero bytes after it) is damage.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from dataclasses import dataclass, field
from itertools import accumulate
from typing import NamedTuple

HEADER = struct.Struct(">IIQQ")
CRC_PART = struct.Struct(">QQ")  # the header fields a single record's CRC covers
RUN_CRC_PART = struct.Struct(">IQQ")  # a run's: its length word too, so the flag is covered
COUNT = struct.Struct(">I")
RUN_FLAG = 0x8000_0000
MAX_RECORD_BYTES = 64 * 1024 * 1024  # a larger body can only be damage
_SEQ_AT = 8  # where the seq sits in the header


class Record(NamedTuple):
    """An intact record found in a buffer: its seqs, its stamp and where it ends."""

    first_seq: int
    messages: int
    stamp_us: int
    end: int  # the offset just past it, in the same buffer
    sizes: array[int] | None = None  # a run's payload sizes (checked once, read back here)


def encode_run(first_seq: int, stamp_us: int, payloads: list[bytes]) -> bytes:
    """One run record for `payloads` (seqs from `first_seq`), ready to append; at most
    MAX_RECORD_BYTES of body each: a longer run is several records."""
    if (len(payloads) > 1  # one payload is at most --max-frame, which --data-dir bounds
            and sum(map(len, payloads)) + 4 * len(payloads) + COUNT.size > MAX_RECORD_BYTES):
        half = len(payloads) // 2
        return (encode_run(first_seq, stamp_us, payloads[:half])
                + encode_run(first_seq + half, stamp_us, payloads[half:]))
    sizes = array("I", map(len, payloads))
    if sys.byteorder == "little":
        sizes.byteswap()
    body = b"".join([COUNT.pack(len(payloads)), sizes.tobytes(), *payloads])
    length = RUN_FLAG | len(body)
    crc = zlib.crc32(body, zlib.crc32(RUN_CRC_PART.pack(length, first_seq, stamp_us)))
    return HEADER.pack(length, crc, first_seq, stamp_us) + body


def encode_records(first_seq: int, stamp_us: int, payloads: list[bytes]) -> bytes:
    """One single-payload record per payload: the format brokers before run records
    wrote, which every broker still reads (kept for the tests that prove it)."""
    parts = []
    for seq, payload in enumerate(payloads, first_seq):
        crc = zlib.crc32(payload, zlib.crc32(CRC_PART.pack(seq, stamp_us)))
        parts += [HEADER.pack(len(payload), crc, seq, stamp_us), payload]
    return b"".join(parts)


def record_at(data: bytes | memoryview, position: int) -> Record | None:
    """The intact record (whole, CRC-correct, its sizes adding up) at `position`, or None."""
    if len(data) - position < HEADER.size:
        return None
    length, crc, first_seq, stamp = HEADER.unpack_from(data, position)
    body_length = length & ~RUN_FLAG
    start = position + HEADER.size
    end = start + body_length
    if body_length > MAX_RECORD_BYTES or end > len(data):
        return None
    covered = (RUN_CRC_PART.pack(length, first_seq, stamp) if length & RUN_FLAG
               else CRC_PART.pack(first_seq, stamp))
    computed: int = zlib.crc32(data[start:end], zlib.crc32(covered))
    if computed != crc:
        return None
    if not length & RUN_FLAG:
        return Record(first_seq, 1, stamp, end)
    count = COUNT.unpack_from(data, start)[0] if body_length >= COUNT.size else 0
    table = COUNT.size + 4 * count
    if not count or table > body_length:
        return None
    sizes = _sizes(data, start, count)
    if sum(sizes) != body_length - table:
        return None  # a CRC-correct record that does not add up: never written by a broker
    return Record(first_seq, count, stamp, end, sizes)


def payloads_of(data: bytes | memoryview, position: int, record: Record) -> list[bytes]:
    """The payloads of the intact `record` that starts at `position`."""
    start = position + HEADER.size
    if record.sizes is None:  # a single-payload record: its body is the payload
        return [bytes(data[start:record.end])]
    body = bytes(data[start + COUNT.size + 4 * record.messages:record.end])
    ends = list(accumulate(record.sizes))
    return [body[begin:end] for begin, end in zip([0, *ends], ends, strict=False)]


def _sizes(data: bytes | memoryview, start: int, count: int) -> array[int]:
    """The size table of the run record whose body begins at `start`."""
    sizes = array("I")
    sizes.frombytes(data[start + COUNT.size:start + COUNT.size + 4 * count])
    if sys.byteorder == "little":
        sizes.byteswap()
    return sizes


def find_next_record(data: bytes | memoryview, start: int, min_seq: int) -> int | None:
    """The offset of the first intact record at or after `start` whose first seq is at
    least `min_seq`, found by searching for the seq's high bytes (every record near it
    shares them, or those of the next 2**24 seqs): how reading resumes after damage."""
    haystack = bytes(data) if isinstance(data, memoryview) else data
    found: list[int] = []
    for near in (min_seq, min_seq + (1 << 24)):
        prefix = near.to_bytes(8, "big")[:5]
        position = start
        while True:
            hit = haystack.find(prefix, position + _SEQ_AT)
            if hit < 0:
                break
            candidate = hit - _SEQ_AT
            if (candidate >= start and len(haystack) - candidate >= HEADER.size
                    and HEADER.unpack_from(haystack, candidate)[2] >= min_seq
                    and record_at(haystack, candidate) is not None):
                found.append(candidate)
                break
            position = candidate + 1
    return min(found) if found else None


@dataclass
class Scan:
    """What `scan` found: every good message's seq, stamp and the offset of its record,
    where the good part ends, and why it ended early, if it did: `torn` (a crash
    mid-write: cut it) or `corrupt` (damage: never cut without being told)."""

    seqs: array[int] = field(default_factory=lambda: array("Q"))
    stamps: array[int] = field(default_factory=lambda: array("Q"))
    offsets: array[int] = field(default_factory=lambda: array("Q"))
    end: int = 0  # offset just past the last good record
    torn: str | None = None
    corrupt: str | None = None
    resumes_at: int | None = None  # with `corrupt`: an intact record after the damage

    @property
    def count(self) -> int:
        return len(self.seqs)


def scan(data: bytes | memoryview, start: int = 0, expect_seq: int | None = None,
         base_offset: int = 0) -> Scan:
    """Check the records in `data` from `start`; offsets in the result add `base_offset`."""
    result = Scan(end=base_offset + start)
    size = len(data)
    position = start
    while position < size:
        record = record_at(data, position)
        if record is None or (expect_seq is not None and record.first_seq != expect_seq):
            problem = _problem_at(data, position, record, expect_seq, base_offset)
            _classify_tail(result, data, position, problem, expect_seq, base_offset)
            break
        seqs = range(record.first_seq, record.first_seq + record.messages)
        result.seqs.extend(seqs)
        result.stamps.extend([record.stamp_us] * record.messages)
        result.offsets.extend([base_offset + position] * record.messages)
        expect_seq = seqs.stop
        position = record.end
        result.end = base_offset + position
    return result


def _problem_at(data: bytes | memoryview, position: int, record: Record | None,
                expect_seq: int | None, base_offset: int) -> str:
    """Why the record at `position` is not the good one expected."""
    where = base_offset + position
    size = len(data)
    if size - position < HEADER.size:
        return f"{size - position} bytes of a record header at offset {where:,}"
    length = HEADER.unpack_from(data, position)[0] & ~RUN_FLAG
    if length > MAX_RECORD_BYTES:
        return f"record length {length:,} at offset {where:,} is impossible"
    if position + HEADER.size + length > size:
        return (f"record at offset {where:,} is cut short: {size - position:,} of "
                f"{HEADER.size + length:,} bytes")
    if record is None:
        return f"record at offset {where:,} fails its CRC"
    return f"record at offset {where:,} has seq {record.first_seq:,}, expected {expect_seq:,}"


def _classify_tail(result: Scan, data: bytes | memoryview, position: int, problem: str,
                   expect_seq: int | None, base_offset: int) -> None:
    """The records end early at `position`: is the rest a torn last write, or damage?"""
    rest = data[position:]
    if not any(rest):  # the size reached the disk, the data did not: the usual power loss
        result.torn = f"{len(rest):,} zero bytes from offset {base_offset + position:,}"
        return
    if len(rest) < HEADER.size:
        result.torn = problem + " (the last record: a torn write)"
        return
    length = HEADER.unpack_from(data, position)[0] & ~RUN_FLAG
    if expect_seq is not None:
        resume = find_next_record(data, position + 1, expect_seq + 1)
        if resume is not None:
            result.corrupt = (f"{problem}, with intact records after it "
                              f"(from offset {base_offset + resume:,})")
            result.resumes_at = base_offset + resume
            return
    if length > MAX_RECORD_BYTES:
        result.corrupt = problem  # a torn write keeps a prefix of a real length, never this
        return
    end = position + HEADER.size + length
    if end >= len(data) or not any(data[end:]):
        result.torn = problem + " (the last record: a torn write)"
    else:
        result.corrupt = f"{problem}, with non-zero bytes after it"
