"""Where topics live: in memory, or on disk with --data-dir, behind one interface.

`TopicStorage` is everything the server uses of a topic's log; `TopicLog`
(broker/storage/topics.py) keeps it in memory, `DiskTopicLog` (broker/storage/disk_topics.py)
on disk. `MemoryStorage` and `DiskStorage` are the choice, made once at start:
they make every topic, load what a data directory holds, and save durable
positions, so the server never asks which kind a topic is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from broker.errors import StorageError
from broker.storage.datadir import DataDir, Positions
from broker.storage.disk_topics import DiskTopicLog
from broker.storage.segments import TopicStore
from broker.storage.topics import ByteBudget, Retention, TopicLog


class TopicStorage(Protocol):
    """One topic's retained messages, wherever they are kept."""

    name: str
    created_seq: int  # where a subscriber that predates the topic starts
    encoded_run: tuple[int, int, bytes] | None  # the last delivery run, shared (server.py)

    @property
    def first_seq(self) -> int: ...

    @property
    def next_seq(self) -> int: ...

    @property
    def retained(self) -> int: ...

    @property
    def retained_bytes(self) -> int: ...

    @property
    def evicted_total(self) -> int: ...

    @property
    def published_total(self) -> int: ...

    @property
    def unsynced(self) -> bool:
        """Written since the last `sync` (always False in memory)."""
        ...

    def append(self, payloads: list[bytes], stamp_us: int) -> int:
        """Store every payload; the first new seq. StorageError stores nothing."""
        ...

    def append_within(self, payloads: list[bytes], stamp_us: int, keep_from_seq: int) -> int:
        """The block policy: store what fits without evicting `keep_from_seq` or later."""
        ...

    def read(self, from_seq: int, max_count: int,
             max_bytes: int) -> tuple[list[int], list[bytes]]:
        """Stamps and payloads from `from_seq` on; UnreadableRangeError (on disk) when
        the records there cannot be served."""
        ...

    def evict_for_budget(self, bytes_wanted: int, keep_from_seq: int) -> int: ...

    def expire_by_age(self) -> int:
        """Evict what --retain-age says is too old; how many went."""
        ...

    def sync(self) -> None:
        """Make what was written survive a power loss; StorageError if it cannot."""
        ...

    def release(self) -> None: ...


class MemoryStorage:
    """Topics in memory only: nothing to load, nothing to save."""

    forgets_idle_topics = True  # --topic-ttl applies
    persistent = False  # durable positions live as long as the broker
    syncs_periodically = syncs_topics = False

    def __init__(self, retention: Retention, budget: ByteBudget) -> None:
        self.retention = retention
        self.budget = budget

    def open(self) -> tuple[int | None, list[TopicStorage], Positions, list[str]]:
        return None, [], {}, []

    def create(self, name: str, first_seq: int) -> TopicStorage:
        return TopicLog(name, self.retention, self.budget, first_seq)

    def save_durables(self, positions: Positions) -> None:
        pass

    def close(self) -> None:
        pass


class DiskStorage:
    """Topics, the epoch and durable positions in a data directory (docs/storage.md)."""

    forgets_idle_topics = False  # on disk, retention bounds topics
    persistent = True

    def __init__(self, data: DataDir, retention: Retention, budget: ByteBudget,
                 retain_age_s: float, segment_bytes: int, repair: bool = False,
                 verify: bool = False) -> None:
        self.data = data
        self.retention = retention
        self.budget = budget
        self.retain_age_s = retain_age_s
        self.segment_bytes = segment_bytes
        self.repair = repair
        self.verify = verify

    @property
    def syncs_periodically(self) -> bool:
        """Under --fsync always every write is synced at once; else a task does it."""
        return self.data.fsync != "always"

    @property
    def syncs_topics(self) -> bool:
        return self.data.fsync == "interval"

    def open(self) -> tuple[int | None, list[TopicStorage], Positions, list[str]]:
        """The epoch, every topic (checked), the durable positions, and notes for the log.
        StorageError when the directory is damaged or in use."""
        self.data.open(self.repair)
        topics: list[TopicStorage] = []
        notes = list(self.data.notes)
        for store, report in self.data.open_topics(self.repair, self.segment_bytes,
                                                   self.verify):
            topics.append(self._topic(store))
            notes.extend(f"topic {store.name!r}: {note}" for note in report.notes)
        return self.data.epoch, topics, within_logs(self.data.load_durables(), topics), notes

    def create(self, name: str, first_seq: int) -> TopicStorage:
        """A new topic's directory, made whole before it is used (StorageError if not)."""
        return self._topic(self.data.create_topic(name, first_seq, self.segment_bytes))

    def _topic(self, store: TopicStore) -> DiskTopicLog:
        return DiskTopicLog(store, self.retention, self.budget, self.retain_age_s)

    def save_durables(self, positions: Positions) -> None:
        self.data.save_durables(positions)

    def close(self) -> None:
        self.data.close()


def within_logs(durables: Positions, topics: list[TopicStorage]) -> Positions:
    """Durable positions no further than each log's end. After a power loss a position
    saved within 100 ms can be past a tail that was lost; resuming there would skip the
    new messages that take those seqs."""
    ends = {topic.name: topic.next_seq for topic in topics}
    return {name: (pattern, {topic: min(seq, ends.get(topic, seq))
                             for topic, seq in acked.items()})
            for name, (pattern, acked) in durables.items()}


def sync_topics(topics: Iterable[TopicStorage]) -> list[StorageError]:
    """fsync each topic written since its last sync (run in a thread: fsync can take ms);
    why each that failed did (each of them now refuses writes)."""
    failed = []
    for topic in topics:
        try:
            topic.sync()
        except StorageError as exc:
            failed.append(exc)
    return failed
