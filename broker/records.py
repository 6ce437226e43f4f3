"""Records of a segment file as bytes: encoding, checking, and telling a torn tail from damage.

The sans-I/O half of the on-disk log (broker/segments.py does the file work).
A record is a fixed header and the payload:

    +-----------+-----------+---------+-----------+-----------------+
    | length u32| crc32 u32 | seq u64 | ts_us u64 | payload (length)|
    +-----------+-----------+---------+-----------+-----------------+

big-endian; the CRC covers seq, ts_us and the payload. `scan` checks records
one by one and, where the good part ends early, decides what the rest is: a
crash mid-write can only leave the *last* record short, or a prefix of it
followed by zeros, so anything else (an impossible length, a bad record with
intact records or non-zero bytes after it) is damage.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from dataclasses import dataclass, field

HEADER = struct.Struct(">IIQQ")
CRC_PART = struct.Struct(">QQ")  # the header fields the CRC covers
MAX_RECORD_BYTES = 64 * 1024 * 1024  # a larger length field can only be damage
_SEQ_AT = 8  # where the seq sits in the header


def encode_records(first_seq: int, stamp_us: int, payloads: list[bytes]) -> bytes:
    """The records for `payloads`, seqs from `first_seq`, ready to append to a segment.
    The hot path of a broker on disk: one comprehension for the headers, then headers
    and payloads interleaved by slice assignment, so the per-message work is C calls."""
    pack, covered, crc32 = HEADER.pack, CRC_PART.pack, zlib.crc32
    parts: list[bytes] = [b""] * (2 * len(payloads))
    parts[::2] = [pack(len(payload), crc32(payload, crc32(covered(seq, stamp_us))), seq,
                       stamp_us) for seq, payload in enumerate(payloads, first_seq)]
    parts[1::2] = payloads
    return b"".join(parts)


def record_is_intact(data: bytes | memoryview, position: int, seq: int | None = None) -> bool:
    """Whether a whole, CRC-correct record (with seq `seq`, if given) starts at `position`."""
    if len(data) - position < HEADER.size:
        return False
    length, crc, found_seq, stamp = HEADER.unpack_from(data, position)
    end = position + HEADER.size + length
    if length > MAX_RECORD_BYTES or end > len(data) or (seq is not None and found_seq != seq):
        return False
    computed: int = zlib.crc32(data[position + HEADER.size:end],
                               zlib.crc32(CRC_PART.pack(found_seq, stamp)))
    return bool(computed == crc)


def find_next_record(data: bytes | memoryview, start: int, min_seq: int) -> int | None:
    """The offset of the first intact record at or after `start` whose seq is at least
    `min_seq`, found by searching for the seq's high bytes (every record near it shares
    them): how reading resumes after damage. None when there is none."""
    haystack = bytes(data) if isinstance(data, memoryview) else data
    prefix = min_seq.to_bytes(8, "big")[:5]
    position = start
    while True:
        hit = haystack.find(prefix, position + _SEQ_AT)
        if hit < 0:
            return None
        candidate = hit - _SEQ_AT
        if (candidate >= start and len(haystack) - candidate >= HEADER.size
                and HEADER.unpack_from(haystack, candidate)[2] >= min_seq
                and record_is_intact(haystack, candidate)):
            return candidate
        position = candidate + 1


@dataclass
class Scan:
    """What `scan` found: every good record's (seq, ts_us, offset, payload length), where the
    good part ends, and why it ended early, if it did: `torn` (a crash mid-write: cut it)
    or `corrupt` (damage: never cut without being told)."""

    seqs: array[int] = field(default_factory=lambda: array("Q"))
    stamps: array[int] = field(default_factory=lambda: array("Q"))
    offsets: array[int] = field(default_factory=lambda: array("Q"))
    lengths: array[int] = field(default_factory=lambda: array("Q"))
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
        problem = _problem_at(data, position, expect_seq, base_offset)
        if problem is not None:
            _classify_tail(result, data, position, problem, expect_seq, base_offset)
            break
        length, _, seq, stamp = HEADER.unpack_from(data, position)
        result.seqs.append(seq)
        result.stamps.append(stamp)
        result.offsets.append(base_offset + position)
        result.lengths.append(length)
        expect_seq = seq + 1
        position += HEADER.size + length
        result.end = base_offset + position
    return result


def _problem_at(data: bytes | memoryview, position: int, expect_seq: int | None,
                base_offset: int) -> str | None:
    """Why the record at `position` is not a good one, or None if it is."""
    where = base_offset + position
    size = len(data)
    if size - position < HEADER.size:
        return f"{size - position} bytes of a record header at offset {where:,}"
    length, crc, seq, stamp = HEADER.unpack_from(data, position)
    end = position + HEADER.size + length
    if length > MAX_RECORD_BYTES:
        return f"record length {length:,} at offset {where:,} is impossible"
    if end > size:
        return (f"record at offset {where:,} is cut short: {size - position:,} of "
                f"{HEADER.size + length:,} bytes")
    if zlib.crc32(data[position + HEADER.size:end], zlib.crc32(CRC_PART.pack(seq, stamp))) != crc:
        return f"record at offset {where:,} fails its CRC"
    if expect_seq is not None and seq != expect_seq:
        return f"record at offset {where:,} has seq {seq:,}, expected {expect_seq:,}"
    return None


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
    length = HEADER.unpack_from(data, position)[0]
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
