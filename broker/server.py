"""The broker: connections in, topic logs in the middle, subscriptions out.

Each connection has two tasks. The reader parses every complete frame of a
read in one pass and acts on it: a PUB appends to a topic log and marks the
matching subscriptions "dirty". The sender wakes, reads each dirty
subscription's log from its cursor (as far as its credit allows), and writes
the runs in one `writelines`. Publishing never waits for a subscriber
(unless the block policy says so), and a subscriber that cannot keep up only
moves its own cursor; when the log evicts past that cursor, it gets a GAP
frame with the exact number of messages it lost.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from broker import protocol as p
from broker.errors import ProtocolError
from broker.routing import Router, validate_pattern, validate_topic
from broker.topics import Retention, TopicLog

log = logging.getLogger("slipstream.broker")

OnFull = Literal["drop", "block"]
READ_CHUNK_BYTES = 256 * 1024
MAX_WINDOW = 1_000_000


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

    @property
    def max_payload_bytes(self) -> int:
        return self.max_frame_bytes - p.FRAME_ROOM_BYTES


def now_us() -> int:
    return time.time_ns() // 1000


class Subscription:
    """One subscription of one connection: a cursor and an ack mark per matching topic."""

    __slots__ = ("acked", "connection", "cursors", "delivered", "durable", "gaps",
                 "inflight", "missed", "pattern", "sid", "unacked", "window")

    def __init__(self, connection: Connection, sid: int, pattern: str,
                 window: int, durable: str | None) -> None:
        self.connection = connection
        self.sid = sid
        self.pattern = pattern
        self.window = window
        self.durable = durable
        self.cursors: dict[TopicLog, int] = {}  # next seq to send, per topic
        self.acked: dict[TopicLog, int] = {}  # first seq not yet acknowledged, per topic
        self.unacked: deque[list[Any]] = deque()  # [log, end_seq, count] per run sent
        self.inflight = 0
        self.delivered = 0
        self.gaps = 0
        self.missed = 0

    def start_at(self, topic: TopicLog, seq: int) -> None:
        self.cursors[topic] = seq
        self.acked[topic] = seq

    def pending(self) -> int:
        return sum(max(0, topic.next_seq - cursor) for topic, cursor in self.cursors.items())

    def acknowledge(self, count: int) -> None:
        """Move ack marks forward over the oldest `count` delivered messages."""
        self.inflight -= count
        while count:
            run = self.unacked[0]
            topic, end, size = run
            taken = min(size, count)
            self.acked[topic] = max(self.acked[topic], end - size + taken)
            count -= taken
            if taken == size:
                self.unacked.popleft()
            else:
                run[2] = size - taken


@dataclass
class Durable:
    """What the broker remembers of a durable subscription between connections."""

    pattern: str
    acked: dict[str, int]
    owner: Subscription | None = None


class Broker:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.epoch = time.time_ns() // 1000  # tells clients a restarted broker from the same one
        self.started_monotonic = time.monotonic()
        self.topics: dict[str, TopicLog] = {}
        self.router: Router[Subscription] = Router()
        self.durables: dict[str, Durable] = {}
        self.connections: set[Connection] = set()
        self._room_freed: dict[TopicLog, asyncio.Event] = {}
        self._topic_locks: dict[TopicLog, asyncio.Lock] = {}
        self._server: asyncio.Server | None = None
        self._next_connection_id = 1

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.config.host, self.config.port, limit=READ_CHUNK_BYTES
        )
        log.info("listening on %s:%d (on-full=%s, retain %d messages / %d bytes per topic)",
                 self.config.host, self.port, self.config.on_full,
                 self.config.retention.max_messages, self.config.retention.max_bytes)

    @property
    def port(self) -> int:
        assert self._server is not None, "broker not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop accepting, tell every client we are going, and end all connections."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close(p.Error("shutdown", "broker is shutting down", None, True))
        tasks = [c.task for c in self.connections if c.task is not None]
        if tasks:
            _, still_running = await asyncio.wait(tasks, timeout=0.5)
            for task in still_running:
                task.cancel()
            await asyncio.gather(*still_running, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        log.info("stopped")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(self, self._next_connection_id, reader, writer)
        self._next_connection_id += 1
        self.connections.add(connection)
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
            self._detach(connection)

    # --- topics and subscriptions -------------------------------------------

    def topic(self, name: str) -> TopicLog:
        """The log of topic `name`, created (and routed) on first use."""
        topic = self.topics.get(name)
        if topic is None:
            validate_topic(name)
            topic = self.topics[name] = TopicLog(name, self.config.retention)
            for sub in self.router.add_topic(name):
                sub.start_at(topic, 1)  # a topic born after the subscription: all of it is new
        return topic

    def subscribe(self, connection: Connection, frame: p.Subscribe) -> Subscription:
        validate_pattern(frame.pattern)
        if not 1 <= frame.window <= MAX_WINDOW:
            raise ProtocolError(f"window {frame.window} is outside 1..{MAX_WINDOW:,}",
                                code="bad_subscribe")
        start = frame.start
        if not (start in ("new", "earliest") or (type(start) is int and start >= 1)):
            raise ProtocolError(f"start {start!r} is not 'new', 'earliest' or a seq >= 1",
                                code="bad_subscribe")
        sub = Subscription(connection, frame.sid, frame.pattern, frame.window, frame.durable)
        durable = self.durables.get(frame.durable) if frame.durable else None
        if durable is not None:
            self._check_durable(durable, frame)
        for name in self.router.add_subscriber(sub, frame.pattern):
            topic = self.topics[name]
            if durable is not None:
                sub.start_at(topic, durable.acked.get(name, 1))
            elif start == "new":
                sub.start_at(topic, topic.next_seq)
            elif start == "earliest":
                sub.start_at(topic, topic.first_seq)
            else:
                sub.start_at(topic, int(start))
        if frame.durable:
            if durable is None:
                durable = self.durables[frame.durable] = Durable(frame.pattern, {})
            durable.owner = sub
        return sub

    def _check_durable(self, durable: Durable, frame: p.Subscribe) -> None:
        if durable.owner is not None:
            raise ProtocolError(
                f"durable {frame.durable!r} is in use by connection "
                f"{durable.owner.connection.describe()}", code="durable_in_use")
        if durable.pattern != frame.pattern:
            raise ProtocolError(
                f"durable {frame.durable!r} was created for pattern {durable.pattern!r}, "
                f"not {frame.pattern!r}", code="durable_pattern")

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a subscription; a durable one keeps its ack marks for the next owner."""
        self.router.remove_subscriber(sub)
        if sub.durable:
            durable = self.durables[sub.durable]
            durable.acked = {topic.name: seq for topic, seq in sub.acked.items()}
            durable.owner = None
        for topic in sub.cursors:
            self.room_freed(topic)

    def _detach(self, connection: Connection) -> None:
        for sub in connection.subscriptions.values():
            self.unsubscribe(sub)
        connection.subscriptions.clear()

    # --- publishing ------------------------------------------------------------

    def notify(self, topic: TopicLog) -> None:
        """Tell every subscription of `topic` that it has something new to read."""
        for sub in self.router.subscribers(topic.name):
            sub.connection.mark_dirty(sub, topic)

    def keep_from(self, topic: TopicLog, publisher: Connection) -> int:
        """Block policy: the oldest seq some other connection's subscription still needs."""
        return min((sub.acked[topic] for sub in self.router.subscribers(topic.name)
                    if sub.connection is not publisher), default=topic.next_seq)

    def room_freed(self, topic: TopicLog) -> None:
        event = self._room_freed.pop(topic, None)
        if event is not None:
            event.set()

    async def wait_for_room(self, topic: TopicLog) -> None:
        event = self._room_freed.setdefault(topic, asyncio.Event())
        await event.wait()

    def topic_lock(self, topic: TopicLog) -> asyncio.Lock:
        return self._topic_locks.setdefault(topic, asyncio.Lock())

    # --- stats -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        subscribers: dict[str, int] = {}
        for sub in (s for c in self.connections for s in c.subscriptions.values()):
            for topic in sub.cursors:
                subscribers[topic.name] = subscribers.get(topic.name, 0) + 1
        return {
            "server": {
                "name": self.config.server_name, "protocol": p.PROTOCOL_VERSION,
                "epoch": self.epoch, "pid": os.getpid(),
                "uptime_s": round(time.monotonic() - self.started_monotonic, 3),
                "on_full": self.config.on_full,
                "retain_messages": self.config.retention.max_messages,
                "retain_bytes": self.config.retention.max_bytes,
                "connections": len(self.connections), "durables": len(self.durables),
            },
            "topics": {
                name: {"published": t.published_total, "retained": t.retained,
                       "retained_bytes": t.retained_bytes, "first_seq": t.first_seq,
                       "next_seq": t.next_seq, "evicted": t.evicted_total,
                       "subscribers": subscribers.get(name, 0)}
                for name, t in sorted(self.topics.items())
            },
            "connections": [c.stats() for c in sorted(self.connections, key=lambda c: c.id)],
        }


