"""What each fault issue 22 found now gets, one named case at a time, on the simulated file
system (tests/sim/filesystem.py) and on real files: the crash simulator's sweeps
(test_crash_simulator.py) cover every step; these say what the outcome is."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from broker.errors import StorageError
from broker.storage.datadir import DataDir
from broker.storage.records import encode_run
from broker.storage.recovery import open_topic
from broker.storage.segments import (
    NEW_TOPIC_PREFIX,
    TopicStore,
    UnreadableRangeError,
    WriteRefusedError,
)
from tests.sim.filesystem import Fault, SimFiles

ROOT = Path("/data/topics")
RECORD = len(encode_run(1, 0, [bytes(100)]))  # one 100-byte payload as a run record


def payload(seq: int, size: int = 100) -> bytes:
    return (seq.to_bytes(8, "big") * (size // 8 + 1))[:size]


def sim_store(files: SimFiles, name: str = "t", **kwargs: object) -> TopicStore:
    files.mkdir(Path("/data"))
    files.mkdir(ROOT)
    return TopicStore.create(ROOT, name, files=files, **kwargs)  # type: ignore[arg-type]


def reopen(files: SimFiles, name: str = "t", **kwargs: object) -> TopicStore:
    store, _ = open_topic(ROOT / name, files=files, **kwargs)  # type: ignore[arg-type]
    return store


def closed_store(directory: Path, count: int) -> tuple[TopicStore, Path, bytearray]:
    """A topic of `count` 100-byte records in one segment, closed: the store, its segment
    file and that file's bytes, to damage."""
    store = TopicStore.create(directory, "t")
    for n in range(1, count + 1):  # one run record each: damage takes one message
        store.append([payload(n)], 1)
    store.close()
    segment = store.segments[0].path
    return store, segment, bytearray(segment.read_bytes())


def everything(store: TopicStore) -> list[bytes]:
    return store.read(store.first_seq, 10**6, 1 << 30)[1]


def test_a_refused_write_to_a_new_topic_leaves_nothing_and_seqs_go_on() -> None:
    files = SimFiles()
    store = sim_store(files)
    files.fail_at(files.steps + 1, Fault(errno.ENOSPC, short=True))  # half the record lands
    with pytest.raises(WriteRefusedError, match="No space left"):
        store.append([payload(1)], 1)
    assert store.append([b"confirmed"], 2) == 1  # seq 1, not a second seq 1 later
    store.close()
    again = reopen(files)
    assert (again.next_seq, everything(again)) == (2, [b"confirmed"])


def test_a_flipped_length_bit_mid_segment_is_damage_not_a_torn_tail(tmp_path: Path) -> None:
    store, segment, data = closed_store(tmp_path, 500)
    data[RECORD * 40] ^= 0x40  # bit 30 of record 41's length: an impossible length
    segment.write_bytes(bytes(data))
    with pytest.raises(StorageError, match=r"impossible.*intact records after it"):
        open_topic(store.directory)
    assert segment.stat().st_size == len(data)  # nothing was cut
    repaired, _ = open_topic(store.directory, repair=True)
    assert everything(repaired)[:40] == [payload(n) for n in range(1, 41)]
    assert repaired.read(42, 1000, 1 << 30)[1] == [payload(n) for n in range(42, 501)]
    assert repaired.holes[0].first == 41 and repaired.holes[0].end == 42


def test_a_zero_filled_tail_is_cut_without_asking(tmp_path: Path) -> None:
    store, segment, _ = closed_store(tmp_path, 10)
    with segment.open("ab") as file:
        file.write(bytes(4096))  # the size reached the disk, the page did not
    again, report = open_topic(store.directory)
    assert again.next_seq == 11 and report.torn_bytes == 4096
    assert "zero bytes" in report.notes[0]


def test_non_zero_bytes_after_a_short_record_are_damage(tmp_path: Path) -> None:
    store, segment, data = closed_store(tmp_path, 10)
    data[RECORD * 9 + 3] = 50  # the last record claims a 50-byte body
    segment.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="non-zero bytes after it"):
        open_topic(store.directory)


def test_half_made_topic_directories_are_removed_at_start(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "d")
    data.open()
    kept = data.create_topic("kept", 1, 1 << 20)
    kept.append([b"x"], 1)
    kept.close()
    (data.topics_path / (NEW_TOPIC_PREFIX + "made")).mkdir()  # a crash mid-create (ours)
    older = data.topics_path / "older"  # what an older broker could leave: empty TOPIC
    older.mkdir()
    (older / "TOPIC").write_bytes(b"")
    (older / f"{1:020d}.seg").write_bytes(b"")
    data.close()
    again = DataDir(tmp_path / "d")
    again.open()
    opened = again.open_topics(repair=False, segment_bytes=1 << 20)
    assert [store.name for store, _ in opened] == ["kept"]
    assert sorted(p.name for p in again.topics_path.iterdir()) == ["kept"]
    assert len(again.notes) == 2 and all("removed" in note for note in again.notes)


