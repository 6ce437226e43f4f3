"""Opening a topic's directory after whatever happened to it: what a crash leaves is put
right without asking, damage stops the start unless --repair is given.

The rules (docs/storage.md, "Recovery", has them as a table): a torn or
zero-filled tail of the last segment is cut; an empty last segment behind a
full one, segments below START, an index without its segment and leftover
temporary files are deleted; segment files missing between others or before
START become holes that readers hear of as a GAP; anything else is damage.
The store it returns (broker/storage/segments.py) appends and reads from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from broker.errors import StorageError
from broker.storage.files import Files
from broker.storage.records import HEADER, scan
from broker.storage.segments import (
    DEFAULT_SEGMENT_BYTES,
    INDEX_SUFFIX,
    NAME_FILE,
    REAL_FILES,
    SEGMENT_SUFFIX,
    START_FILE,
    FsyncPolicy,
    Hole,
    Segment,
    TopicStore,
    topic_directory_name,
)


@dataclass
class RecoveryReport:
    """What opening a topic's directory found and did."""

    segments: int = 0
    records: int = 0
    torn_bytes: int = 0  # cut off the end of the last segment
    repaired_bytes: int = 0  # damaged bytes --repair took out
    notes: list[str] = field(default_factory=list)


def open_topic(directory: Path, repair: bool = False,
               segment_bytes: int = DEFAULT_SEGMENT_BYTES, files: Files = REAL_FILES,
               fsync: FsyncPolicy = "interval",
               verify: bool = False) -> tuple[TopicStore, RecoveryReport]:
    """Open an existing topic directory, checking what a crash can leave behind.

    The last segment is scanned whole; older ones through their index and the
    tail after its last entry (all of them with `verify` or `repair`). Damage
    stops the open with StorageError, unless `repair` keeps every intact
    record around it.
    """
    store = TopicStore(files, directory, read_topic_name(files, directory), segment_bytes,
                       fsync)
    recovery = _Recovery(store, repair, verify or repair)
    recovery.run()
    # Its entries may be a crash's (or a failed fsync's) unsynced leftovers: the first
    # sync after the start covers them, as DiskTopicLog's covers the data.
    store.unsynced(directory)
    return store, recovery.report


