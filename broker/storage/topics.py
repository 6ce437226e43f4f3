"""Per-topic bounded retention: sequence numbers, eviction, reads at a cursor.

Every message published to a topic gets the next sequence number (from 1)
and stays in the topic's log until the log is over `retain_messages` or
`retain_bytes`; then the oldest go. Subscribers never own messages: each reads
the log at its own cursor, so a slow one never holds back the others, and one
that falls behind the oldest retained message knows exactly how many it lost.
Pure data structure, no asyncio: the server decides when to read and write.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import accumulate

# How many evicted slots may pile up at the front of a log before they are cut off.
# The slots hold no payload (it is released at eviction), only a list entry each.
COMPACT_AFTER_SLOTS = 1024


@dataclass(frozen=True)
class Retention:
    """How much one topic keeps. Both limits apply; whichever is hit first evicts."""

    max_messages: int = 100_000
    max_bytes: int = 64 * 1024 * 1024


class ByteBudget:
    """Payload bytes retained across every topic of a broker, against one limit.

    Per-topic retention alone has no bound over N topics; the broker checks
    this after each publish and evicts from the largest topics while over.
    """

    __slots__ = ("limit_bytes", "reserved_bytes", "used_bytes")

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        # Block policy: room promised to PUB runs stored a part at a time, so that other
        # publishers cannot take it while they wait (broker/server/session.py).
        self.reserved_bytes = 0

    @property
    def over(self) -> bool:
        return self.used_bytes > self.limit_bytes


class TopicLog:
    """The retained messages of one topic, oldest first.

    Stored as two parallel Python lists (payloads, timestamps) plus a head
    index: eviction releases the payload at once (its slot is emptied, so
    evicted bytes are freed when they are evicted, not later) and moves the
    head; the dead prefix of empty slots is cut off once it is as long as the
    live part, so both append and evict are amortised O(1) and a read of a
    run of messages is one C-level list slice.

    `first_seq` is normally 1; a topic that is created again after it expired
    starts above every seq it had before (see Broker.topic), so that
    (epoch, topic, seq) still names one message.
    """

    def __init__(self, name: str, retention: Retention, budget: ByteBudget | None = None,
                 first_seq: int = 1) -> None:
        self.name = name
        self.retention = retention
        self.budget = budget if budget is not None else ByteBudget(1 << 62)
        self.created_seq = first_seq  # where a subscriber that predates the topic starts
        self.next_seq = first_seq  # the seq the next published message will get
        self.retained_bytes = 0
        self.evicted_total = 0
        self._payloads: list[bytes] = []
        self._stamps_us: list[int] = []
        self._head = 0  # index in the lists of the oldest retained message
        # The last encoded delivery run: (first_seq, message count, bytes).
        # Subscribers at the same cursor share one encoding (see server.py).
        self.encoded_run: tuple[int, int, bytes] | None = None

    @property
    def first_seq(self) -> int:
        """Seq of the oldest retained message (== next_seq when the log is empty)."""
        return self.next_seq - self.retained

    @property
    def retained(self) -> int:
        return len(self._payloads) - self._head

    @property
    def published_total(self) -> int:
        return self.next_seq - self.created_seq

    def append(self, payloads: list[bytes], stamp_us: int) -> int:
        """Append every payload, evicting the oldest to stay in bounds; return the first new seq."""
        first = self.next_seq
        self._payloads.extend(payloads)
        self._stamps_us.extend([stamp_us] * len(payloads))
        size = sum(map(len, payloads))
        self.retained_bytes += size
        self.budget.used_bytes += size
        self.next_seq += len(payloads)
        self._evict(keep_from_seq=self.next_seq)
        return first

    def append_within(self, payloads: list[bytes], stamp_us: int, keep_from_seq: int) -> int:
        """Append as many payloads as fit without evicting seq `keep_from_seq` or later.

        Used by the block policy: messages a subscriber has not acknowledged
        are kept, and the publisher waits for the rest. Returns how many were
        appended (0 when the log is full of unacknowledged messages).
        """
        limits = self.retention
        retained = len(self._payloads) - self._head  # the properties, inline: once per run
        must_evict = retained + len(payloads) - limits.max_messages
        if (must_evict <= keep_from_seq - (self.next_seq - retained)
                and self.retained_bytes + sum(map(len, payloads)) <= limits.max_bytes):
            self.append(payloads, stamp_us)  # the common case: room for all, in one go
            return len(payloads)
        appended = 0
        for payload in payloads:
            size = len(payload)
            while self.retained and self.first_seq < keep_from_seq and (
                self.retained + 1 > limits.max_messages
                or self.retained_bytes + size > limits.max_bytes
            ):
                self._evict_oldest()
            if self.retained + 1 > limits.max_messages or (
                self.retained and self.retained_bytes + size > limits.max_bytes
            ):
                break
            self._payloads.append(payload)
            self._stamps_us.append(stamp_us)
            self.retained_bytes += size
            self.budget.used_bytes += size
            self.next_seq += 1
            appended += 1
        return appended

    def read(self, from_seq: int, max_count: int,
             max_bytes: int) -> tuple[list[int], list[bytes]]:
        """Up to `max_count` messages from `from_seq` (>= first_seq), `max_bytes` of payload.

        Always returns at least one message when one is available, however
        big, so a large message cannot wedge a subscriber.
        """
        stored = len(self._payloads)
        start = from_seq - self.next_seq + stored  # _head + (from_seq - first_seq), inline
        end = min(start + max_count, stored)
        payloads = self._payloads[start:end]
        sizes = list(accumulate(map(len, payloads)))
        if sizes and sizes[-1] > max_bytes:
            keep = max(1, bisect_right(sizes, max_bytes))
            payloads = payloads[:keep]
            end = start + keep
        return self._stamps_us[start:end], payloads

    def _evict(self, keep_from_seq: int) -> None:
        limits = self.retention
        if (len(self._payloads) - self._head <= limits.max_messages
                and self.retained_bytes <= limits.max_bytes):
            return  # within bounds: the common case, once per PUB run
        # Over the message count: the whole excess in one slice (a busy topic at its
        # bound evicts as many as each PUB adds, thousands at a time).
        excess = min(self.retained - limits.max_messages, keep_from_seq - self.first_seq)
        if excess > 0:
            self._evict_front(excess)
        if self.retained_bytes > limits.max_bytes:
            self._evict_front(self._oldest_covering(self.retained_bytes - limits.max_bytes,
                                                    keep_from_seq - self.first_seq))

    def _oldest_covering(self, wanted_bytes: int, at_most: int) -> int:
        """How many of the oldest messages (at most `at_most`) hold `wanted_bytes`: found a
        chunk at a time with C-level sums, not one eviction per message (a topic at its
        byte bound evicts about as many as each PUB adds)."""
        count, head, payloads = 0, self._head, self._payloads
        while wanted_bytes > 0 and count < at_most:
            chunk = list(accumulate(map(len, payloads[head + count:
                                                      head + min(at_most, count + 1024)])))
            if chunk[-1] >= wanted_bytes:
                return count + bisect_left(chunk, wanted_bytes) + 1
            count += len(chunk)
            wanted_bytes -= chunk[-1]
        return count

    def evict_for_budget(self, bytes_wanted: int, keep_from_seq: int) -> int:
        """Evict oldest messages (not `keep_from_seq` or later) until `bytes_wanted` are freed.

        Returns the bytes freed; the broker's memory budget calls this on its largest topics.
        """
        freed = 0
        while freed < bytes_wanted and self.retained and self.first_seq < keep_from_seq:
            freed += self._evict_oldest()
        return freed

    def _evict_oldest(self) -> int:
        return self._evict_front(1)

    def _evict_front(self, count: int) -> int:
        """Evict the `count` oldest messages; returns their payload bytes."""
        head = self._head
        end = head + count
        payloads = self._payloads
        size = sum(map(len, payloads[head:end]))
        payloads[head:end] = [b""] * count  # release the payloads now, not when cut off
        self.retained_bytes -= size
        self.budget.used_bytes -= size
        self._head = end
        self.evicted_total += count
        if end >= COMPACT_AFTER_SLOTS and end * 2 >= len(payloads):
            del payloads[:end]
            del self._stamps_us[:end]
            self._head = 0
        return size

    # In memory there is no disk to sync and no age limit (--retain-age is for --data-dir).
    unsynced = False

    def sync(self) -> None:
        pass

    def expire_by_age(self) -> int:
        return 0

    def release(self) -> None:
        """Give this topic's bytes back to the budget (the topic is being forgotten)."""
        self.budget.used_bytes -= self.retained_bytes
        self.retained_bytes = 0
        self._payloads.clear()
        self._stamps_us.clear()
        self._head = 0
        self.encoded_run = None