def test_damage_found_while_reading_is_a_range_and_repair_keeps_what_follows(
        tmp_path: Path) -> None:
    store = TopicStore.create(tmp_path, "t", segment_bytes=1 << 20)
    for n in range(1, 10_001):
        store.append([payload(n)], 1)
    store.close()
    older = store.segments[0]
    assert len(store.segments) == 2 and len(older.index_seqs) > 10
    data = bytearray(older.path.read_bytes())
    data[RECORD * 200 + 60] ^= 0x01  # inside record 201, between two index marks
    older.path.write_bytes(bytes(data))
    opened = reopen_real(store.directory)  # start-up reads only the index and the tail
    assert opened.read(1, 200, 1 << 30)[1] == [payload(n) for n in range(1, 201)]
    with pytest.raises(UnreadableRangeError) as unreadable:
        opened.read(201, 10, 1 << 30)
    assert (unreadable.value.first, unreadable.value.end) == (201, 202)
    assert opened.read(202, 1, 1 << 30)[1] == [payload(202)]
    assert opened.read(150, 100, 1 << 30)[1] == [payload(n) for n in range(150, 201)]
    with pytest.raises(StorageError, match="offset 26,400"):
        open_topic(store.directory, verify=True)
    repaired, _ = open_topic(store.directory, repair=True)
    assert repaired.next_seq == 10_001 and len(everything_around(repaired)) == 9_999


def reopen_real(directory: Path) -> TopicStore:
    return open_topic(directory, segment_bytes=1 << 20)[0]


def everything_around(store: TopicStore) -> list[bytes]:
    got, seq = [], store.first_seq
    while seq < store.next_seq:
        try:
            payloads = store.read(seq, 10**6, 1 << 30)[1]
        except UnreadableRangeError as hole:
            seq = hole.end
            continue
        got += payloads
        seq += len(payloads)
    return got


def test_a_missing_first_segment_is_a_hole_not_retention(tmp_path: Path) -> None:
    store = TopicStore.create(tmp_path, "t", segment_bytes=4096)
    for n in range(1, 101):
        store.append([payload(n)], 1)
    store.close()
    store.segments[0].path.unlink()
    again, report = open_topic(store.directory, segment_bytes=4096)
    assert again.first_seq == 1 and any("missing" in note for note in report.notes)
    with pytest.raises(UnreadableRangeError, match="missing") as hole:
        again.read(1, 10, 1 << 30)
    assert hole.value.end == store.segments[1].base_seq


def test_a_missing_epoch_beside_topics_is_refused(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "d")
    data.open()
    data.create_topic("t", 1, 1 << 20).close()
    data.close()
    (tmp_path / "d" / "EPOCH").unlink()
    with pytest.raises(StorageError, match=r"EPOCH is missing.*1 topics.*--repair"):
        DataDir(tmp_path / "d").open()
    repaired = DataDir(tmp_path / "d")
    repaired.open(repair=True)
    assert repaired.epoch > 0 and "new epoch" in repaired.notes[0]


@pytest.mark.parametrize("policy", ["interval", "always"])
def test_an_fsync_error_stops_the_topics_writes_until_a_restart(policy: str) -> None:
    files = SimFiles()
    store = sim_store(files, fsync=policy)
    assert store.append([b"one"], 1) == 1
    store.sync()
    files.fail_at(files.steps + 2, Fault(errno.EIO))  # the fsync after the next write
    with pytest.raises(WriteRefusedError) as failed:
        store.append([b"two"], 2)  # under always: written, its fsync fails: cut back, refused
        store.sync()  # under interval: confirmed, then the syncer's fsync fails
    assert failed.value.stopped and "restart the broker" in str(failed.value)
    with pytest.raises(WriteRefusedError, match="stopped"):
        store.append([b"three"], 3)
    store.close()
    again = reopen(files, fsync=policy)  # a restart: writes work again
    assert everything(again)[0] == b"one" and b"three" not in everything(again)
    assert again.append([b"four"], 4) == again.next_seq - 1


def test_a_read_error_while_serving_is_reported_as_a_range_and_not_kept() -> None:
    files = SimFiles()
    store = sim_store(files)
    for n in range(1, 2001):  # one record each: an index mark every 64 KiB
        store.append([payload(n)], 1)
    marks = list(store.segments[0].index_seqs)
    files.fail_at(files.steps + 1, Fault(errno.EIO))  # the next read meets a bad sector
    with pytest.raises(UnreadableRangeError, match="read error: Input/output error") as err:
        store.read(10, 100, 1 << 20)
    assert (err.value.first, err.value.end) == (10, marks[1])  # up to the next index mark
    assert store.read(10, 1, 1 << 20)[1] == [payload(10)]  # it may pass: no hole is kept
    assert not store.holes
