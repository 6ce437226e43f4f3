"""Topic logs: seqs, eviction by count and bytes, reads at a cursor, the block policy's append."""

from __future__ import annotations

from broker.storage.topics import Retention, TopicLog


def payloads(count: int, size: int = 10) -> list[bytes]:
    return [bytes([index % 256]) * size for index in range(count)]


def test_seqs_start_at_one_and_are_consecutive_across_appends() -> None:
    log = TopicLog("t", Retention())
    assert log.append(payloads(3), 100) == 1
    assert log.append(payloads(2), 200) == 4
    assert (log.first_seq, log.next_seq, log.retained, log.published_total) == (1, 6, 5, 5)
    stamps, read = log.read(2, 10, 1 << 20)
    assert stamps == [100, 100, 200, 200]
    assert read == payloads(3)[1:] + payloads(2)


def test_eviction_by_message_count_keeps_the_newest() -> None:
    log = TopicLog("t", Retention(max_messages=4, max_bytes=1 << 20))
    log.append(payloads(10), 1)
    assert (log.first_seq, log.next_seq, log.retained, log.evicted_total) == (7, 11, 4, 6)
    assert log.read(7, 100, 1 << 20)[1] == payloads(10)[6:]
    assert log.retained_bytes == 40


def test_eviction_by_bytes_keeps_the_newest() -> None:
    log = TopicLog("t", Retention(max_messages=1000, max_bytes=55))
    log.append(payloads(10), 1)
    assert log.retained == 5 and log.retained_bytes == 50 and log.first_seq == 6


def test_long_running_eviction_compacts_and_stays_consistent() -> None:
    log = TopicLog("t", Retention(max_messages=100, max_bytes=1 << 30))
    for round_ in range(200):
        log.append([round_.to_bytes(4, "big")] * 37, round_)
    assert log.retained == 100 and log.next_seq == 200 * 37 + 1
    stamps, read = log.read(log.first_seq, 1000, 1 << 30)
    assert len(read) == 100 and stamps[-1] == 199 and read[-1] == (199).to_bytes(4, "big")
    assert len(log._payloads) <= 2 * 100 + 1024  # the dead prefix is cut off


def test_read_is_capped_by_bytes_but_returns_at_least_one_message() -> None:
    log = TopicLog("t", Retention())
    log.append([b"a" * 100, b"b" * 100, b"c" * 100], 1)
    assert len(log.read(1, 10, 250)[1]) == 2
    assert log.read(1, 10, 10)[1] == [b"a" * 100]
    assert log.read(3, 10, 10)[1] == [b"c" * 100]
    assert log.read(4, 10, 10) == ([], [])


def test_append_within_never_evicts_what_must_be_kept() -> None:
    log = TopicLog("t", Retention(max_messages=5, max_bytes=1 << 20))
    assert log.append_within(payloads(5), 1, keep_from_seq=1) == 5
    assert log.append_within(payloads(3), 1, keep_from_seq=1) == 0  # full of unacked messages
    assert log.append_within(payloads(3), 1, keep_from_seq=3) == 2  # seqs 1, 2 may go
    assert (log.first_seq, log.next_seq, log.evicted_total) == (3, 8, 2)


def test_append_within_takes_a_whole_batch_at_once_when_evictions_are_allowed() -> None:
    log = TopicLog("t", Retention(max_messages=5, max_bytes=1 << 20))
    log.append(payloads(5), 1)
    assert log.append_within(payloads(3), 2, keep_from_seq=4) == 3  # seqs 1..3 may go
    assert (log.first_seq, log.next_seq, log.retained, log.evicted_total) == (4, 9, 5, 3)
    assert log.read(4, 10, 1 << 20)[0] == [1, 1, 2, 2, 2]


def test_a_big_append_evicts_its_excess_at_once_and_the_books_stay_exact() -> None:
    from broker.storage.topics import ByteBudget

    budget = ByteBudget(1 << 30)
    log = TopicLog("t", Retention(max_messages=100, max_bytes=1 << 30), budget)
    sizes = [(index * 7) % 50 + 1 for index in range(5000)]
    for start in range(0, 5000, 1250):  # four PUBs, each far over the bound
        log.append([b"x" * size for size in sizes[start:start + 1250]], start)
    assert (log.first_seq, log.retained, log.evicted_total) == (4901, 100, 4900)
    assert log.retained_bytes == budget.used_bytes == sum(sizes[-100:])
    assert [len(p) for p in log.read(4901, 1000, 1 << 30)[1]] == sizes[-100:]
