"""Per-topic bounded retention: sequence numbers, eviction, reads at a cursor.

Every message published to a topic gets the next sequence number (from 1)
and stays in the topic's log until the log is over `retain_messages` or
`retain_bytes`; then the oldest go. Subscribers never own messages: each reads
the log at its own cursor, so a slow one never holds back the others, and one
that falls behind the oldest retained message knows exactly how many it lost.
Pure data structure, no asyncio: the server decides when to read and write.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate


@dataclass(frozen=True)
class Retention:
    """How much one topic keeps. Both limits apply; whichever is hit first evicts."""

    max_messages: int = 100_000
    max_bytes: int = 64 * 1024 * 1024


class TopicLog:
    """The retained messages of one topic, oldest first.

    Stored as two parallel Python lists (payloads, timestamps) plus a head
    index: eviction moves the head, and the dead prefix is cut off once it is
    as long as the live part, so both append and evict are amortised O(1) and
    a read of a run of messages is one C-level list slice.
    """

    def __init__(self, name: str, retention: Retention) -> None:
        self.name = name
        self.retention = retention
        self.next_seq = 1  # the seq the next published message will get
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
        return self.next_seq - 1

    def append(self, payloads: list[bytes], stamp_us: int) -> int:
        """Append every payload, evicting the oldest to stay in bounds; return the first new seq."""
        first = self.next_seq
        self._payloads.extend(payloads)
        self._stamps_us.extend([stamp_us] * len(payloads))
        self.retained_bytes += sum(map(len, payloads))
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
        batch_bytes = sum(map(len, payloads))
        must_evict = self.retained + len(payloads) - limits.max_messages
        if (self.retained_bytes + batch_bytes <= limits.max_bytes
                and must_evict <= keep_from_seq - self.first_seq):
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
            self.next_seq += 1
            appended += 1
        return appended

    def read(self, from_seq: int, max_count: int,
             max_bytes: int) -> tuple[list[int], list[bytes]]:
        """Up to `max_count` messages from `from_seq` (>= first_seq), `max_bytes` of payload.

        Always returns at least one message when one is available, however
        big, so a large message cannot wedge a subscriber.
        """
        start = self._head + (from_seq - self.first_seq)
        end = min(start + max_count, len(self._payloads))
        payloads = self._payloads[start:end]
        sizes = list(accumulate(map(len, payloads)))
        if sizes and sizes[-1] > max_bytes:
            keep = max(1, bisect_right(sizes, max_bytes))
            payloads = payloads[:keep]
            end = start + keep
        return self._stamps_us[start:end], payloads

    def _evict(self, keep_from_seq: int) -> None:
        limits = self.retention
        while self.retained and self.first_seq < keep_from_seq and (
            self.retained > limits.max_messages or self.retained_bytes > limits.max_bytes
        ):
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        self.retained_bytes -= len(self._payloads[self._head])
        self._head += 1
        self.evicted_total += 1
        if self._head >= 1024 and self._head * 2 >= len(self._payloads):
            del self._payloads[: self._head]
            del self._stamps_us[: self._head]
            self._head = 0
