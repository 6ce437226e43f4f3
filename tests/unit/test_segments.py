"""The on-disk topic log (broker/storage/segments.py): records, reads from any seq, rolling,
retention by whole segments, and recovery from what a crash or a bad disk leaves."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.errors import StorageError
from broker.storage.records import HEADER, encode_records, encode_run, payloads_of, record_at, scan
from broker.storage.recovery import open_topic
from broker.storage.segments import (
    INDEX_EVERY_BYTES,
    TopicStore,
    UnreadableRangeError,
    topic_directory_name,
)


def payload(seq: int, size: int = 100) -> bytes:
    return (seq.to_bytes(8, "big") * (size // 8 + 1))[:size]


# One 100-byte payload as a record on disk: header, count, one size, the payload.
RECORD = len(encode_run(1, 0, [payload(1)]))


def filled(tmp_path: Path, count: int, segment_bytes: int = 1 << 20, size: int = 100,
           name: str = "live.TimingData", per_append: int = 50) -> TopicStore:
    """`count` payloads appended `per_append` at a time: a run record each."""
    store = TopicStore.create(tmp_path, name, segment_bytes=segment_bytes)
    for first in range(1, count + 1, per_append):
        batch = [payload(seq, size) for seq in range(first, min(first + per_append, count + 1))]
        assert store.append(batch, 1_000_000 + first) == first
    return store


def test_a_run_record_and_the_older_single_records_round_trip_through_scan() -> None:
    run = encode_run(7, 123, [b"a", b"", b"ccc"])
    data = run + encode_records(10, 5, [b"zz", b"y"])  # a log written before run records
    found = scan(data, expect_seq=7)
    assert list(found.seqs) == [7, 8, 9, 10, 11]
    assert list(found.stamps) == [123, 123, 123, 5, 5]
    assert list(found.offsets) == [0, 0, 0, len(run), len(run) + HEADER.size + 2]
    assert found.end == len(data) and found.torn is None and found.corrupt is None
    record = record_at(data, 0)
    assert record is not None and payloads_of(data, 0, record) == [b"a", b"", b"ccc"]


def test_no_flipped_bit_turns_a_run_into_a_single_record_or_back() -> None:
    for data in (encode_run(1, 0, [b"abc", b"de"]), encode_records(1, 0, [b"abcdefghij"])):
        for bit in range(32):  # every bit of the length word, the run flag among them
            flipped = bytearray(data)
            flipped[bit // 8] ^= 0x80 >> (bit % 8)
            assert record_at(bytes(flipped), 0) is None


def test_scan_tells_a_torn_tail_from_corruption_in_the_middle() -> None:
    data = bytearray(encode_records(1, 5, [b"x" * 50] * 3))
    torn = scan(bytes(data[:-10]))
    assert torn.count == 2 and torn.torn is not None and torn.corrupt is None
    flipped = bytearray(data)
    flipped[HEADER.size + 20] ^= 0xFF  # inside the first payload, with records after it
    middle = scan(bytes(flipped))
    assert middle.count == 0 and middle.corrupt is not None and "fails its CRC" in middle.corrupt
    last = bytearray(data)
    last[-1] ^= 0xFF  # the last record is bad, nothing follows: a torn write
    assert scan(bytes(last)).torn is not None and scan(bytes(last)).count == 2


def test_scan_refuses_a_seq_out_of_order() -> None:
    data = encode_records(1, 0, [b"a"]) + encode_records(3, 0, [b"b"]) + encode_records(
        4, 0, [b"c"])
    found = scan(data, expect_seq=1)
    assert found.count == 1 and "has seq 3, expected 2" in (found.corrupt or "")


def test_reads_from_any_seq_across_index_marks_and_segments(tmp_path: Path) -> None:
    store = filled(tmp_path, 5000, segment_bytes=128 * 1024)
    assert len(store.segments) > 3 and (store.first_seq, store.next_seq) == (1, 5001)
    for start in (1, 2, 37, 600, 601, 2999, 5000):
        _, payloads = store.read(start, 10, 1 << 20)  # fewer at a segment's end
        assert payloads and payloads == [payload(s) for s in range(start, start + len(payloads))]
    assert store.read(5001, 10, 1 << 20) == ([], [])


def test_reads_stop_at_max_bytes_but_always_return_one(tmp_path: Path) -> None:
    store = filled(tmp_path, 100, size=1000)
    assert len(store.read(1, 100, 4500)[1]) == 4
    assert len(store.read(1, 100, 10)[1]) == 1


def test_a_reopened_topic_continues_its_seqs(tmp_path: Path) -> None:
    store = filled(tmp_path, 1000, segment_bytes=64 * 1024)
    directory = store.directory
    store.close()
    again, report = open_topic(directory, segment_bytes=64 * 1024)
    assert (again.first_seq, again.next_seq, report.records) == (1, 1001, 1000)
    assert again.append([b"next"], 9) == 1001
    assert again.read(1001, 1, 100)[1] == [b"next"]
    assert again.read(500, 1, 1000)[1] == [payload(500)]


def test_a_torn_tail_is_cut_and_counted(tmp_path: Path) -> None:
    store = filled(tmp_path, 300, per_append=1)
    store.close()
    last = store.segments[-1].path
    last.write_bytes(last.read_bytes()[:-37])  # as if the machine died mid-write
    again, report = open_topic(store.directory)
    assert again.next_seq == 300 and report.torn_bytes == RECORD - 37
    assert "cut a torn tail" in report.notes[0]
    assert again.append([b"after"], 1) == 300  # the torn record's seq is written again


def test_corruption_in_the_middle_stops_the_open_unless_repaired(tmp_path: Path) -> None:
    store = filled(tmp_path, 300, per_append=1)
    store.close()
    segment = store.segments[-1].path
    data = bytearray(segment.read_bytes())
    data[RECORD * 100 + HEADER.size + 5] ^= 0xFF  # inside record 101
    segment.write_bytes(bytes(data))
    with pytest.raises(StorageError) as refused:
        open_topic(store.directory)
    message = str(refused.value)
    assert segment.name in message and "offset 13,200" in message and "--repair" in message
    repaired, report = open_topic(store.directory, repair=True)
    # Every intact record is kept: the damaged one becomes a hole that readers hear of.
    assert repaired.next_seq == 301 and report.repaired_bytes == RECORD
    assert repaired.read(100, 1, 1 << 20)[1] == [payload(100)]
    assert repaired.read(102, 199, 1 << 20)[1] == [payload(s) for s in range(102, 301)]
    with pytest.raises(UnreadableRangeError) as hole:
        repaired.read(101, 5, 1 << 20)
    assert (hole.value.first, hole.value.end) == (101, 102)


def test_damage_in_an_older_segment_tail_is_found_at_open(tmp_path: Path) -> None:
    store = filled(tmp_path, 3000, segment_bytes=64 * 1024, per_append=1)
    store.close()
    older = store.segments[1].path
    older.write_bytes(older.read_bytes()[:-50])  # an older segment lost its end
    with pytest.raises(StorageError, match="--repair"):
        open_topic(store.directory, segment_bytes=64 * 1024)
    repaired, report = open_topic(store.directory, repair=True,
                                       segment_bytes=64 * 1024)
    lost = store.segments[1].next_seq - 1  # the record cut short
    assert len(repaired.segments) == len(store.segments) and repaired.next_seq == 3001
    assert repaired.read(lost - 1, 1, 1000)[1] == [payload(lost - 1)]
    assert repaired.read(lost + 1, 1, 1000)[1] == [payload(lost + 1)]
    with pytest.raises(UnreadableRangeError, match="missing between two segments"):
        repaired.read(lost, 1, 1000)
    assert any("repaired" in note for note in report.notes)


def test_a_lost_index_is_rebuilt(tmp_path: Path) -> None:
    store = filled(tmp_path, 3000, segment_bytes=64 * 1024)
    store.close()
    store.segments[0].index_path.unlink()
    again, _ = open_topic(store.directory, segment_bytes=64 * 1024)
    assert again.segments[0].index_path.exists()
    assert again.read(77, 1, 1000)[1] == [payload(77)]


def test_retention_deletes_whole_segments_oldest_first(tmp_path: Path) -> None:
    store = filled(tmp_path, 5000, segment_bytes=64 * 1024)
    segments_before = len(store.segments)
    removed = store.enforce_retention(max_messages=2000, max_bytes=1 << 30)
    assert removed > 0 and store.retained >= 2000 and store.retained - 2000 < 600
    assert len(store.segments) < segments_before
    assert store.first_seq == 5001 - store.retained
    assert not store.segments[0].path.with_name(f"{1:020d}.seg").exists()
    assert store.read(store.first_seq, 1, 1000)[1] == [payload(store.first_seq)]
    by_age = store.enforce_retention(max_messages=10**9, max_bytes=1 << 30, max_age_s=1,
                                     now_us=1_000_000 + 10**9)
    assert by_age > 0 and len(store.segments) == 1  # never the active one


def test_index_is_sparse(tmp_path: Path) -> None:
    store = filled(tmp_path, 20_000, segment_bytes=64 << 20, size=100)
    segment = store.segments[0]
    assert len(segment.index_seqs) == pytest.approx(segment.size / INDEX_EVERY_BYTES, abs=2)


@pytest.mark.parametrize("name", ["live.TimingData", "a/b.c", "x" * 255, "é.ü"])
def test_any_topic_gets_a_safe_directory_and_keeps_its_exact_name(
        tmp_path: Path, name: str) -> None:
    directory = topic_directory_name(name)
    assert "/" not in directory and len(directory.encode()) <= 255 and directory not in (
        ".", "..")
    store = TopicStore.create(tmp_path, name)
    store.append([b"1"], 1)
    store.close()
    assert open_topic(store.directory)[0].name == name


def test_disk_topic_retention_by_count_is_exact_like_memory(tmp_path: Path) -> None:
    from broker.storage.disk_topics import DiskTopicLog
    from broker.storage.topics import ByteBudget, Retention
    store = TopicStore.create(tmp_path, "t", segment_bytes=4096)
    topic = DiskTopicLog(store, Retention(max_messages=10, max_bytes=1 << 30), ByteBudget(1 << 30))
    for n in range(25):
        topic.append([payload(n + 1)], n)
    assert (topic.first_seq, topic.next_seq, topic.retained, topic.evicted_total) == (
        16, 26, 10, 15)
    assert topic.read(16, 100, 1 << 20)[1] == [payload(s) for s in range(16, 26)]
    assert store.first_seq <= 16 and len(store.segments) < 5  # files go a segment at a time


def test_disk_topic_block_policy_appends_only_what_fits(tmp_path: Path) -> None:
    from broker.storage.disk_topics import DiskTopicLog
    from broker.storage.topics import ByteBudget, Retention
    store = TopicStore.create(tmp_path, "t")
    topic = DiskTopicLog(store, Retention(max_messages=5, max_bytes=1 << 30), ByteBudget(1 << 30))
    assert topic.append_within([payload(n) for n in range(1, 4)], 0, keep_from_seq=1) == 3
    assert topic.append_within([payload(n) for n in range(4, 9)], 0, keep_from_seq=1) == 2
    assert topic.append_within([payload(9)], 0, keep_from_seq=1) == 0  # full of unacked
    assert topic.append_within([payload(6)], 0, keep_from_seq=3) == 1  # two acked: room
    assert (topic.first_seq, topic.next_seq) == (2, 7)


def test_disk_topic_age_retention_deletes_old_segments(tmp_path: Path) -> None:
    from broker.storage.disk_topics import DiskTopicLog
    from broker.storage.topics import ByteBudget, Retention
    store = TopicStore.create(tmp_path, "t", segment_bytes=4096)
    topic = DiskTopicLog(store, Retention(), ByteBudget(1 << 30))  # no age limit yet
    old_us = 1_000_000  # 1970: far older than a minute
    for n in range(1, 101):
        topic.append([payload(n)], old_us)
    topic.append([payload(101)], 2**62)  # a far-future stamp keeps the active segment young
    assert topic.first_seq == 1
    topic.max_age_s = 60  # as --retain-age 60s, seen by the broker's periodic check
    evicted = topic.expire_by_age()
    assert evicted > 0 and topic.first_seq == 1 + evicted
    assert topic.read(topic.first_seq, 1, 1 << 20)[1] == [payload(topic.first_seq)]


def test_the_index_kept_while_appending_is_the_one_a_scan_builds(tmp_path: Path) -> None:
    import random

    from broker.storage.segments import Segment
    rng = random.Random(5)
    store = TopicStore.create(tmp_path, "t")
    for _ in range(300):  # runs of every length, payloads of every size
        store.append([b"p" * rng.choice((0, 7, 200, 5000, 70_000))
                      for _ in range(rng.randint(1, 60))], 1)
    active = store.segments[0]
    rebuilt = Segment(store.directory, 1)
    rebuilt.take_scan(scan(active.path.read_bytes(), 0, 1))
    assert list(active.index_seqs) == list(rebuilt.index_seqs)
    assert list(active.index_offsets) == list(rebuilt.index_offsets)
    assert len(active.index_seqs) > 100


def test_a_log_written_before_run_records_opens_reads_and_grows(tmp_path: Path) -> None:
    """What an older broker left: single-payload records, an index beside the active
    segment, no START. It is read as it is; new appends are run records after it."""
    directory = tmp_path / "t"
    directory.mkdir()
    (directory / "TOPIC").write_text("t")
    old = encode_records(1, 5, [payload(n) for n in range(1, 1001)])
    (directory / f"{1:020d}.seg").write_bytes(old)
    (directory / f"{1:020d}.idx").write_bytes(bytes(16))  # stale: ignored for the last
    store, report = open_topic(directory)
    assert (store.first_seq, store.next_seq, report.notes) == (1, 1001, [])
    assert store.append([payload(n) for n in range(1001, 1101)], 6) == 1001
    store.close()
    again, _ = open_topic(directory)
    assert again.read(1, 2000, 1 << 30)[1] == [payload(n) for n in range(1, 1101)]
    assert again.read(999, 3, 1 << 30)[1] == [payload(n) for n in (999, 1000, 1001)]


def test_a_run_over_the_largest_record_is_split_into_records_that_read_back() -> None:
    payloads = [bytes([n]) * (20 << 20) for n in range(5)]  # 100 MiB in one PUB run
    data = encode_run(1, 7, payloads)
    found = scan(data, 0, 1)
    assert list(found.seqs) == [1, 2, 3, 4, 5] and found.end == len(data)
    assert len(set(found.offsets)) == 2  # two records of 2 and 3 payloads
    read: list[bytes] = []
    for offset in sorted(set(found.offsets)):
        record = record_at(data, offset)
        assert record is not None
        read += payloads_of(data, offset, record)
    assert read == payloads