class _Recovery:
    """One topic's recovery: fills `store` and `report` from what the directory holds."""

    def __init__(self, store: TopicStore, repair: bool, verify: bool) -> None:
        self.store, self.repair, self.verify = store, repair, verify
        self.files, self.directory = store.files, store.directory
        self.report = RecoveryReport()

    def run(self) -> None:
        files, directory, store = self.files, self.directory, self.store
        names = files.listdir(directory)
        for leftover in (n for n in names if n.endswith(".tmp")):
            files.unlink(directory / leftover)  # a replace_file a crash interrupted
        for n in names:  # an index whose segment retention deleted
            if n.endswith(INDEX_SUFFIX) and n.removesuffix(INDEX_SUFFIX) + SEGMENT_SUFFIX \
                    not in names:
                files.unlink(directory / n)
        bases = sorted(int(n.removesuffix(SEGMENT_SUFFIX)) for n in names
                       if n.endswith(SEGMENT_SUFFIX) and n[:-len(SEGMENT_SUFFIX)].isdigit())
        start = read_start(files, directory)
        if not bases:
            bases = [self._begin_again(start)]
        bases = self._drop_empty_tail(self._finish_retention(bases, start))
        store.start_seq = start if start is not None else bases[0]
        if store.start_seq < bases[0]:
            self._note_hole(store.start_seq, bases[0], "its segment files are missing")
        pending = list(bases)
        while pending:
            segment = Segment(directory, pending.pop(0))
            if store.segments and store.segments[-1].next_seq != segment.base_seq:
                self._join(segment)
            resumed = self._check(segment, last=not pending)
            if resumed is not None:
                pending.insert(0, resumed)
            store.segments.append(segment)
            self.report.segments += 1
            self.report.records += segment.count
        active = store.segments[-1]
        active.file = files.open_append(active.path)

    def _begin_again(self, start: int | None) -> int:
        if not self.repair:
            raise StorageError(f"{self.directory}: topic {self.store.name!r} has no segment "
                               "files; start with --repair to begin it again at its START")
        base = start or 1
        self.files.open_append(Segment(self.directory, base).path).close()
        self.report.notes.append(f"no segment files: began again at seq {base:,}")
        return base

    def _finish_retention(self, bases: list[int], start: int | None) -> list[int]:
        """Delete segments wholly below START: a retention a crash interrupted."""
        while start is not None and len(bases) > 1 and bases[1] <= start:
            doomed = Segment(self.directory, bases.pop(0))
            for path in (doomed.path, doomed.index_path):
                if self.files.exists(path):
                    self.files.unlink(path)
            self.report.notes.append(f"finished deleting {doomed.path.name} (below START)")
        return bases

    def _drop_empty_tail(self, bases: list[int]) -> list[int]:
        """An empty last segment behind another adds nothing (a crash right after a roll):
        without it, the segment before is the last one, and may have a torn tail."""
        while len(bases) > 1 and not self.files.size(Segment(self.directory, bases[-1]).path):
            empty = Segment(self.directory, bases.pop())
            self.files.unlink(empty.path)
            self.report.notes.append(f"removed {empty.path.name}: empty, behind a full one")
        return bases

    def _join(self, segment: Segment) -> None:
        previous = self.store.segments[-1]
        if segment.base_seq < previous.next_seq:
            raise StorageError(f"{segment.path}: starts at seq {segment.base_seq:,} inside the "
                               f"segment before it (which ends at {previous.next_seq - 1:,})")
        self._note_hole(previous.next_seq, segment.base_seq,
                        "missing between two segments (deleted, or removed by --repair "
                        "as damaged)")

    def _note_hole(self, first: int, end: int, reason: str) -> None:
        self.store.holes.append(Hole(first, end, reason))
        self.report.notes.append(f"seqs {first:,} to {end - 1:,} are {reason}: readers get "
                                 "a GAP")

    def _check(self, segment: Segment, last: bool) -> int | None:
        """Check one segment; with --repair, the base seq of a segment made of the intact
        records found after damage (checked next), else None."""
        files = self.files
        segment.size = files.size(segment.path)
        indexed = not last and segment.read_index(files)
        if indexed and not self.verify and self._sealed_tail_is_sound(segment):
            return None
        data = files.read(segment.path)
        found = scan(data, 0, segment.base_seq)
        segment.take_scan(found)
        if not (last or indexed or found.corrupt):
            segment.write_index(files)
        problem = found.corrupt or (found.torn if not last else None)
        if problem is None:
            if found.torn is not None:  # the last segment: a crash mid-write
                self.report.torn_bytes += len(data) - found.end
                self.report.notes.append(f"{segment.path.name}: cut a torn tail: {found.torn}")
                self._cut(segment.path, found.end)
            return None
        where = f"{segment.path}: {problem}"
        if not self.repair:
            raise StorageError(f"{where}; start with --repair to keep every intact record "
                               "(readers get a GAP for the damaged ones)")
        self.report.repaired_bytes += len(data) - found.end
        resumed = None
        if found.resumes_at is not None:  # the intact records after the damage: their own file
            rest = data[found.resumes_at:]
            resumed = HEADER.unpack_from(rest, 0)[2]
            files.write_file(Segment(self.directory, resumed).path, rest,
                             fsync=self.store.durable)
            self.report.repaired_bytes -= len(rest)
            self.report.notes.append(f"repaired {where}: kept {found.end:,} bytes before the "
                                     f"damage and the records from seq {resumed:,} after it")
        else:
            self.report.notes.append(f"repaired {where}: kept {found.end:,} bytes")
        self._cut(segment.path, found.end)
        return resumed

    def _sealed_tail_is_sound(self, segment: Segment) -> bool:
        """A sealed segment with a sound index is read only where it matters: its first
        header and the tail after its last index entry. The rest is checked on reading."""
        tail_from = segment.index_offsets[-1]
        head = self.files.read(segment.path, 0, HEADER.size)
        found = scan(self.files.read(segment.path, tail_from), 0, segment.index_seqs[-1],
                     base_offset=tail_from)
        if found.torn is not None or found.corrupt is not None or not found.count:
            return False
        segment.next_seq = found.seqs[-1] + 1
        segment.first_stamp_us = HEADER.unpack(head)[3]
        segment.last_stamp_us = found.stamps[-1]
        return True

    def _cut(self, path: Path, size: int) -> None:
        self.files.truncate(path, size)
        if self.store.durable:
            self.files.fsync(path)


def read_topic_name(files: Files, directory: Path) -> str:
    """The exact topic name in TOPIC, checked against the directory's name."""
    try:
        name = files.read(directory / NAME_FILE).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageError(f"{directory}: no readable {NAME_FILE} file ({exc})") from None
    if not name or topic_directory_name(name) != directory.name:
        raise StorageError(f"{directory}: its {NAME_FILE} file names {name!r}, which does not "
                           "belong in this directory")
    return name


def read_start(files: Files, directory: Path) -> int | None:
    """START's seq, or None where it is missing or not whole (then the first segment is)."""
    try:
        text = files.read(directory / START_FILE)
    except OSError:
        return None
    if not (text.endswith(b"\n") and text[:-1].isdigit()):
        return None
    return int(text[:-1])


def held_nothing(files: Files, directory: Path) -> bool:
    """A topic directory a crash left before anything was stored in it (no TOPIC, or an
    empty one, and not a byte in any segment): safe to remove."""
    names = files.listdir(directory)
    if NAME_FILE in names and files.size(directory / NAME_FILE) > 0:
        return False
    return all(files.size(directory / n) == 0 for n in names if n.endswith(SEGMENT_SUFFIX))
