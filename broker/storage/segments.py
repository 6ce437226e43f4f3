"""Topic logs on disk: append-only segment files with a sparse index (storage core of --data-dir).

One topic is one directory of segments. A segment holds consecutive records
(broker/storage/records.py) from its base seq on; it is sealed at a size limit and a
new one begins; retention deletes whole segments, oldest first, after moving
the topic's START (its first seq) past them, so a segment that goes missing
any other way is noticed. Beside each sealed segment an index file holds
(seq, offset) pairs, one every INDEX_EVERY_BYTES: derived from the segment,
checked against it, rebuilt whenever it does not fit, never trusted over it.

Every file operation goes through a `Files` (broker/storage/files.py), so the crash
simulator (tests/sim/) runs this very code against every crash point and
every I/O error. Opening a directory after a crash is broker/storage/recovery.py;
what each failure leaves is in docs/storage.md.
"""

from __future__ import annotations

import contextlib
import struct
import threading
import time
import zlib
from array import array
from bisect import bisect_right, insort
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from broker.errors import StorageError
from broker.storage.files import AppendFile, Files, RealFiles, replace_file
from broker.storage.records import (
    HEADER,
    MAX_RECORD_BYTES,
    RUN_FLAG,
    Scan,
    encode_run,
    find_next_record,
    payloads_of,
    record_at,
    scan,
)

FsyncPolicy = Literal["always", "interval", "never"]
INDEX_ENTRY = struct.Struct(">QQ")  # seq, offset
SEGMENT_SUFFIX = ".seg"
INDEX_SUFFIX = ".idx"
NAME_FILE = "TOPIC"
START_FILE = "START"  # the topic's first seq: where retention last moved it
NEW_TOPIC_PREFIX = ".new-"  # a topic directory being made: renamed into place once whole
INDEX_EVERY_BYTES = 64 * 1024
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
REAL_FILES = RealFiles()


class WriteRefusedError(StorageError):
    """An append that stored nothing. `stopped`: the topic takes no more writes until the
    broker restarts (an fsync failed: what the disk holds is unknown, so writing on
    would confirm messages on top of a hole)."""

    def __init__(self, reason: str, stopped: bool) -> None:
        super().__init__(reason)
        self.stopped = stopped


class UnreadableRangeError(StorageError):
    """Seqs [first, end) of a topic cannot be served: damaged records, or files gone."""

    def __init__(self, topic: str, first: int, end: int, reason: str) -> None:
        super().__init__(f"topic {topic!r}: seqs {first:,} to {end - 1:,} cannot be read: "
                         f"{reason}")
        self.first, self.end, self.reason = first, end, reason


@dataclass(frozen=True)
class Hole:
    """Seqs [first, end) a topic once had and cannot serve, and why."""

    first: int
    end: int
    reason: str


