"""Topic logs on disk: append-only segment files with a sparse index (storage core of --data-dir).

One topic is one directory of segments. A segment holds consecutive records
from its base seq on; it is closed (rolled) at a size limit, and retention
deletes whole segments, oldest first. A record is a fixed header and the
payload:

    +-----------+-----------+---------+-----------+-----------------+
    | length u32| crc32 u32 | seq u64 | ts_us u64 | payload (length)|
    +-----------+-----------+---------+-----------+-----------------+

big-endian; the CRC covers seq, ts_us and the payload. Beside each segment an
index file holds (seq, offset) pairs, one every INDEX_EVERY_BYTES of segment,
so reading from any seq is a seek and a short scan, never a scan of the topic.

`encode_records` and `scan` are the sans-I/O part (bytes in, records out);
`TopicStore` does the file work. Nothing here knows about asyncio.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from array import array
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from broker.errors import StorageError

HEADER = struct.Struct(">IIQQ")
CRC_PART = struct.Struct(">QQ")  # the header fields the CRC covers
INDEX_ENTRY = struct.Struct(">QQ")  # seq, offset
SEGMENT_SUFFIX = ".seg"
INDEX_SUFFIX = ".idx"
NAME_FILE = "TOPIC"
INDEX_EVERY_BYTES = 64 * 1024
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
MAX_RECORD_BYTES = 64 * 1024 * 1024  # a larger length field can only be damage


def encode_records(first_seq: int, stamp_us: int, payloads: list[bytes]) -> bytes:
    """The records for `payloads`, seqs from `first_seq`, ready to append to a segment."""
    parts: list[bytes] = []
    seq = first_seq
    for payload in payloads:
        covered = CRC_PART.pack(seq, stamp_us)
        crc = zlib.crc32(payload, zlib.crc32(covered))
        parts.append(HEADER.pack(len(payload), crc, seq, stamp_us))
        parts.append(payload)
        seq += 1
    return b"".join(parts)


@dataclass
class Scan:
    """What `scan` found: every good record's (seq, ts_us, offset, payload length), where the
    good part ends, and why it ended early, if it did."""

    seqs: array[int] = field(default_factory=lambda: array("Q"))
    stamps: array[int] = field(default_factory=lambda: array("Q"))
    offsets: array[int] = field(default_factory=lambda: array("Q"))
    lengths: array[int] = field(default_factory=lambda: array("Q"))
    end: int = 0  # offset just past the last good record
    torn: str | None = None  # the data stops inside a record: a crash mid-write
    corrupt: str | None = None  # a bad record with more data after it: damage

    @property
    def count(self) -> int:
        return len(self.seqs)


def scan(data: bytes | memoryview, start: int = 0, expect_seq: int | None = None,
         base_offset: int = 0) -> Scan:
    """Check the records in `data` from `start`; offsets in the result add `base_offset`.

    A record that runs past the end of `data` is a torn tail; a record whose
    length, CRC or seq is wrong is corrupt if anything follows it, and torn if
    it is the last thing in `data` (its bytes may not all have reached the disk).
    """
    result = Scan(end=base_offset + start)
    size = len(data)
    position = start
    while position < size:
        where = base_offset + position
        if size - position < HEADER.size:
            result.torn = f"{size - position} bytes of a record header at offset {where:,}"
            break
        length, crc, seq, stamp = HEADER.unpack_from(data, position)
        end = position + HEADER.size + length
        problem = None
        if length > MAX_RECORD_BYTES:
            problem = f"record length {length:,} at offset {where:,} is impossible"
        elif end > size:
            result.torn = (f"record at offset {where:,} is cut short: {size - position:,} of "
                           f"{HEADER.size + length:,} bytes")
            break
        elif zlib.crc32(data[position + HEADER.size:end],
                        zlib.crc32(CRC_PART.pack(seq, stamp))) != crc:
            problem = f"record at offset {where:,} fails its CRC"
        elif expect_seq is not None and seq != expect_seq:
            problem = f"record at offset {where:,} has seq {seq:,}, expected {expect_seq:,}"
        if problem is not None:
            if end >= size:
                result.torn = problem + " (the last record: a torn write)"
            else:
                result.corrupt = problem
            break
        result.seqs.append(seq)
        result.stamps.append(stamp)
        result.offsets.append(where)
        result.lengths.append(length)
        expect_seq = seq + 1
        position = end
        result.end = base_offset + position
    return result


def topic_directory_name(topic: str) -> str:
    """A file-system-safe, readable name for a topic's directory (the exact name is in TOPIC)."""
    quoted = quote(topic, safe="")
    if len(quoted) <= 200:
        return quoted
    return f"{quoted[:150]}~{zlib.crc32(topic.encode()):08x}"


