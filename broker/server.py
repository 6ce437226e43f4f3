"""The broker: connections in, topic logs in the middle, subscriptions out.

Each connection has two tasks. The reader parses every complete frame of a
read in one pass and acts on it: a PUB appends to a topic log and marks the
matching subscriptions "dirty". The sender wakes, reads each dirty
subscription's log from its cursor (as far as its credit allows), and writes
the runs in one `writelines`. Publishing never waits for a subscriber
(unless the block policy says so), and a subscriber that cannot keep up only
moves its own cursor; when the log evicts past that cursor, it gets a GAP
frame with the exact number of messages it lost.

Every buffer a peer can fill is bounded (docs/protocol.md, "Limits"): what
the broker writes to a connection goes through one path, and a connection
whose unsent output is above the high-water mark is not read until it takes
its bytes (or is cut off after --write-timeout); the reader acts on at most
FRAMES_PER_PASS frames before it lets other connections run; a connection
may send only a small HELLO before it is authenticated; topics, durables,
subscriptions, connections and the bytes retained across all topics are
capped, each refusal with its own error code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from broker import protocol as p
from broker import stats as broker_stats
from broker.broker_connection import BrokerConnection
from broker.datadir import DataDir, FsyncPolicy
from broker.errors import ProtocolError, StorageError
from broker.limits import LogThrottle, TokenBucket
from broker.routing import Router, echo, validate_pattern, validate_topic
from broker.segments import DEFAULT_SEGMENT_BYTES, UnreadableRangeError, WriteRefusedError
from broker.states import State
from broker.storage import DiskStorage, MemoryStorage, TopicStorage, sync_topics
from broker.tls import TlsFiles, server_context
from broker.topics import ByteBudget, Retention

Topic = TopicStorage  # in memory, or on disk with --data-dir (broker/storage.py)

log = logging.getLogger("slipstream.broker")

OnFull = Literal["drop", "block"]
# asyncio's StreamReader buffers up to twice this before it stops reading the
# socket, so it also bounds what a connection holds in the broker before HELLO.
READ_CHUNK_BYTES = 64 * 1024
MAX_WINDOW = 1_000_000
# The reader lets the other connections run after this many frames.
FRAMES_PER_PASS = 512
# Block policy: what a blocked publisher's connection may have read ahead while
# it waits (so that a publisher that hangs up is noticed and released).
MAX_LOOKAHEAD_BYTES = 2 * READ_CHUNK_BYTES
HOUSEKEEPING_MAX_INTERVAL_S = 30.0
# After a fatal ERROR the broker half-closes and reads (and drops) what the client still
# sends for up to this long: closing with unread bytes would be a TCP reset, which can
# destroy the ERROR in the client's buffers before it is read.
LINGER_AFTER_FATAL_S = 1.0
SYNC_INTERVAL_S = 0.1  # --fsync interval: topics and durable positions reach the disk this often
_COSTLY_FRAMES = (p.Subscribe, p.StatsRequest)


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = p.DEFAULT_PORT
    retention: Retention = field(default_factory=Retention)
    on_full: OnFull = "drop"
    max_frame_bytes: int = p.DEFAULT_MAX_FRAME_BYTES
    token: str | None = None
    server_name: str = "slipstream"
    # A connection whose socket takes no bytes for this long is cut off.
    write_stall_timeout_s: float = 10.0
    handshake_timeout_s: float = 5.0
    # The sender waits for the socket once this much is queued on it.
    write_high_water_bytes: int = 1024 * 1024
    # Caps on one MSG frame, so one busy topic cannot starve the others.
    max_run_messages: int = 4096
    max_run_bytes: int = 256 * 1024
    # Caps on what clients can make the broker hold (0 = no limit for the rates).
    max_connections: int = 1000
    max_handshakes: int = 128  # connections that have not finished HELLO, at once
    max_subscriptions: int = 1000  # per connection
    max_topics: int = 10_000
    max_durables: int = 10_000
    max_memory_bytes: int = 1024 * 1024 * 1024  # payload bytes retained across all topics
    topic_ttl_s: float = 24 * 3600.0  # idle topics nobody subscribes to are forgotten
    durable_ttl_s: float = 24 * 3600.0  # offline durables are forgotten after this
    max_publish_rate_msgs: float = 0.0  # per connection, per second
    max_publish_rate_bytes: float = 0.0
    # --data-dir: topics, the epoch and durable positions on disk (None: in memory only).
    data_dir: Path | None = None
    fsync: FsyncPolicy = "interval"
    repair: bool = False
    verify: bool = False  # --verify: read every record of every segment at start
    retain_age_s: float = 0.0  # on disk: delete segments older than this (0: no limit)
    http: tuple[str, int] | None = None  # --http: the monitoring endpoints (broker/monitor.py)
    tls: TlsFiles | None = None  # --tls-cert/--tls-key (and --tls-ca for client certificates)

    @property
    def segment_bytes(self) -> int:
        """Segments small enough that retention by bytes deletes about a quarter at a time."""
        return max(1 << 20, min(DEFAULT_SEGMENT_BYTES, self.retention.max_bytes // 4))

    @property
    def max_payload_bytes(self) -> int:
        return self.max_frame_bytes - p.FRAME_ROOM_BYTES

    def limits_summary(self) -> dict[str, float]:
        return {"max_connections": self.max_connections, "max_handshakes": self.max_handshakes,
                "max_subscriptions": self.max_subscriptions, "max_topics": self.max_topics,
                "max_durables": self.max_durables, "max_memory_bytes": self.max_memory_bytes,
                "topic_ttl_s": self.topic_ttl_s, "durable_ttl_s": self.durable_ttl_s,
                "max_publish_rate_msgs": self.max_publish_rate_msgs,
                "max_publish_rate_bytes": self.max_publish_rate_bytes,
                "write_high_water_bytes": self.write_high_water_bytes,
                "write_stall_timeout_s": self.write_stall_timeout_s}


def now_us() -> int:
    return time.time_ns() // 1000


class Cursors:
    """The broker's side of one subscription of one connection: a cursor and an ack mark
    per matching topic (the client's side is broker/subscription.py)."""

    __slots__ = ("acked", "connection", "cursors", "delivered", "durable", "gaps",
                 "inflight", "missed", "pattern", "sid", "stalled", "unacked", "window")

    def __init__(self, connection: Connection, sid: int, pattern: str,
                 window: int, durable: str | None) -> None:
        self.connection = connection
        self.sid = sid
        self.pattern = pattern
        self.window = window
        self.durable = durable
        self.cursors: dict[Topic, int] = {}  # next seq to send, per topic
        self.acked: dict[Topic, int] = {}  # first seq not yet acknowledged, per topic
        self.unacked: deque[list[Any]] = deque()  # [log, end_seq, count] per run sent
        self.inflight = 0
        # Topics with messages left that waited for credit: the next ACK wakes them (only
        # them: an ACK must not cost O(topics) when a pattern matches thousands).
        self.stalled: set[Topic] = set()
        self.delivered = 0
        self.gaps = 0
        self.missed = 0

    def start_at(self, topic: Topic, seq: int) -> None:
        self.cursors[topic] = seq
        self.acked[topic] = seq

    def pending(self) -> int:
        return sum(max(0, topic.next_seq - cursor) for topic, cursor in self.cursors.items())

    def acknowledge(self, count: int) -> dict[Topic, None]:
        """Move ack marks forward over the oldest `count` delivered messages (the
        connection has already taken them off `inflight`); the topics whose mark moved."""
        moved: dict[Topic, None] = {}
        while count:
            run = self.unacked[0]
            topic, end, size = run
            taken = min(size, count)
            self.acked[topic] = max(self.acked[topic], end - size + taken)
            moved[topic] = None
            count -= taken
            if taken == size:
                self.unacked.popleft()
            else:
                run[2] = size - taken
        return moved


@dataclass
class Durable:
    """What the broker remembers of a durable subscription between connections."""

    pattern: str
    acked: dict[str, int]
    owner: Cursors | None = None
    released_monotonic: float = field(default_factory=time.monotonic)


class Broker:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.epoch = time.time_ns() // 1000  # tells clients a restarted broker from the same one
        self._durables_dirty = False
        self.storage_failing = False  # the last write to --data-dir failed
        self.started_monotonic = time.monotonic()
        self.budget = ByteBudget(config.max_memory_bytes)
        self.storage: MemoryStorage | DiskStorage = MemoryStorage(config.retention, self.budget)
        if config.data_dir is not None:
            self.storage = DiskStorage(
                DataDir(config.data_dir, config.fsync), config.retention, self.budget,
                config.retain_age_s, config.segment_bytes, config.repair, config.verify)
        self.topics: dict[str, Topic] = {}
        self.router: Router[Cursors] = Router()
        self.durables: dict[str, Durable] = {}
        self.connections: set[Connection] = set()
        self.handshaking = 0
        # Totals of what the limits refused or removed, shown in STATS.
        self.counters: dict[str, int] = dict.fromkeys(
            ("refused_connections", "budget_evictions", "expired_topics", "expired_durables",
             "slow_consumers"), 0)
        self.log_throttle = LogThrottle(log)
        # Since the start, for monitoring (broker/monitor.py): only ever grow.
        self.totals: dict[str, int] = dict.fromkeys(
            ("published", "delivered", "gaps", "missed", "unreadable", "bytes_in",
             "bytes_out"), 0)
        self.state: Literal["starting", "accepting", "stopping"] = "starting"
        self._last_publish: dict[Topic, float] = {}
        # A topic created again after it expired starts above every seq it had.
        self._expired_seq_floor = 1
        self._room_freed: dict[Topic, asyncio.Event] = {}
        self._topic_locks: dict[Topic, asyncio.Lock] = {}
        self._server: asyncio.Server | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._syncer: asyncio.Task[None] | None = None
        self._next_connection_id = 1

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self._load()  # before listening: a damaged DIR stops the start, nothing half-up
        tls = server_context(self.config.tls) if self.config.tls else None
        self._server = await asyncio.start_server(
            self._accept, self.config.host, self.config.port, limit=READ_CHUNK_BYTES,
            ssl=tls, ssl_handshake_timeout=self.config.handshake_timeout_s if tls else None)
        self._housekeeping = asyncio.create_task(self._housekeep(), name="broker-housekeeping")
        if self.storage.syncs_periodically:
            self._syncer = asyncio.create_task(self._sync_periodically(), name="broker-sync")
        self.state = "accepting"
        secured = ""
        if self.config.tls is not None:
            secured = " with TLS" + (", client certificates required"
                                     if self.config.tls.ca else "")
        log.info("listening on %s:%d%s (on-full=%s, retain %d messages / %d bytes per topic, "
                 "%d bytes in all)", self.config.host, self.port, secured, self.config.on_full,
                 self.config.retention.max_messages, self.config.retention.max_bytes,
                 self.config.max_memory_bytes)

    @property
    def port(self) -> int:
        assert self._server is not None, "broker not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop accepting, tell every client we are going, and end all connections."""
        self.state = "stopping"
        if self._server is not None:
            self._server.close()
        for task in (self._housekeeping, self._syncer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for connection in list(self.connections):
            connection.close("shutdown", "broker is shutting down")
        tasks = [c.task for c in self.connections if c.task is not None]
        if tasks:
            _, still_running = await asyncio.wait(tasks, timeout=0.5)
            for task in still_running:
                task.cancel()
            await asyncio.gather(*still_running, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._sync_all()
        for topic in self.topics.values():
            topic.release()
        self.storage.close()
        log.info("stopped")

    # --- the data directory ------------------------------------------------------

    def _load(self) -> None:
        """Open DIR: its lock, its epoch, every topic (checked) and the durable positions."""
        epoch, topics, durables, notes = self.storage.open()
        if epoch is None:
            return  # in memory: nothing to load
        self.epoch = epoch
        for note in notes:
            log.warning("%s", note)
        for topic in topics:
            self.topics[topic.name] = topic
            self.router.add_topic(topic.name)
            self._last_publish[topic] = time.monotonic()
        for name, (pattern, acked) in durables.items():
            self.durables[name] = Durable(pattern, acked)
        log.info("data directory %s: epoch %d, %d topics, %d durables", self.config.data_dir,
                 self.epoch, len(self.topics), len(self.durables))

    async def _sync_periodically(self) -> None:
        """--fsync interval: what was written reaches the disk within SYNC_INTERVAL_S; an
        fsync error stops that topic's writes, loudly, and the syncer goes on."""
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            if self.storage.syncs_topics:
                topics = [t for t in self.topics.values() if t.unsynced]
                if topics:
                    for error in await asyncio.to_thread(sync_topics, topics):
                        log.error("%s (its PUBs are refused with 'storage')", error)
            if self._durables_dirty:
                self._durables_dirty = False
                snapshot = self._durable_positions()
                try:
                    await asyncio.to_thread(self.storage.save_durables, snapshot)
                except OSError as exc:
                    self._durables_not_saved(exc)

    def _sync_all(self) -> None:
        for error in sync_topics(self.topics.values()):
            log.error("%s", error)
        if self.storage.persistent:
            self._save_durables()

    def _save_durables(self) -> bool:
        """Save every durable's positions now; False (and tried again later) if not."""
        self._durables_dirty = False
        try:
            self.storage.save_durables(self._durable_positions())
        except OSError as exc:
            self._durables_not_saved(exc)
            return False
        return True

    def _durables_not_saved(self, exc: OSError) -> None:
        self._durables_dirty = True  # the next sync tries again
        self.log_throttle.log(logging.ERROR, "durables", "cannot save durable positions in "
                              "%s: %s; trying again", self.config.data_dir, exc.strerror or exc)

    def durables_moved(self) -> None:
        """A durable's positions changed: written with the next sync (or now, under always)."""
        if not self.storage.persistent:
            return
        if self.storage.syncs_periodically:
            self._durables_dirty = True
        else:
            self._save_durables()

    def _durable_positions(self) -> dict[str, tuple[str, dict[str, int]]]:
        positions = {}
        for name, durable in self.durables.items():
            acked = durable.acked if durable.owner is None else {
                topic.name: seq for topic, seq in durable.owner.acked.items()}
            positions[name] = (durable.pattern, dict(acked))
        return positions

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        refusal = self._refusal()
        if refusal is not None:
            self.counters["refused_connections"] += 1
            self.log_throttle.warning(refusal.code, "refusing a connection: %s", refusal.message)
            writer.write(p.encode(refusal))
            writer.close()
            return
        connection = Connection(self, self._next_connection_id, reader, writer)
        self._next_connection_id += 1
        self.connections.add(connection)
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
            self._detach(connection)

    def _refusal(self) -> p.Error | None:
        """A fatal ERROR for a new connection over a cap, or None to let it in."""
        config = self.config
        if len(self.connections) >= config.max_connections:
            return p.Error("too_many_connections", f"the broker holds its maximum of "
                           f"{config.max_connections:,} connections (--max-connections)",
                           None, True)
        if self.handshaking >= config.max_handshakes:
            return p.Error("busy", f"{config.max_handshakes:,} connections are already in "
                           "their handshake (--max-handshakes); try again shortly", None, True)
        return None

    async def _housekeep(self) -> None:
        """Forget idle topics nobody reads and durables nobody has used, now and then."""
        interval = min(HOUSEKEEPING_MAX_INTERVAL_S,
                       max(0.05, min(self.config.topic_ttl_s, self.config.durable_ttl_s) / 4))
        while True:
            await asyncio.sleep(interval)
            self.expire(time.monotonic())

    def expire(self, now: float) -> None:
        ttl = self.config.durable_ttl_s
        for name, durable in list(self.durables.items()):
            if durable.owner is None and now - durable.released_monotonic > ttl:
                del self.durables[name]
                self.durables_moved()
                self.counters["expired_durables"] += 1
                log.info("forgot durable %s: unused for %g s (--durable-ttl)", echo(name), ttl)
        for topic in self.topics.values():
            if topic.expire_by_age():
                self.notify(topic)
        if not self.storage.forgets_idle_topics:
            return  # on disk, topics are not forgotten: --retain-age bounds them
        ttl = self.config.topic_ttl_s
        for topic, last in list(self._last_publish.items()):
            if now - last > ttl and self._expirable(topic):
                self._forget_topic(topic)
                log.info("forgot topic %s: no publish for %g s and no subscriber (--topic-ttl)",
                         echo(topic.name), ttl)

    def _expirable(self, topic: Topic) -> bool:
        if any(True for _ in self.router.subscribers(topic.name)):
            return False
        # An offline durable that has not read all of it still needs it.
        return all(d.acked.get(topic.name, topic.next_seq) >= topic.next_seq
                   for d in self.durables.values())

    def _forget_topic(self, topic: Topic) -> None:
        self._expired_seq_floor = max(self._expired_seq_floor, topic.next_seq)
        for durable in self.durables.values():
            durable.acked.pop(topic.name, None)  # caught up: nothing of it is owed
        del self.topics[topic.name]
        self.router.remove_topic(topic.name)
        self._last_publish.pop(topic, None)
        self._room_freed.pop(topic, None)
        self._topic_locks.pop(topic, None)
        topic.release()
        self.counters["expired_topics"] += 1

    # --- topics and subscriptions -------------------------------------------

    def topic(self, name: str) -> Topic:
        """The log of topic `name`, created (and routed) on first use."""
        topic = self.topics.get(name)
        if topic is None:
            validate_topic(name)
            if len(self.topics) >= self.config.max_topics:
                raise ProtocolError(
                    f"cannot create topic {echo(name)}: the broker holds its maximum of "
                    f"{self.config.max_topics:,} topics (--max-topics)", code="too_many_topics")
            topic = self._new_topic(name)
            self.topics[name] = topic
            for sub in self.router.add_topic(name):
                sub.start_at(topic, topic.created_seq)  # born after the subscription: all new
        self._last_publish[topic] = time.monotonic()
        return topic

    def _new_topic(self, name: str) -> Topic:
        try:
            return self.storage.create(name, self._expired_seq_floor)
        except StorageError as exc:
            raise ProtocolError(str(exc), code="storage") from None

    def subscribe(self, connection: Connection, frame: p.Subscribe) -> Cursors:
        validate_pattern(frame.pattern)
        if not 1 <= frame.window <= MAX_WINDOW:
            raise ProtocolError(f"window {frame.window} is outside 1..{MAX_WINDOW:,}",
                                code="bad_subscribe")
        start = frame.start
        if not (start in ("new", "earliest") or (type(start) is int and start >= 1)):
            raise ProtocolError(f"start {start!r} is not 'new', 'earliest' or a seq >= 1",
                                code="bad_subscribe")
        durable = self.durables.get(frame.durable) if frame.durable else None
        if durable is not None:
            self._check_durable(durable, frame)
        elif frame.durable and len(self.durables) >= self.config.max_durables:
            raise ProtocolError(
                f"cannot create durable {echo(frame.durable)}: the broker holds its maximum of "
                f"{self.config.max_durables:,} durables (--max-durables)",
                code="too_many_durables")
        sub = Cursors(connection, frame.sid, frame.pattern, frame.window, frame.durable)
        for name in self.router.add_subscriber(sub, frame.pattern):
            topic = self.topics[name]
            if durable is not None:
                sub.start_at(topic, durable.acked.get(name, topic.created_seq))
            elif start == "new":
                sub.start_at(topic, topic.next_seq)
            elif start == "earliest":
                sub.start_at(topic, topic.first_seq)
            else:
                # A seq beyond the newest means "from the next message on" (nothing is
                # skipped); one below the oldest is reported as a GAP of what was evicted.
                sub.start_at(topic, min(int(start), topic.next_seq))
        if frame.durable:
            created = durable is None
            if durable is None:
                durable = self.durables[frame.durable] = Durable(frame.pattern, {})
            durable.owner = sub
            if created:
                self._keep_new_durable(sub)
        return sub

    def _keep_new_durable(self, sub: Cursors) -> None:
        """A new durable's positions are on disk before its SUBACK: a crash right after it
        must not forget it (it would resume at 'new' and skip what it never read)."""
        if not self.storage.persistent or self._save_durables():
            return
        assert sub.durable is not None
        self.router.remove_subscriber(sub)
        del self.durables[sub.durable]
        raise ProtocolError(f"durable {echo(sub.durable)} not created: its position could not "
                            f"be saved in {self.config.data_dir}", code="storage")

    def _check_durable(self, durable: Durable, frame: p.Subscribe) -> None:
        if durable.owner is not None:
            raise ProtocolError(
                f"durable {echo(frame.durable or '')} is in use by connection "
                f"{durable.owner.connection.describe()}", code="durable_in_use")
        if durable.pattern != frame.pattern:
            raise ProtocolError(
                f"durable {echo(frame.durable or '')} was created for pattern "
                f"{echo(durable.pattern)}, not {echo(frame.pattern)}", code="durable_pattern")

    def unsubscribe(self, sub: Cursors) -> None:
        """Forget a subscription; a durable one keeps its ack marks for the next owner."""
        self.router.remove_subscriber(sub)
        if sub.durable:
            durable = self.durables.get(sub.durable)
            if durable is not None:
                durable.acked = {topic.name: seq for topic, seq in sub.acked.items()}
                durable.owner = None
                durable.released_monotonic = time.monotonic()
                self.durables_moved()
        for topic in sub.cursors:
            self.room_freed(topic)

    def _detach(self, connection: Connection) -> None:
        for sub in connection.subscriptions.values():
            self.unsubscribe(sub)
        connection.subscriptions.clear()

    # --- publishing ------------------------------------------------------------

    def notify(self, topic: Topic) -> None:
        """Tell every subscription of `topic` that it has something new to read."""
        for sub in self.router.subscribers(topic.name):
            sub.connection.mark_dirty(sub, topic)

    def keep_from(self, topic: Topic, publisher: Connection | None) -> int:
        """Block policy: the oldest seq some other connection's subscription still needs."""
        oldest = topic.next_seq
        for sub in self.router.subscribers(topic.name):  # once per PUB run: a plain loop
            if sub.connection is not publisher and sub.acked[topic] < oldest:
                oldest = sub.acked[topic]
        return oldest

    def make_room(self, wanted_bytes: int = 0) -> bool:
        """Keep retained bytes across all topics within --max-memory.

        Evicts the oldest messages of the largest topics (under `block`, only
        messages every subscriber has acknowledged) until `wanted_bytes` more
        fit, and a little further, so that one scan serves many publishes.
        Returns whether they fit. Subscribers behind get a GAP, as with
        per-topic retention.
        """
        budget = self.budget
        if budget.used_bytes + wanted_bytes <= budget.limit_bytes:
            return True
        target = budget.limit_bytes - wanted_bytes - budget.limit_bytes // 64
        block = self.config.on_full == "block"
        for topic in sorted(self.topics.values(), key=lambda t: t.retained_bytes, reverse=True):
            keep_from = self.keep_from(topic, None) if block else topic.next_seq
            evicted_before = topic.evicted_total
            topic.evict_for_budget(budget.used_bytes - target, keep_from)
            if topic.evicted_total != evicted_before:
                self.counters["budget_evictions"] += topic.evicted_total - evicted_before
                self.notify(topic)  # so that a subscriber behind hears of its GAP now
            if budget.used_bytes <= target:
                break
        return budget.used_bytes + wanted_bytes <= budget.limit_bytes

    def room_freed(self, topic: Topic) -> None:
        event = self._room_freed.pop(topic, None)
        if event is not None:
            event.set()

    def room_event(self, topic: Topic) -> asyncio.Event:
        return self._room_freed.setdefault(topic, asyncio.Event())

    def topic_lock(self, topic: Topic) -> asyncio.Lock:
        return self._topic_locks.setdefault(topic, asyncio.Lock())

    # --- stats -------------------------------------------------------------------

    def stats(self, options: dict[str, Any] | None = None) -> dict[str, Any]:
        return broker_stats.build(self, broker_stats.StatsQuery(options))


class _Closed(Exception):
    """Internal: this connection is over; unwinds its tasks."""


class Connection:
    """One client's TCP connection: its handshake, its reader and its sender.

    The asyncio layer. The conversation's rules (handshake, credit, which
    ERROR names which request, closing) are in the sans-I/O core,
    broker/broker_connection.py; this class moves bytes and does what only the
    broker can: store a PUB, find the topics of a SUB, send the logs' runs.
    """

    def __init__(self, broker: Broker, connection_id: int,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.broker = broker
        self.config = broker.config
        self.id = connection_id
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")  # None when reset before we got here
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "(gone)"
        self.core: BrokerConnection[Cursors] = BrokerConnection(
            server_name=self.config.server_name, epoch=broker.epoch,
            max_frame_bytes=self.config.max_frame_bytes, token=self.config.token,
            max_subscriptions=self.config.max_subscriptions)
        self.subscriptions = self.core.subscriptions  # by sid
        self.task = asyncio.current_task()
        self.published = 0
        self.throttled_s = 0.0
        self._lookahead: deque[bytes] = deque()  # read while a blocked PUB waited
        self._lookahead_bytes = 0
        self._dirty: dict[tuple[Cursors, Topic], None] = {}  # ordered set
        self._runs: dict[Cursors, list[bytes]] = {}  # this pass's runs, per subscription
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._errors_logged: set[str] = set()
        self._linger = False  # a fatal ERROR was sent: let it arrive before closing
        self._message_rate = (TokenBucket(self.config.max_publish_rate_msgs)
                              if self.config.max_publish_rate_msgs else None)
        self._byte_rate = (TokenBucket(self.config.max_publish_rate_bytes)
                           if self.config.max_publish_rate_bytes else None)

    @property
    def client_name(self) -> str:
        return self.core.client_name or "?"  # "?" until the client is authenticated

    @property
    def _closing(self) -> bool:
        return self.core.state in (State.CLOSING, State.CLOSED)

    def describe(self) -> str:
        return f"#{self.id} {self.client_name!r} ({self.peer})"

    def write_buffer_bytes(self) -> int:
        return self.writer.transport.get_write_buffer_size()

    # --- lifecycle -----------------------------------------------------------

    async def run(self) -> None:
        try:
            self.broker.handshaking += 1
            try:
                frames = await self._handshake()
            finally:
                self.broker.handshaking -= 1
            async with asyncio.TaskGroup() as tasks:
                self._sender = tasks.create_task(self._send_loop())
                tasks.create_task(self._read_loop(frames))
        except* _Closed:
            pass
        except* (ConnectionError, TimeoutError) as group:
            log.info("connection %s ended: %s", self.describe(), group.exceptions[0])
        finally:
            try:
                if self._linger:
                    await self._linger_after_fatal()
            finally:
                self.writer.close()
                if self.core.state is not State.CLOSED:
                    self.core.receive_eof()
        if self.core.client_name is not None:
            log.info("connection %s closed: published %d, delivered %d, gaps %d (%d missed)",
                     self.describe(), self.published, *self.delivery_totals())

    def close(self, code: str, message: str) -> None:
        """End this connection from the broker's side, telling the client why."""
        if self._closing:
            return
        self.core.fail(code, message)
        self._after_fatal()

    def _after_fatal(self) -> None:
        """The core has queued a fatal ERROR (ours, or the rules'): log it, send it, and
        close as fits."""
        fatal = self.core.fatal
        assert fatal is not None
        if fatal.code == "shutdown":
            log.info("closing %s: %s", self.describe(), fatal.message)
        else:
            self._log_once(fatal.code, "closing %s: %s", self.describe(), fatal.message)
        self._flush()
        transport = self.writer.transport
        if transport.get_write_buffer_size():
            transport.abort()  # a client that is not reading would hold a graceful close open
        elif fatal.code != "shutdown":
            self._linger = True  # run() half-closes, drains briefly, then closes
        else:
            self.writer.close()
        self._wake.set()

    async def _linger_after_fatal(self) -> None:
        """Half-close after the fatal ERROR, then read and drop the client's bytes until it
        closes or LINGER_AFTER_FATAL_S passes: the close is then orderly, not a reset."""
        with contextlib.suppress(OSError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(LINGER_AFTER_FATAL_S):
                while await self.reader.read(READ_CHUNK_BYTES):
                    pass

    async def _handshake(self) -> list[p.Frame | p.UnknownFrame]:
        """HELLO first, small, and in time; returns the frames pipelined behind it.

        Until the client is authenticated the core accepts frames of at most
        MAX_HELLO_BYTES (broker/broker_connection.py) and asyncio buffers at most
        2 x READ_CHUNK_BYTES, so a connection that never finishes its HELLO holds little.
        """
        core = self.core
        frames: list[p.Frame | p.UnknownFrame] = []
        try:
            async with asyncio.timeout(self.config.handshake_timeout_s):
                while core.state is State.HANDSHAKE:
                    data = await self.reader.read(READ_CHUNK_BYTES)
                    if not data:
                        raise _Closed
                    self.broker.totals["bytes_in"] += len(data)
                    frames = core.receive_data(data)
        except TimeoutError:
            core.fail("handshake_timeout", f"no HELLO within {self.config.handshake_timeout_s:g} s")
        if core.state is not State.OPEN:  # refused: the core queued the fatal ERROR
            self._after_fatal()
            raise _Closed
        self._flush()  # WELCOME
        log.info("connection %s: handshake done", self.describe())
        return frames  # pipelined behind HELLO, acted on by the reader

    # --- reading ---------------------------------------------------------------

    async def _read_loop(self, frames: list[p.Frame | p.UnknownFrame]) -> None:
        core = self.core
        while True:
            await self._act(frames)
            if core.broken():  # the core failed the connection: its ERROR is queued
                self._after_fatal()
                self._stop_sender()
                raise _Closed
            # Read no more while this client has not taken what we owe it: its
            # requests (PING, STATS, ...) must not pile up answers in our memory.
            await self._room_to_write()
            data = await self._next_data()
            if not data:
                core.receive_eof()
                self._stop_sender()
                raise _Closed
            self.broker.totals["bytes_in"] += len(data)
            frames = core.receive_data(data)

    async def _next_data(self) -> bytes:
        if self._lookahead:
            data = self._lookahead.popleft()
            self._lookahead_bytes -= len(data)
            return data
        return await self.reader.read(READ_CHUNK_BYTES)

    def _stop_sender(self) -> None:
        if self._sender is not None:
            self._sender.cancel()

    async def _act(self, frames: list[p.Frame | p.UnknownFrame]) -> None:
        """Act on frames in order; every FRAMES_PER_PASS frames, and whenever our
        output is over the high-water mark, let others run (and wait for the socket)."""
        block = self.config.on_full == "block"
        rated = self._message_rate is not None or self._byte_rate is not None
        budget = FRAMES_PER_PASS
        for frame in frames:
            try:
                if type(frame) is p.Publish:
                    if rated:
                        await self._throttle(frame)
                    if block:
                        await self._publish_blocking(frame)
                    else:
                        self._publish(frame)
                else:
                    self._control(frame)
                    # SUB and STATS cost up to O(topics): each ends the pass, so a storm of
                    # them cannot hold the loop; so does output over the high-water mark.
                    if type(frame) in _COSTLY_FRAMES or self._out_over_high_water():
                        budget = 0
            except ProtocolError as exc:
                self._reject(exc, frame)
            budget -= 1
            if budget <= 0:
                await self._room_to_write()  # flushes what this pass queued
                budget = FRAMES_PER_PASS
        self._flush()

    def _out_over_high_water(self) -> bool:
        self._flush()
        return self.writer.transport.get_write_buffer_size() > self.config.write_high_water_bytes

    async def _room_to_write(self) -> None:
        """Yield to the loop; and while our unsent output is over the high-water mark,
        wait for the client to take it (cut off after --write-timeout)."""
        if self._out_over_high_water():
            await self._drain()
        else:
            await asyncio.sleep(0)

    async def _throttle(self, frame: p.Publish) -> None:
        """--max-publish-rate: a publisher over its rate is not read until it is back under."""
        delay = 0.0
        if self._message_rate is not None:
            delay = self._message_rate.take(len(frame.payloads))
        if self._byte_rate is not None:
            delay = max(delay, self._byte_rate.take(sum(map(len, frame.payloads))))
        if delay > 0:
            self._flush()
            self.throttled_s += delay
            await asyncio.sleep(delay)

    def _reject(self, exc: ProtocolError, frame: p.Frame | p.UnknownFrame) -> None:
        """A request we refuse but can survive: answer with a non-fatal ERROR."""
        self._log_once(exc.code, "connection %s: %s", self.describe(), exc)
        self.core.reject(exc, frame)

    def _check_publish(self, frame: p.Publish) -> Topic:
        if not frame.payloads:
            raise ProtocolError(f"PUB to {echo(frame.topic)} carries no payloads",
                                code="bad_publish")
        biggest = max(map(len, frame.payloads))
        if biggest > self.config.max_payload_bytes:
            raise ProtocolError(
                f"payload of {biggest:,} bytes to {echo(frame.topic)} exceeds max payload "
                f"{self.config.max_payload_bytes:,} (max-frame minus {p.FRAME_ROOM_BYTES})",
                code="payload_too_large")
        return self.broker.topic(frame.topic)

    def _publish(self, frame: p.Publish) -> None:
        topic = self._check_publish(frame)
        try:
            first_seq = topic.append(frame.payloads, now_us())
        except StorageError as exc:
            raise self._storage_error(topic, exc) from None
        if self.broker.budget.over:
            self.broker.make_room()
        self._published(topic, frame, first_seq)

    async def _publish_blocking(self, frame: p.Publish) -> None:
        """Block policy: append only what evicts no unacknowledged message; wait for the rest.

        While we wait we do not act on this connection's later frames, so TCP
        pushes back on the publisher; we do keep reading a little ahead, to see
        a publisher that hangs up. The topic lock keeps this run's seqs consecutive.
        """
        topic = self._check_publish(frame)
        if not self.broker.make_room(sum(map(len, frame.payloads))):
            raise ProtocolError(
                f"PUB to {echo(topic.name)} refused: the broker's retained bytes are at "
                f"--max-memory {self.config.max_memory_bytes:,} and every message is still "
                "unacknowledged by some subscriber", code="memory_full")
        async with self.broker.topic_lock(topic):
            first_seq = topic.next_seq
            remaining = frame.payloads
            while True:
                keep_from = self.broker.keep_from(topic, self)
                try:
                    appended = topic.append_within(remaining, now_us(), keep_from)
                except StorageError as exc:
                    raise self._storage_error(topic, exc) from None
                if appended == len(remaining):
                    break  # all stored (the common case): _published tells the subscribers
                if appended:
                    remaining = remaining[appended:]
                    self.broker.notify(topic)  # their acks are what frees the room
                self._flush()
                await self._wait_for_room(topic)
        self._published(topic, frame, first_seq)

    async def _wait_for_room(self, topic: Topic) -> None:
        """Wait until a subscriber frees room in `topic`, or raise _Closed if the publisher
        hangs up meanwhile (read ahead into a bounded buffer to see its end)."""
        room = asyncio.ensure_future(self.broker.room_event(topic).wait())
        try:
            while not room.done():
                if self._lookahead_bytes >= MAX_LOOKAHEAD_BYTES:
                    await room  # read ahead as far as we may: now only TCP holds the rest
                    break
                reading = asyncio.ensure_future(self.reader.read(READ_CHUNK_BYTES))
                await asyncio.wait({room, reading}, return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():
                    reading.cancel()  # StreamReader keeps its bytes for the next read
                    await asyncio.wait({reading})
                if reading.cancelled():
                    continue
                data = reading.result()
                if not data:
                    log.info("connection %s hung up while its PUB to %s waited for room",
                             self.describe(), echo(topic.name))
                    raise _Closed
                self._lookahead.append(data)
                self._lookahead_bytes += len(data)
        finally:
            room.cancel()

    def _storage_error(self, topic: Topic, exc: StorageError) -> ProtocolError:
        """Disk full, read-only: this PUB is refused (nothing of it stored), reads go on.
        After a failed fsync the topic takes no writes until a restart: said loudly, once."""
        self.broker.storage_failing = True
        if isinstance(exc, WriteRefusedError) and exc.stopped:
            self.broker.log_throttle.log(logging.ERROR, f"stopped:{topic.name}", "%s", exc)
            return ProtocolError(f"PUB to {echo(topic.name)} not stored: {exc}",
                                 code="storage")
        return ProtocolError(
            f"PUB to {echo(topic.name)} not stored: {exc} "
            f"({self.config.data_dir}); publishing works again once it can be written",
            code="storage")  # logged once per connection, as every refusal is

    def _published(self, topic: Topic, frame: p.Publish, first_seq: int) -> None:
        """Both publish paths end here, once every payload of `frame` is stored."""
        if self.broker.storage_failing:
            self.broker.storage_failing = False
            log.warning("storage works again: %s can be written", self.config.data_dir)
        self.published += len(frame.payloads)
        self.broker.totals["published"] += len(frame.payloads)
        self.broker.notify(topic)
        self.core.published(frame, first_seq)

    def _control(self, frame: p.Frame | p.UnknownFrame) -> None:
        """Every frame but PUB: the core applies the connection's rules (and raises
        ProtocolError when one is broken); what is left is the broker's to do."""
        match self.core.handle(frame):
            case p.Ack(sid, count):
                self._ack(self.core.subscription(sid), count)
            case p.Subscribe() as subscribe:
                self._subscribe(subscribe)
            case p.Unsubscribe(sid):
                self.broker.unsubscribe(self.core.unsubscribed(sid))
            case p.StatsRequest(request_id, options):
                self.core.send(p.StatsReply(request_id, self.broker.stats(options)))
            case p.Error(code, message):
                # Logged once per connection: a client cannot fill the broker's log.
                self._log_once("client-error", "connection %s reports error [%s]: %s "
                               "(further errors from it are not logged)", self.describe(),
                               code[:64], message[:200])
            case _:
                pass  # PING and PONG: the core has answered

    def _subscribe(self, frame: p.Subscribe) -> None:
        sub = self.broker.subscribe(self, frame)
        self.core.subscribed(frame.sid, sub)
        log.info("connection %s subscribed sid %d to %s (start=%s%s)", self.describe(),
                 frame.sid, echo(frame.pattern), frame.start,
                 f", durable {echo(frame.durable)}" if frame.durable else "")
        for topic in sub.cursors:
            self.mark_dirty(sub, topic)

    def _ack(self, sub: Cursors, count: int) -> None:
        """The core checked the count and returned the credit: move the ack marks."""
        moved = sub.acknowledge(count)
        if sub.durable:
            self.broker.durables_moved()
        if sub.stalled:  # credit is back: what waited for it may go on
            for topic in sub.stalled:
                if topic in sub.cursors:  # not forgotten meanwhile
                    self.mark_dirty(sub, topic)
            sub.stalled.clear()
        for topic in moved:  # --on-full block: a publisher may wait for this room
            self.broker.room_freed(topic)

    # --- sending ---------------------------------------------------------------

    def mark_dirty(self, sub: Cursors, topic: Topic) -> None:
        self._dirty[sub, topic] = None
        self._wake.set()

    async def _send_loop(self) -> None:
        wake = self._wake
        while not self._closing:
            await wake.wait()
            wake.clear()
            while self._dirty and not self._closing:
                dirty, self._dirty = self._dirty, {}
                for sub, topic in dirty:
                    if sub.connection.subscriptions.get(sub.sid) is sub:
                        self._deliver(sub, topic)
                if self._runs:
                    self._emit_runs()
                await self._room_to_write()  # more to send: let the readers run first

    def _deliver(self, sub: Cursors, topic: Topic) -> None:
        """Queue the next run of `topic` for `sub`, or a GAP if it fell behind retention."""
        credit = sub.window - sub.inflight
        if credit <= 0:
            sub.stalled.add(topic)  # the ack that returns credit marks it dirty again
            return
        cursor = sub.cursors[topic]
        first = topic.first_seq
        if cursor < first:
            # Reported only now that the subscriber can take messages again,
            # so a long stall becomes one notice with the whole count.
            self._gap(sub, topic, cursor, first - cursor)
            cursor = sub.cursors[topic] = first
            sub.acked[topic] = max(sub.acked[topic], first)
        limit = min(topic.next_seq - cursor, credit, self.config.max_run_messages)
        if limit <= 0:
            return
        # Subscribers at the same cursor share one encoding of the run.
        cached = topic.encoded_run
        if cached is not None and cached[0] == cursor and cached[1] <= limit:
            count, tail = cached[1], cached[2]
        else:
            try:
                stamps, payloads = topic.read(cursor, limit, self.config.max_run_bytes)
            except UnreadableRangeError as damage:
                self._unreadable(sub, topic, damage)
                return
            count = len(payloads)
            tail = p.encode_deliver_tail(topic.name, cursor, stamps, payloads)
            topic.encoded_run = (cursor, count, tail)
        if self.core.runs_per_frame:
            self._runs.setdefault(sub, []).append(tail)  # one frame per subscription
        else:
            self.core.send_encoded(p.encode_deliver(sub.sid, tail))
        cursor += count
        sub.cursors[topic] = cursor
        sub.inflight += count
        sub.delivered += count
        self.broker.totals["delivered"] += count
        sub.unacked.append([topic, cursor, count])
        if cursor < topic.next_seq:
            if sub.inflight < sub.window:
                self._dirty[sub, topic] = None
            else:
                sub.stalled.add(topic)

    def _emit_runs(self) -> None:
        """This pass's runs, one MSGM per subscription (cut where a frame would exceed
        max-frame): with topics interleaved, the runs are short and many, and a frame
        each would cost more than the messages."""
        room = self.config.max_frame_bytes - 64  # the MSGM's own header
        for sub, tails in self._runs.items():
            batch: list[bytes] = []
            size = 0
            for tail in tails:
                if batch and size + len(tail) + 1 > room:
                    self._emit(sub.sid, batch)
                    batch, size = [], 0
                batch.append(tail)
                size += len(tail) + 1
            self._emit(sub.sid, batch)
        self._runs.clear()

    def _emit(self, sid: int, tails: list[bytes]) -> None:
        if len(tails) == 1:
            self.core.send_encoded(p.encode_deliver(sid, tails[0]))
        else:
            self.core.send_encoded(p.encode_deliver_runs(sid, tails))

    def _unreadable(self, sub: Cursors, topic: Topic, damage: UnreadableRangeError) -> None:
        """Records on disk that cannot be served (damaged, files gone): a GAP that says so,
        then on from the first readable one, as after an eviction."""
        count = damage.end - damage.first
        self.broker.totals["unreadable"] += count
        self.broker.log_throttle.log(logging.ERROR, f"unreadable:{topic.name}", "%s", damage)
        self._gap(sub, topic, damage.first, count, f"unreadable: {damage.reason}")
        sub.cursors[topic] = damage.end  # its ack mark stays: a durable hears of it again
        self._dirty[sub, topic] = None

    def _gap(self, sub: Cursors, topic: Topic, first_missed: int, count: int,
             reason: str | None = None) -> None:
        sub.gaps += 1
        sub.missed += count
        totals = self.broker.totals
        totals["gaps"] += 1
        totals["missed"] += count
        reason = reason or (f"evicted: fell behind retention of {echo(topic.name)} "
                            f"({self.config.retention.max_messages:,} messages / "
                            f"{self.config.retention.max_bytes:,} bytes per topic, "
                            f"{self.config.max_memory_bytes:,} bytes in all)")
        self._log_once("gap", "connection %s sid %d missed %d messages of %s from seq %d: %s",
                       self.describe(), sub.sid, count, echo(topic.name), first_missed, reason)
        self.core.send(p.Gap(sub.sid, topic.name, first_missed, count, reason))

    def _flush(self) -> None:
        out = self.core.data_to_send()
        if out:
            self.broker.totals["bytes_out"] += sum(map(len, out))
            self.writer.writelines(out)

    async def _drain(self) -> None:
        """Wait for the socket to take our bytes; cut off a client that stops reading."""
        try:
            async with asyncio.timeout(self.config.write_stall_timeout_s):
                await self.writer.drain()
        except TimeoutError:
            queued = self.writer.transport.get_write_buffer_size()
            self.broker.counters["slow_consumers"] += 1
            self.close("slow_consumer",
                       f"took no bytes for {self.config.write_stall_timeout_s:g} s with "
                       f"{queued:,} bytes queued; disconnected so it cannot hold back others")
            raise _Closed from None

    # --- reporting ---------------------------------------------------------------

    def _log_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._errors_logged:
            self._errors_logged.add(key)
            log.warning(message, *args)

    def delivery_totals(self) -> tuple[int, int, int]:
        subs = self.subscriptions.values()
        return (sum(s.delivered for s in subs), sum(s.gaps for s in subs),
                sum(s.missed for s in subs))