class _Closed(Exception):
    """Internal: this connection is over; unwinds its tasks."""


class Connection:
    """One client's TCP connection: its handshake, its reader and its sender."""

    def __init__(self, broker: Broker, connection_id: int,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.broker = broker
        self.config = broker.config
        self.id = connection_id
        self.reader = reader
        self.writer = writer
        host, port = writer.get_extra_info("peername")[:2]
        self.peer = f"{host}:{port}"
        self.client_name = "?"
        self.subscriptions: dict[int, Subscription] = {}
        self.task = asyncio.current_task()
        self.published = 0
        self._out: list[bytes] = []  # frames waiting for the next writelines
        self._dirty: dict[tuple[Subscription, TopicLog], None] = {}  # ordered set
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._errors_logged: set[str] = set()
        self._closing = False

    def describe(self) -> str:
        return f"#{self.id} {self.client_name!r} ({self.peer})"

    # --- lifecycle -----------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._handshake()
            async with asyncio.TaskGroup() as tasks:
                self._sender = tasks.create_task(self._send_loop())
                tasks.create_task(self._read_loop())
        except* _Closed:
            pass
        except* (ConnectionError, TimeoutError) as group:
            log.info("connection %s ended: %s", self.describe(), group.exceptions[0])
        finally:
            self.writer.close()
        log.info("connection %s closed: published %d, delivered %d, gaps %d (%d missed)",
                 self.describe(), self.published, *self._delivery_totals())

    def close(self, error: p.Error | None = None) -> None:
        """End this connection from the broker's side, telling the client why."""
        if self._closing:
            return
        self._closing = True
        if error is not None:
            if error.code == "shutdown":
                log.info("closing %s: %s", self.describe(), error.message)
            else:
                self._log_once(error.code, "closing %s: %s", self.describe(), error.message)
            self._out.append(p.encode(error))
            self._flush()
        transport = self.writer.transport
        if transport.get_write_buffer_size():
            transport.abort()  # a client that is not reading would hold a graceful close open
        else:
            self.writer.close()
        self._wake.set()

    async def _handshake(self) -> None:
        decoder = p.FrameDecoder(self.config.max_frame_bytes)
        try:
            async with asyncio.timeout(self.config.handshake_timeout_s):
                frames: list[p.Frame | p.UnknownFrame] = []
                while not frames and decoder.error is None:
                    data = await self.reader.read(READ_CHUNK_BYTES)
                    if not data:
                        raise _Closed
                    frames = decoder.feed(data)
        except TimeoutError:
            self._refuse("handshake_timeout",
                         f"no HELLO within {self.config.handshake_timeout_s:g} s")
        if decoder.error is not None:
            self._refuse(decoder.error.code, str(decoder.error))
        hello = frames[0]
        if type(hello) is not p.Hello:
            self._refuse("handshake", f"first frame must be HELLO, got {type(hello).__name__}")
        assert type(hello) is p.Hello
        self.client_name = hello.client_name
        if hello.version != p.PROTOCOL_VERSION:
            self._refuse("version", f"protocol version {hello.version} is not supported "
                                    f"(this broker speaks {p.PROTOCOL_VERSION})")
        if self.config.token is not None and not hmac.compare_digest(
            (hello.token or "").encode(), self.config.token.encode()
        ):
            self._refuse("auth", "token missing or wrong" if hello.token else "token required")
        self._out.append(p.encode(p.Welcome(p.PROTOCOL_VERSION, self.config.server_name,
                                            self.broker.epoch, self.config.max_frame_bytes)))
        self._flush()
        log.info("connection %s: handshake done", self.describe())
        self._decoder = decoder
        self._act(frames[1:])

    def _refuse(self, code: str, message: str) -> None:
        self.close(p.Error(code, message, None, True))
        raise _Closed

    # --- reading ---------------------------------------------------------------

    async def _read_loop(self) -> None:
        decoder = self._decoder
        while True:
            data = await self.reader.read(READ_CHUNK_BYTES)
            if not data:
                self._stop_sender()
                raise _Closed
            frames = decoder.feed(data)
            if self.config.on_full == "block":
                await self._act_blocking(frames)
            else:
                self._act(frames)
            if decoder.error is not None:
                self.close(p.Error(decoder.error.code, str(decoder.error), None, True))
                self._stop_sender()
                raise _Closed

    def _stop_sender(self) -> None:
        if self._sender is not None:
            self._sender.cancel()

    def _act(self, frames: list[p.Frame | p.UnknownFrame]) -> None:
        for frame in frames:
            try:
                if type(frame) is p.Publish:
                    self._publish(frame)
                else:
                    self._control(frame)
            except ProtocolError as exc:
                self._reject(exc, frame)
        self._flush()

    async def _act_blocking(self, frames: list[p.Frame | p.UnknownFrame]) -> None:
        for frame in frames:
            try:
                if type(frame) is p.Publish:
                    await self._publish_blocking(frame)
                else:
                    self._control(frame)
            except ProtocolError as exc:
                self._reject(exc, frame)
        self._flush()

    def _reject(self, exc: ProtocolError, frame: p.Frame | p.UnknownFrame) -> None:
        """A request we refuse but can survive: answer with a non-fatal ERROR."""
        ref = getattr(frame, "confirm_id", None) if type(frame) is p.Publish else getattr(
            frame, "sid", getattr(frame, "request_id", None))
        self._log_once(exc.code, "connection %s: %s", self.describe(), exc)
        self._out.append(p.encode(p.Error(exc.code, str(exc), ref, False)))

    def _check_publish(self, frame: p.Publish) -> TopicLog:
        if not frame.payloads:
            raise ProtocolError(f"PUB to {frame.topic!r} carries no payloads", code="bad_publish")
        biggest = max(map(len, frame.payloads))
        if biggest > self.config.max_payload_bytes:
            raise ProtocolError(
                f"payload of {biggest:,} bytes to {frame.topic!r} exceeds max payload "
                f"{self.config.max_payload_bytes:,} (max-frame minus {p.FRAME_ROOM_BYTES})",
                code="payload_too_large")
        return self.broker.topic(frame.topic)

    def _publish(self, frame: p.Publish) -> None:
        topic = self._check_publish(frame)
        first_seq = topic.append(frame.payloads, now_us())
        self._published(topic, frame, first_seq)

    async def _publish_blocking(self, frame: p.Publish) -> None:
        """Block policy: append only what evicts no unacknowledged message; wait for the rest.

        While we wait we do not read this connection, so TCP pushes back on
        the publisher. The topic lock keeps this run's seqs consecutive.
        """
        topic = self._check_publish(frame)
        async with self.broker.topic_lock(topic):
            first_seq = topic.next_seq
            remaining = frame.payloads
            while remaining:
                keep_from = self.broker.keep_from(topic, self)
                appended = topic.append_within(remaining, now_us(), keep_from)
                if appended:
                    remaining = remaining[appended:]
                    self.broker.notify(topic)
                else:
                    self._flush()
                    await self.broker.wait_for_room(topic)
        self._published(topic, frame, first_seq)

    def _published(self, topic: TopicLog, frame: p.Publish, first_seq: int) -> None:
        self.published += len(frame.payloads)
        self.broker.notify(topic)
        if frame.confirm_id is not None:
            self._out.append(p.encode(p.PublishAck(frame.confirm_id, first_seq,
                                                   len(frame.payloads))))

    def _control(self, frame: p.Frame | p.UnknownFrame) -> None:
        """Every frame but PUB: rare, so clarity beats speed here."""
        match frame:
            case p.Ack(sid, count):
                self._ack(sid, count)
            case p.Subscribe():
                if frame.sid in self.subscriptions:
                    raise ProtocolError(f"sid {frame.sid} is already subscribed",
                                        code="bad_subscribe")
                sub = self.broker.subscribe(self, frame)
                self.subscriptions[frame.sid] = sub
                self._out.append(p.encode(p.Subscribed(frame.sid)))
                log.info("connection %s subscribed sid %d to %r (start=%s%s)", self.describe(),
                         frame.sid, frame.pattern, frame.start,
                         f", durable {frame.durable!r}" if frame.durable else "")
                for topic in sub.cursors:
                    self.mark_dirty(sub, topic)
            case p.Unsubscribe(sid):
                self.broker.unsubscribe(self._subscription(sid))
                del self.subscriptions[sid]
            case p.Ping(nonce):
                self._out.append(p.encode(p.Pong(nonce)))
            case p.Pong():
                pass
            case p.StatsRequest(request_id):
                self._out.append(p.encode(p.StatsReply(request_id, self.broker.stats())))
            case p.Error(code, message):
                log.warning("connection %s reports error [%s]: %s", self.describe(), code, message)
            case p.UnknownFrame(type_code):
                raise ProtocolError(f"unknown frame type {type_code}", code="unknown_frame")
            case _:
                raise ProtocolError(f"{type(frame).__name__} frames are sent by the broker, "
                                    "not to it", code="unexpected_frame")

    def _subscription(self, sid: int) -> Subscription:
        sub = self.subscriptions.get(sid)
        if sub is None:
            raise ProtocolError(f"no subscription with sid {sid}", code="unknown_sid")
        return sub

    def _ack(self, sid: int, count: int) -> None:
        sub = self._subscription(sid)
        if not 0 < count <= sub.inflight:
            raise ProtocolError(f"ACK of {count} for sid {sid}, which has {sub.inflight} "
                                "unacknowledged", code="bad_ack")
        sub.acknowledge(count)
        for topic, cursor in sub.cursors.items():
            if cursor < topic.next_seq:
                self.mark_dirty(sub, topic)
            self.broker.room_freed(topic)

    # --- sending ---------------------------------------------------------------

    def mark_dirty(self, sub: Subscription, topic: TopicLog) -> None:
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
                self._flush()
                queued = self.writer.transport.get_write_buffer_size()
                if queued > self.config.write_high_water_bytes:
                    await self._drain()
                elif self._dirty:
                    await asyncio.sleep(0)  # more to send: let the readers run first

    def _deliver(self, sub: Subscription, topic: TopicLog) -> None:
        """Queue the next run of `topic` for `sub`, or a GAP if it fell behind retention."""
        credit = sub.window - sub.inflight
        if credit <= 0:
            return  # the ack that returns credit marks us dirty again
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
            stamps, payloads = topic.read(cursor, limit, self.config.max_run_bytes)
            count = len(payloads)
            tail = p.encode_deliver_tail(topic.name, cursor, stamps, payloads)
            topic.encoded_run = (cursor, count, tail)
        self._out.extend(p.encode_deliver(sub.sid, tail))
        cursor += count
        sub.cursors[topic] = cursor
        sub.inflight += count
        sub.delivered += count
        sub.unacked.append([topic, cursor, count])
        if cursor < topic.next_seq and sub.inflight < sub.window:
            self._dirty[sub, topic] = None

    def _gap(self, sub: Subscription, topic: TopicLog, first_missed: int, count: int) -> None:
        sub.gaps += 1
        sub.missed += count
        reason = (f"evicted: fell behind retention of {topic.name!r} "
                  f"({self.config.retention.max_messages:,} messages / "
                  f"{self.config.retention.max_bytes:,} bytes)")
        self._log_once("gap", "connection %s sid %d missed %d messages of %r from seq %d: %s",
                       self.describe(), sub.sid, count, topic.name, first_missed, reason)
        self._out.append(p.encode(p.Gap(sub.sid, topic.name, first_missed, count, reason)))

    def _flush(self) -> None:
        if self._out:
            self.writer.writelines(self._out)
            self._out = []

    async def _drain(self) -> None:
        """Wait for the socket to take our bytes; cut off a client that stops reading."""
        try:
            async with asyncio.timeout(self.config.write_stall_timeout_s):
                await self.writer.drain()
        except TimeoutError:
            queued = self.writer.transport.get_write_buffer_size()
            self.close(p.Error(
                "slow_consumer",
                f"took no bytes for {self.config.write_stall_timeout_s:g} s with "
                f"{queued:,} bytes queued; disconnected so it cannot hold back others",
                None, True))
            raise _Closed from None

    # --- reporting ---------------------------------------------------------------

    def _log_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._errors_logged:
            self._errors_logged.add(key)
            log.warning(message, *args)

    def _delivery_totals(self) -> tuple[int, int, int]:
        subs = self.subscriptions.values()
        return (sum(s.delivered for s in subs), sum(s.gaps for s in subs),
                sum(s.missed for s in subs))

    def stats(self) -> dict[str, Any]:
        delivered, gaps, missed = self._delivery_totals()
        return {
            "id": self.id, "name": self.client_name, "peer": self.peer,
            "published": self.published, "delivered": delivered, "gaps": gaps,
            "missed": missed,
            "pending": sum(s.pending() for s in self.subscriptions.values()),
            "unacked": sum(s.inflight for s in self.subscriptions.values()),
            "write_buffer_bytes": self.writer.transport.get_write_buffer_size(),
            "subscriptions": [
                {"sid": s.sid, "pattern": s.pattern, "durable": s.durable,
                 "delivered": s.delivered, "pending": s.pending(), "unacked": s.inflight,
                 "gaps": s.gaps, "missed": s.missed}
                for s in self.subscriptions.values()
            ],
        }
