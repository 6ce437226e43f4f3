"""A topic log kept on disk (--data-dir), with the recent part also in memory.

`DiskTopicLog` is a `TopicStorage` (broker/storage/storage.py), as the in-memory
`TopicLog` is, so the server does not care where a topic lives. Every record
is written to the topic's segment files before `append` returns (so before
any PUBACK; under --fsync always, on the disk itself); the newest records also
stay in a small in-memory `TopicLog`, the cache, which serves live
subscribers without touching the disk. Subscribers catching up read the
segments. Retention is exact by count; files go a whole segment at a time.
"""

from __future__ import annotations

import time

from broker.storage.segments import TopicStore
from broker.storage.topics import ByteBudget, Retention, TopicLog

DEFAULT_CACHE_BYTES = 4 * 1024 * 1024


class DiskTopicLog:
    """The same retention as in memory: `first_seq` follows --retain-messages exactly (a
    logical floor, as Kafka's log start offset), and files go a whole segment at a time
    once they lie below it, or when the bytes or the age say so."""

    def __init__(self, store: TopicStore, retention: Retention, budget: ByteBudget,
                 max_age_s: float = 0.0, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.name = store.name
        self.store = store
        self.retention = retention
        self.max_age_s = max_age_s
        self.created_seq = store.first_seq  # for a topic opened again: its oldest kept
        # Seqs below this are evicted, even while their segment file is still there.
        self._floor = max(store.first_seq, store.next_seq - retention.max_messages)
        cache_retention = Retention(max_messages=retention.max_messages,
                                    max_bytes=min(cache_bytes, retention.max_bytes))
        self.cache = TopicLog(self.name, cache_retention, budget, first_seq=store.next_seq)
        self.encoded_run: tuple[int, int, bytes] | None = None
        # Written since the last fsync. A topic just opened counts: what it recovered may be
        # a crash's unsynced leftovers, so the first sync after the start covers it.
        self.unsynced = True

    # --- what the server reads ---------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self.store.next_seq

    @property
    def first_seq(self) -> int:
        return max(self.store.first_seq, self._floor)

    @property
    def retained(self) -> int:
        return self.next_seq - self.first_seq

    @property
    def retained_bytes(self) -> int:
        return self.store.size_bytes

    @property
    def evicted_total(self) -> int:
        return self.first_seq - self.created_seq

    @property
    def published_total(self) -> int:
        return self.next_seq - self.created_seq

    # --- writing -------------------------------------------------------------------

    def append(self, payloads: list[bytes], stamp_us: int) -> int:
        """Write `payloads`, then apply retention; the first new seq."""
        return self._write(payloads, stamp_us, keep_from_seq=None)

    def append_within(self, payloads: list[bytes], stamp_us: int, keep_from_seq: int) -> int:
        """Block policy: append as many as fit without evicting `keep_from_seq` or later
        (by count exactly, by bytes a segment at a time); 0 when none does."""
        limits = self.retention
        keep = max(self.first_seq, min(keep_from_seq, self.next_seq))
        room = limits.max_messages - (self.next_seq - keep)
        if room <= 0:
            return 0
        if self.store.size_bytes > limits.max_bytes:
            self.store.enforce_retention(limits.max_messages, limits.max_bytes,
                                         keep_from_seq=keep)
            if self.store.size_bytes > limits.max_bytes and len(self.store.segments) > 1:
                return 0  # the bytes are held by messages a subscriber still needs
        taken = payloads[:room]
        self._write(taken, stamp_us, keep_from_seq=keep)
        return len(taken)

    def _write(self, payloads: list[bytes], stamp_us: int, keep_from_seq: int | None) -> int:
        """To disk, then to the cache, then retention (never past `keep_from_seq`).
        WriteRefusedError (disk full, read-only, a failed fsync) leaves both as they were."""
        first = self.store.append(payloads, stamp_us)
        self.unsynced = True
        self.cache.append(payloads, stamp_us)
        self._retain(keep_from_seq)
        return first

    def _retain(self, keep_from_seq: int | None) -> None:
        limits = self.retention
        floor = self.next_seq - limits.max_messages
        if keep_from_seq is not None:
            floor = min(floor, keep_from_seq)
        self._floor = max(self._floor, floor)
        self.store.enforce_retention(limits.max_messages, limits.max_bytes, self.max_age_s,
                                     time.time_ns() // 1000, keep_from_seq=keep_from_seq,
                                     below_seq=self._floor)
        if self.store.first_seq > self._floor:
            self._floor = self.store.first_seq  # bytes or age took a whole segment

    def expire_by_age(self) -> int:
        """Delete segments older than --retain-age (called now and then, not per publish)."""
        if self.max_age_s <= 0:
            return 0
        before = self.first_seq
        self.store.enforce_retention(1 << 62, 1 << 62, self.max_age_s)
        self._floor = max(self._floor, self.store.first_seq)
        return self.first_seq - before

    # --- reading -------------------------------------------------------------------

    def read(self, from_seq: int, max_count: int,
             max_bytes: int) -> tuple[list[int], list[bytes]]:
        """As TopicLog.read; UnreadableRangeError when the records at `from_seq` are damaged
        or their files are gone (the server sends a GAP for them)."""
        if from_seq >= self.cache.first_seq:
            return self.cache.read(from_seq, max_count, max_bytes)
        return self.store.read(from_seq, max_count, max_bytes)

    # --- memory and lifetime -----------------------------------------------------------

    def evict_for_budget(self, bytes_wanted: int, keep_from_seq: int) -> int:
        """The memory budget only shrinks the cache: the messages stay on disk."""
        return self.cache.evict_for_budget(bytes_wanted, self.cache.next_seq)

    def sync(self) -> None:
        """What was written reaches the disk itself; WriteRefusedError (and the topic takes
        no more writes) when an fsync fails."""
        if self.unsynced:
            self.unsynced = False
            self.store.sync()

    def release(self) -> None:
        self.cache.release()
        self.store.close()