@dataclass
class RecoveryReport:
    """What opening a topic's directory found and did."""

    segments: int = 0
    records: int = 0
    torn_bytes: int = 0  # cut off the end of the last segment
    repaired_bytes: int = 0  # cut off by --repair after corruption
    notes: list[str] = field(default_factory=list)


class Segment:
    """One segment file and its sparse index, held in memory as two compact arrays."""

    def __init__(self, directory: Path, base_seq: int) -> None:
        self.base_seq = base_seq
        self.path = directory / f"{base_seq:020d}{SEGMENT_SUFFIX}"
        self.index_path = directory / f"{base_seq:020d}{INDEX_SUFFIX}"
        self.next_seq = base_seq
        self.size = 0
        self.first_stamp_us = 0
        self.last_stamp_us = 0
        self.index_seqs = array("Q")
        self.index_offsets = array("Q")
        self._fd: int | None = None  # open while this is the active (appended) segment

    @property
    def count(self) -> int:
        return self.next_seq - self.base_seq

    def index_from(self, found: Scan) -> None:
        """Rebuild the sparse index from a scan of the whole segment."""
        self.index_seqs, self.index_offsets = array("Q"), array("Q")
        last = -INDEX_EVERY_BYTES
        for seq, offset in zip(found.seqs, found.offsets, strict=True):
            if offset - last >= INDEX_EVERY_BYTES:
                self.index_seqs.append(seq)
                self.index_offsets.append(offset)
                last = offset

    def write_index(self) -> None:
        data = b"".join(INDEX_ENTRY.pack(s, o)
                        for s, o in zip(self.index_seqs, self.index_offsets, strict=True))
        temporary = self.index_path.with_suffix(".idx.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, self.index_path)

    def read_index(self) -> bool:
        """Load the index file; False if it is missing or does not fit the segment."""
        try:
            data = self.index_path.read_bytes()
        except OSError:
            return False
        if len(data) % INDEX_ENTRY.size:
            return False
        seqs, offsets = array("Q"), array("Q")
        for seq, offset in INDEX_ENTRY.iter_unpack(data):
            if offset >= self.size or (seqs and (seq <= seqs[-1] or offset <= offsets[-1])):
                return False
            seqs.append(seq)
            offsets.append(offset)
        if not seqs or seqs[0] != self.base_seq or offsets[0] != 0:
            return False
        self.index_seqs, self.index_offsets = seqs, offsets
        return True

    def open_for_append(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._index_fd = os.open(self.index_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                     0o644)

    def append(self, data: bytes, first_seq: int, count: int, offsets: list[int],
               stamp_us: int) -> None:
        """Write records (already encoded) and index the ones that start a new stretch."""
        assert self._fd is not None
        written = os.write(self._fd, data)
        if written != len(data):  # a short write: the disk is full; cut back what went out
            os.ftruncate(self._fd, self.size)
            raise OSError(28, "No space left on device (short write)")
        entries = []
        last = self.index_offsets[-1] if self.index_offsets else -INDEX_EVERY_BYTES
        for number, relative in enumerate(offsets):
            offset = self.size + relative
            if offset - last >= INDEX_EVERY_BYTES:
                self.index_seqs.append(first_seq + number)
                self.index_offsets.append(offset)
                entries.append(INDEX_ENTRY.pack(first_seq + number, offset))
                last = offset
        if entries:
            os.write(self._index_fd, b"".join(entries))
        if not self.count:
            self.first_stamp_us = stamp_us
        self.last_stamp_us = stamp_us
        self.size += len(data)
        self.next_seq = first_seq + count

    def fsync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.fsync(self._index_fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            os.close(self._index_fd)
            self._fd = None

    def locate(self, seq: int) -> int:
        """The offset of the indexed record at or before `seq`."""
        position = bisect_right(self.index_seqs, seq) - 1
        return self.index_offsets[max(position, 0)]

    def delete(self) -> None:
        self.close()
        for path in (self.path, self.index_path):
            path.unlink(missing_ok=True)


class TopicStore:
    """One topic's log on disk: append, read from any seq, roll, retention, recovery."""

    def __init__(self, directory: Path, name: str,
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.directory = directory
        self.name = name
        self.segment_bytes = segment_bytes
        self.segments: list[Segment] = []
        self.evicted_total = 0

    # --- opening -----------------------------------------------------------------

    @classmethod
    def create(cls, root: Path, name: str, first_seq: int = 1,
               segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> TopicStore:
        directory = root / topic_directory_name(name)
        directory.mkdir(parents=True, exist_ok=False)
        (directory / NAME_FILE).write_text(name, encoding="utf-8")
        store = cls(directory, name, segment_bytes)
        store._new_segment(first_seq)
        return store

    @classmethod
    def open(cls, directory: Path, repair: bool = False,
             segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> tuple[TopicStore, RecoveryReport]:
        """Open an existing topic directory, checking what a crash can leave behind.

        Older segments are checked through their index and their tail (the
        part after the last index entry); the last segment is scanned whole.
        A torn end of the last segment is cut off; corruption anywhere stops
        the open with StorageError, unless `repair` keeps the good prefix.
        """
        try:
            name = (directory / NAME_FILE).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StorageError(f"{directory}: no readable {NAME_FILE} file ({exc})") from None
        store = cls(directory, name, segment_bytes)
        report = RecoveryReport()
        bases = sorted(int(path.stem) for path in directory.glob(f"*{SEGMENT_SUFFIX}")
                       if path.stem.isdigit())
        if not bases:
            raise StorageError(f"{directory}: topic {name!r} has no segment files")
        for number, base in enumerate(bases):
            segment = Segment(directory, base)
            last = number == len(bases) - 1
            expected_next = bases[number + 1] if not last else None
            stop = store._recover(segment, expected_next, repair, report)
            store.segments.append(segment)
            report.segments += 1
            report.records += segment.count
            if stop:  # --repair cut the log here: later segments are gone
                for later in bases[number + 1:]:
                    Segment(directory, later).delete()
                    report.notes.append(f"removed segment {later:020d} after the repair")
                break
        store.segments[-1].open_for_append()
        return store, report

    def _recover(self, segment: Segment, expected_next: int | None, repair: bool,
                 report: RecoveryReport) -> bool:
        """Check one segment; True when a repair ended the log inside it."""
        segment.size = segment.path.stat().st_size
        last_segment = expected_next is None
        indexed = not last_segment and segment.read_index()
        # An older segment with a sound index is read only where it matters: its first
        # header and the tail after its last index entry. The rest is checked on reading.
        start = segment.index_offsets[-1] if indexed else 0
        with segment.path.open("rb") as file:
            head = file.read(HEADER.size) if indexed else b""
            file.seek(start)
            found = scan(file.read(), 0,
                         segment.index_seqs[-1] if indexed else segment.base_seq,
                         base_offset=start)
        if found.count and not indexed:
            segment.index_from(found)
            segment.write_index()
        if found.count:
            segment.first_stamp_us = (HEADER.unpack(head)[3] if len(head) == HEADER.size
                                      else found.stamps[0])
            segment.last_stamp_us = found.stamps[-1]
            segment.next_seq = found.seqs[-1] + 1
        elif indexed:
            segment.next_seq = segment.index_seqs[-1]
        problem = found.corrupt or (found.torn if not last_segment else None)
        if problem is None and expected_next is not None and segment.next_seq != expected_next:
            problem = (f"segment ends at seq {segment.next_seq - 1:,} but the next one starts "
                       f"at {expected_next:,}")
        if problem is None and found.torn is not None:  # the last segment: a crash mid-write
            report.torn_bytes += segment.size - found.end
            report.notes.append(f"{segment.path.name}: cut a torn tail: {found.torn}")
            _truncate(segment.path, found.end)
            segment.size = found.end
            return False
        if problem is None:
            return False
        where = f"{segment.path}: {problem}"
        if not repair:
            raise StorageError(f"{where}; start with --repair to keep the records before it")
        report.repaired_bytes += segment.size - found.end
        report.notes.append(f"repaired {where}: kept {found.end:,} bytes")
        _truncate(segment.path, found.end)
        segment.size = found.end
        kept = scan(segment.path.read_bytes(), 0, segment.base_seq)
        segment.next_seq = kept.seqs[-1] + 1 if kept.count else segment.base_seq
        segment.index_from(kept)
        segment.write_index()
        return True

    # --- the log -------------------------------------------------------------------

    @property
    def first_seq(self) -> int:
        return self.segments[0].base_seq

    @property
    def next_seq(self) -> int:
        return self.segments[-1].next_seq

    @property
    def retained(self) -> int:
        return self.next_seq - self.first_seq

    @property
    def size_bytes(self) -> int:
        return sum(segment.size for segment in self.segments)

    def append(self, payloads: list[bytes], stamp_us: int) -> int:
        """Write `payloads` (one write), rolling to a new segment first if this one is full;
        the first new seq. OSError (disk full, read-only) leaves the log as it was."""
        active = self.segments[-1]
        if active.size >= self.segment_bytes and active.count:
            active.close()
            self._new_segment(active.next_seq)
            active = self.segments[-1]
        first = active.next_seq
        offsets, position = [], 0
        for payload in payloads:
            offsets.append(position)
            position += HEADER.size + len(payload)
        active.append(encode_records(first, stamp_us, payloads), first, len(payloads),
                      offsets, stamp_us)
        return first

    def read(self, from_seq: int, max_count: int,
             max_bytes: int) -> tuple[list[int], list[bytes]]:
        """Up to `max_count` records from `from_seq` (>= first_seq), about `max_bytes` of
        payload (at least one record), reading only the segment that holds them."""
        position = bisect_right([s.base_seq for s in self.segments], from_seq) - 1
        segment = self.segments[max(position, 0)]
        if from_seq >= segment.next_seq:
            return [], []
        offset = segment.locate(from_seq)
        stamps: list[int] = []
        payloads: list[bytes] = []
        taken = 0
        with segment.path.open("rb") as file:
            file.seek(offset)
            chunk = file.read(max(max_bytes, INDEX_EVERY_BYTES) + 2 * INDEX_EVERY_BYTES)
            cursor = 0
            seq = from_seq
            while len(payloads) < max_count and seq < segment.next_seq:
                if len(chunk) - cursor < HEADER.size:
                    chunk = chunk[cursor:] + file.read(max(max_bytes, INDEX_EVERY_BYTES))
                    cursor = 0
                length, crc, record_seq, stamp = HEADER.unpack_from(chunk, cursor)
                end = cursor + HEADER.size + length
                if end > len(chunk):
                    chunk = chunk[cursor:] + file.read(end - len(chunk) + max_bytes)
                    cursor, end = 0, HEADER.size + length
                    if end > len(chunk):
                        raise StorageError(f"{segment.path}: record of seq {record_seq:,} is "
                                           "cut short while reading")
                if record_seq < from_seq:
                    cursor = end  # before the wanted seq: skip (we started at an index mark)
                    continue
                payload = chunk[cursor + HEADER.size:end]
                if record_seq != seq or zlib.crc32(
                        payload, zlib.crc32(CRC_PART.pack(record_seq, stamp))) != crc:
                    raise StorageError(f"{segment.path}: record of seq {seq:,} is damaged "
                                       f"(found seq {record_seq:,}); restart with --repair")
                if payloads and taken + length > max_bytes:
                    break
                stamps.append(stamp)
                payloads.append(payload)
                taken += length
                seq += 1
                cursor = end
        return stamps, payloads

    def enforce_retention(self, max_messages: int, max_bytes: int, max_age_s: float = 0.0,
                          now_us: int | None = None, keep_from_seq: int | None = None,
                          below_seq: int = 0) -> int:
        """Delete whole segments, oldest first, while the rest still holds more than the
        limits allow, or the segment lies wholly below `below_seq`; never the active
        segment, nor one holding `keep_from_seq` or later (the block policy's
        unacknowledged messages). Returns how many messages went."""
        now_us = now_us if now_us is not None else time.time_ns() // 1000
        removed = 0
        while len(self.segments) > 1:
            oldest = self.segments[0]
            if keep_from_seq is not None and oldest.next_seq > keep_from_seq:
                break
            below = oldest.next_seq <= below_seq
            over_count = below or self.retained - oldest.count >= max_messages
            over_bytes = self.size_bytes - oldest.size >= max_bytes
            too_old = max_age_s > 0 and now_us - oldest.last_stamp_us > max_age_s * 1e6
            if not (over_count or over_bytes or too_old):
                break
            removed += oldest.count
            oldest.delete()
            self.segments.pop(0)
        self.evicted_total += removed
        return removed

    def fsync(self) -> None:
        self.segments[-1].fsync()

    def close(self) -> None:
        for segment in self.segments:
            segment.close()

    def _new_segment(self, base_seq: int) -> None:
        segment = Segment(self.directory, base_seq)
        segment.open_for_append()
        self.segments.append(segment)


def _truncate(path: Path, size: int) -> None:
    with path.open("r+b") as file:
        file.truncate(size)
        file.flush()
        os.fsync(file.fileno())