def topic_directory_name(topic: str) -> str:
    """A file-system-safe, readable name for a topic's directory (the exact name is in TOPIC)."""
    quoted = quote(topic, safe="")
    if len(quoted) <= 200:
        return quoted
    return f"{quoted[:150]}~{zlib.crc32(topic.encode()):08x}"


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
        self.file: AppendFile | None = None  # open while this is the active segment

    @property
    def count(self) -> int:
        return self.next_seq - self.base_seq

    def take_scan(self, found: Scan) -> None:
        """Adopt what a scan of the whole segment found: its end, stamps and index."""
        self.index_seqs, self.index_offsets = array("Q"), array("Q")
        self.index_records(found.seqs, found.offsets)
        self.size = found.end
        self.next_seq = found.seqs[-1] + 1 if found.count else self.base_seq
        if found.count:
            self.first_stamp_us, self.last_stamp_us = found.stamps[0], found.stamps[-1]

    def index_records(self, seqs: array[int] | range, offsets: array[int] | list[int]) -> None:
        """Index the records that start a new INDEX_EVERY_BYTES stretch."""
        last = self.index_offsets[-1] if self.index_offsets else -INDEX_EVERY_BYTES
        for seq, offset in zip(seqs, offsets, strict=True):
            if offset - last >= INDEX_EVERY_BYTES:
                self.index_seqs.append(seq)
                self.index_offsets.append(offset)
                last = offset

    def index_appended(self, first_seq: int) -> None:
        """Index the record just appended at `self.size` if it starts a new stretch."""
        if not self.index_offsets or self.size - self.index_offsets[-1] >= INDEX_EVERY_BYTES:
            self.index_seqs.append(first_seq)
            self.index_offsets.append(self.size)

    def write_index(self, files: Files) -> None:
        """Save the index of a sealed segment. It is derived: a failure only costs a scan
        when the topic is opened again."""
        data = b"".join(INDEX_ENTRY.pack(s, o)
                        for s, o in zip(self.index_seqs, self.index_offsets, strict=True))
        with contextlib.suppress(OSError):
            replace_file(files, self.index_path, data, durable=False)

    def read_index(self, files: Files) -> bool:
        """Load the index file; False if it is missing or does not fit the segment."""
        try:
            data = files.read(self.index_path)
        except OSError:
            return False
        if not data or len(data) % INDEX_ENTRY.size:
            return False
        seqs, offsets = array("Q"), array("Q")
        for seq, offset in INDEX_ENTRY.iter_unpack(data):
            if offset >= self.size or (seqs and (seq <= seqs[-1] or offset <= offsets[-1])):
                return False
            seqs.append(seq)
            offsets.append(offset)
        if seqs[0] != self.base_seq or offsets[0] != 0:
            return False
        self.index_seqs, self.index_offsets = seqs, offsets
        return True

    def next_mark_after(self, seq: int) -> int:
        """The seq of the first index mark after `seq` (or the segment's end): how far a
        read that failed is reported unreadable."""
        position = bisect_right(self.index_seqs, seq)
        return self.index_seqs[position] if position < len(self.index_seqs) else self.next_seq

    def locate(self, seq: int) -> int:
        """The offset of the indexed record at or before `seq`."""
        position = bisect_right(self.index_seqs, seq) - 1
        return self.index_offsets[max(position, 0)]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class TopicStore:
    """One topic's log on disk: append, read from any seq, roll, retention, recovery."""

    def __init__(self, files: Files, directory: Path, name: str, segment_bytes: int,
                 fsync: FsyncPolicy) -> None:
        self.files = files
        self.directory = directory
        self.name = name
        self.segment_bytes = segment_bytes
        self.durable = fsync != "never"  # fsync at all (on sealing, creating, syncing)
        self.sync_each_append = fsync == "always"
        self.segments: list[Segment] = []
        self.start_seq = 1  # START: below it, retention took the records
        self.holes: list[Hole] = []  # seqs it cannot serve (missing files, damage)
        self.evicted_total = 0
        self.stopped: str | None = None  # why writes are refused until a restart
        self._unsynced_dirs: set[Path] = set()
        # The interval syncer fsyncs from a thread: sealing or closing waits for it.
        self._sync_lock = threading.Lock()

    # --- creating and opening ------------------------------------------------------

    @classmethod
    def create(cls, root: Path, name: str, first_seq: int = 1,
               segment_bytes: int = DEFAULT_SEGMENT_BYTES, files: Files = REAL_FILES,
               fsync: FsyncPolicy = "interval") -> TopicStore:
        """Make the topic's directory whole under a temporary name, then rename it into
        place: a crash leaves the topic complete, or a leftover that recovery removes."""
        final = root / topic_directory_name(name)
        making = root / (NEW_TOPIC_PREFIX + final.name)
        store = cls(files, final, name, segment_bytes, fsync)
        if files.exists(making):
            remove_directory(files, making)
        handle: AppendFile | None = None
        try:
            files.mkdir(making)
            files.write_file(making / NAME_FILE, name.encode(), fsync=store.durable)
            files.write_file(making / START_FILE, b"%d\n" % first_seq, fsync=store.durable)
            handle = files.open_append(Segment(making, first_seq).path)
            if store.durable:
                files.fsync(making)
            files.rename(making, final)
        except OSError:
            if handle is not None:
                handle.close()
            with contextlib.suppress(OSError):  # if not, recovery removes it
                remove_directory(files, making)
            raise
        store.unsynced(root)
        store.start_seq = first_seq
        segment = Segment(final, first_seq)
        segment.file = handle
        store.segments.append(segment)
        return store

    def unsynced(self, directory: Path) -> None:
        """`directory` gained or lost an entry (or may have): the next sync fsyncs it."""
        self._unsynced_dirs.add(directory)

    def reindex(self, segment: Segment) -> None:
        """Rebuild a segment's index from a scan of every record (across damage)."""
        data = self.files.read(segment.path)
        # It always begins at the segment's start, even when the first record is damaged:
        # a read from there must find that damage, not jump to the next intact record.
        segment.index_seqs, segment.index_offsets = array("Q", [segment.base_seq]), array(
            "Q", [0])
        position, expect = 0, segment.base_seq
        while position < len(data):
            found = scan(data, position, expect)
            segment.index_records(found.seqs, found.offsets)
            if found.corrupt is None or found.resumes_at is None:
                break
            position = found.resumes_at
            expect = HEADER.unpack_from(data, position)[2]

    # --- the log -------------------------------------------------------------------

    @property
    def first_seq(self) -> int:
        """START: below a hole when segment files went missing, above the first segment's
        base when retention could not delete its file yet (the next pass does)."""
        return self.start_seq

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
        """Write `payloads` (one write), sealing the active segment first if it is full;
        returns the first new seq. WriteRefusedError leaves the log as it was: nothing of
        a refused append is ever read back, now or after a restart."""
        if self.stopped is not None:
            raise WriteRefusedError(self.stopped, stopped=True)
        active = self.segments[-1]
        if active.size >= self.segment_bytes and active.count:
            active = self._roll()
        first = active.next_seq
        data = encode_run(first, stamp_us, payloads)
        assert active.file is not None
        try:
            written = active.file.write(data)
            if written != len(data):
                raise OSError(28, f"No space left on device (wrote {written:,} of "
                                  f"{len(data):,} bytes)")
        except OSError as exc:
            self._undo_write(active, exc)
            raise WriteRefusedError(exc.strerror or str(exc), stopped=False) from None
        if self.sync_each_append:
            try:
                self._fsync_active()
            except OSError as exc:
                self._undo_write(active, exc)
                raise self._stop(f"fsync failed: {exc.strerror or exc}") from None
        active.index_appended(first)
        if not active.count:
            active.first_stamp_us = stamp_us
        active.last_stamp_us = stamp_us
        active.size += len(data)
        active.next_seq = first + len(payloads)
        return first

    def _undo_write(self, active: Segment, exc: OSError) -> None:
        """Cut the segment back to its last good size; if even that fails, stop writing
        (a later append would land after bytes recovery may read as records)."""
        assert active.file is not None
        try:
            active.file.truncate(active.size)
            if self.durable:
                active.file.fsync()  # a refused record must not come back after a power loss
        except OSError as again:
            raise self._stop(f"{exc.strerror or exc}, and cutting back the partial write "
                             f"failed: {again.strerror or again}") from None

    def _stop(self, reason: str) -> WriteRefusedError:
        self.stopped = (f"writes to topic {self.name!r} stopped: {reason}; restart the "
                        "broker once the disk is sound")
        return WriteRefusedError(self.stopped, stopped=True)

    def _roll(self) -> Segment:
        """Seal the active segment (on the disk itself, with its index) and begin a new one.
        A failure leaves the active segment as it was."""
        with self._sync_lock:
            return self._seal_and_begin()

    def _seal_and_begin(self) -> Segment:
        old = self.segments[-1]
        assert old.file is not None
        if self.durable:
            try:
                old.file.fsync()  # a sealed segment is whole before anything follows it
            except OSError as exc:
                raise self._stop(f"fsync failed sealing {old.path.name}: "
                                 f"{exc.strerror or exc}") from None
        new = Segment(self.directory, old.next_seq)
        try:
            new.file = self.files.open_append(new.path)
        except OSError as exc:
            raise WriteRefusedError(exc.strerror or str(exc), stopped=False) from None
        old.write_index(self.files)
        old.close()
        self.segments.append(new)
        self._unsynced_dirs.add(self.directory)
        return new

    def read(self, from_seq: int, max_count: int,
             max_bytes: int) -> tuple[list[int], list[bytes]]:
        """Up to `max_count` records from `from_seq` (>= first_seq), about `max_bytes` of
        payload (at least one record), reading only the segment that holds them.
        UnreadableRangeError when `from_seq` itself cannot be served."""
        for hole in self.holes:
            if hole.first <= from_seq < hole.end:
                raise UnreadableRangeError(self.name, from_seq, hole.end, hole.reason)
        position = bisect_right([s.base_seq for s in self.segments], from_seq) - 1
        segment = self.segments[max(position, 0)]
        if from_seq >= segment.next_seq:
            return [], []
        try:
            return self._read_checked(segment, from_seq, max_count, max_bytes)
        except OSError as exc:  # a bad sector, a failing disk: maybe for now only
            raise UnreadableRangeError(
                self.name, from_seq, segment.next_mark_after(from_seq),
                f"read error: {exc.strerror or exc} in {segment.path} (the records may still "
                "be whole: a later reader, or a durable after a restart, tries again)") from None

    def _read_checked(self, segment: Segment, from_seq: int, max_count: int,
                      max_bytes: int) -> tuple[list[int], list[bytes]]:
        for attempt in range(3):
            try:
                return self._read_segment(segment, from_seq, max_count, max_bytes)
            except _BadRecordError as bad:
                if bad.last_good is None and attempt == 0:
                    self.reindex(segment)  # the index may be what is wrong: only a hint
                    continue
                self._damage_found(segment, bad, from_seq)  # raises, or read on past it
        raise AssertionError("unreachable: a damaged range is noted once")

    def _read_segment(self, segment: Segment, from_seq: int, max_count: int,
                      max_bytes: int) -> tuple[list[int], list[bytes]]:
        """Read from the index mark at or before `from_seq`, a window at a time; every
        record is checked (length, CRC, seqs) before any of it is served."""
        mark = segment.locate(from_seq)
        window = max(max_bytes, INDEX_EVERY_BYTES) + 2 * INDEX_EVERY_BYTES
        base, chunk = mark, self.files.read(segment.path, mark, window)
        stamps: list[int] = []
        payloads: list[bytes] = []
        cursor, taken, seq = 0, 0, from_seq
        last_good: int | None = None
        while len(payloads) < max_count and seq < segment.next_seq:
            need = HEADER.size
            if len(chunk) - cursor >= HEADER.size:
                need += min(HEADER.unpack_from(chunk, cursor)[0] & ~RUN_FLAG, MAX_RECORD_BYTES)
            if len(chunk) - cursor < need and base + len(chunk) < segment.size:
                chunk, base, cursor = chunk[cursor:], base + cursor, 0
                chunk += self.files.read(segment.path, base + len(chunk),
                                         need - len(chunk) + window)
            record = record_at(chunk, cursor)
            if record is None or (last_good is not None and record.first_seq != last_good + 1):
                break
            after = record.first_seq + record.messages
            if after <= seq:  # wholly before the wanted seq (we started at an index mark)
                last_good, cursor = after - 1, record.end
                continue
            if record.first_seq > seq:
                break
            for payload in payloads_of(chunk, cursor, record)[seq - record.first_seq:]:
                if len(payloads) == max_count or (payloads and taken + len(payload) > max_bytes):
                    return stamps, payloads
                payloads.append(payload)
                stamps.append(record.stamp_us)
                taken += len(payload)
                seq += 1
            last_good, cursor = after - 1, record.end
        if payloads or seq >= segment.next_seq:
            return stamps, payloads  # at damage, the next read (starting there) reports it
        raise _BadRecordError(base + cursor, last_good)

    def _damage_found(self, segment: Segment, bad: _BadRecordError, from_seq: int) -> None:
        """Damage in the middle of a segment: the seqs from the last intact record to the
        next become a hole, reported to every reader as a GAP (and found by --verify and
        --repair); reading beyond it starts at that next intact record."""
        first = (bad.last_good + 1 if bad.last_good is not None
                 else segment.index_seqs[bisect_right(segment.index_offsets, bad.offset) - 1])
        rest = self.files.read(segment.path, bad.offset)
        resume = find_next_record(rest, 1, first + 1)
        end = min(HEADER.unpack_from(rest, resume)[2] if resume is not None
                  else segment.next_seq, segment.next_seq)
        reason = (f"damaged: the record at offset {bad.offset:,} of {segment.path} fails its "
                  "check (start with --repair to take it out)")
        insort(self.holes, Hole(first, end, reason), key=lambda hole: hole.first)
        if resume is not None:  # an index mark past the damage, for reads beyond it
            at = bisect_right(segment.index_seqs, end)
            segment.index_seqs.insert(at, end)
            segment.index_offsets.insert(at, bad.offset + resume)
        if from_seq < end:
            raise UnreadableRangeError(self.name, from_seq, end, reason)

    def enforce_retention(self, max_messages: int, max_bytes: int, max_age_s: float = 0.0,
                          now_us: int | None = None, keep_from_seq: int | None = None,
                          below_seq: int = 0) -> int:
        """Delete whole segments, oldest first, while the rest still holds more than the
        limits allow, or the segment lies wholly below `below_seq`; never the active
        segment, nor one holding `keep_from_seq` or later (the block policy's
        unacknowledged messages). Returns how many messages went. An I/O error stops it
        early (the next call tries again): retention never fails an append."""
        now_us = now_us if now_us is not None else time.time_ns() // 1000
        doomed = 0
        kept_bytes = self.size_bytes  # of the segments from `doomed` on, summed once
        while len(self.segments) - doomed > 1:
            oldest = self.segments[doomed]
            if keep_from_seq is not None and oldest.next_seq > keep_from_seq:
                break
            retained = self.next_seq - oldest.base_seq
            below = oldest.next_seq <= below_seq
            over_count = below or retained - oldest.count >= max_messages
            over_bytes = kept_bytes - oldest.size >= max_bytes
            too_old = max_age_s > 0 and now_us - oldest.last_stamp_us > max_age_s * 1e6
            if not (over_count or over_bytes or too_old):
                break
            doomed += 1
            kept_bytes -= oldest.size
        if not doomed:
            return 0
        return self._delete_oldest(doomed)

    def _delete_oldest(self, count: int) -> int:
        """Move START past the `count` oldest segments, then delete them."""
        new_start = self.segments[count].base_seq
        try:
            replace_file(self.files, self.directory / START_FILE, b"%d\n" % new_start,
                         durable=False)
        except OSError:
            return 0
        self._unsynced_dirs.add(self.directory)
        self.start_seq = new_start
        self.holes = [h for h in self.holes if h.end > new_start]
        removed = 0
        for _ in range(count):
            oldest = self.segments[0]
            try:
                oldest.close()
                for path in (oldest.path, oldest.index_path):
                    if self.files.exists(path):
                        self.files.unlink(path)
            except OSError:
                break  # START is past it: the next open finishes the job
            removed += oldest.count
            self.segments.pop(0)
        self.evicted_total += removed
        return removed

    def sync(self) -> None:
        """Make everything appended so far survive a power loss: the active segment, and the
        directories that gained or lost a file. An error stops the topic's writes (PostgreSQL's
        fsyncgate: after a failed fsync the kernel may have dropped the data)."""
        if self.stopped is not None:
            raise WriteRefusedError(self.stopped, stopped=True)
        if not self.durable:
            return
        with self._sync_lock:
            try:
                self._fsync_active()
            except OSError as exc:
                raise self._stop(f"fsync failed: {exc.strerror or exc}") from None

    def _fsync_active(self) -> None:
        """The directories first: if one fails, no byte of the newest records is synced yet,
        so cutting them back is enough to refuse them."""
        while self._unsynced_dirs:
            directory = min(self._unsynced_dirs)
            self.files.fsync(directory)
            self._unsynced_dirs.discard(directory)
        active = self.segments[-1]
        assert active.file is not None
        active.file.fsync()

    def close(self) -> None:
        with self._sync_lock:
            for segment in self.segments:
                segment.close()


class _BadRecordError(Exception):
    """Internal: the record at `offset` is not the intact one expected after `last_good`
    (None: the first record read, at an index mark, is already bad)."""

    def __init__(self, offset: int, last_good: int | None) -> None:
        super().__init__(offset, last_good)
        self.offset, self.last_good = offset, last_good


def remove_directory(files: Files, directory: Path) -> None:
    """Delete a topic directory and the files in it (it has no subdirectories)."""
    for name in files.listdir(directory):
        files.unlink(directory / name)
    files.rmdir(directory)

