"""The asyncio client every producer and consumer uses to talk to the broker.

    async with Client("127.0.0.1:20778", name="my-tool") as client:
        await client.publish("demo.hello", {"n": 1})
        async for message in await client.subscribe("demo.>"):
            print(message.topic, message.seq, message.data)

Publishes are coalesced: consecutive publishes to one topic become one PUB
frame, and all frames queued in one event-loop iteration go out in one write.
A subscription is an async iterator; a message counts as finished when the
next one is asked for, and finished messages are acknowledged in batches,
which is what returns flow-control credit to the broker. If the connection
drops, the client reconnects with backoff, resubscribes, and drops any
re-delivered message it already handed out; messages that can no longer be
had are reported as a `Gap` on the next message of their topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
from collections import deque
from typing import Any, Literal

import msgpack

from broker import protocol as p
from broker.errors import (
    BrokerError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    HandshakeRefusedError,
    ProtocolError,
    SlipstreamError,
)
from broker.protocol import Gap
from broker.routing import validate_pattern, validate_topic

log = logging.getLogger("slipstream.client")

DEFAULT_BROKER = f"127.0.0.1:{p.DEFAULT_PORT}"
BROKER_ENV = "SLIPSTREAM_BROKER"
TOKEN_ENV = "SLIPSTREAM_TOKEN"
READ_CHUNK_BYTES = 256 * 1024
WRITE_HIGH_WATER_BYTES = 1024 * 1024
ACK_DELAY_S = 0.05  # an idle subscription acknowledges what it finished this soon
YIELD_EVERY_BYTES = 256 * 1024  # a publishing task lets others run at least this often
GAP_LOG_INTERVAL_S = 1.0  # a subscription losing messages logs a summary at most this often
Start = Literal["new", "earliest"] | int


def parse_address(text: str) -> tuple[str, int]:
    """'HOST:PORT' (or ':PORT', or 'HOST') -> (host, port); ConfigError if malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, str(p.DEFAULT_PORT)
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"broker address {text!r} is not HOST:PORT") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} in {text!r} is outside 0..65535")
    return host, port


class Message:
    """One delivered message. `data` is the payload decoded from msgpack, on first use."""

    __slots__ = ("_data", "epoch", "gap", "payload", "seq", "timestamp_us", "topic")

    def __init__(self, topic: str, seq: int, timestamp_us: int, payload: bytes,
                 gap: Gap | None, epoch: int) -> None:
        self.topic = topic
        self.seq = seq  # per topic, from 1, within one broker epoch
        self.timestamp_us = timestamp_us  # broker's clock when it was published
        self.payload = payload  # the bytes exactly as published
        self.gap = gap  # messages of this topic lost just before this one, if any
        self.epoch = epoch  # the broker run that numbered it
        self._data: Any = _UNDECODED

    @property
    def data(self) -> Any:
        if self._data is _UNDECODED:
            self._data = msgpack.unpackb(self.payload)
        return self._data

    def __repr__(self) -> str:
        return f"Message({self.topic!r}, seq={self.seq}, {len(self.payload)} bytes)"


_UNDECODED: Any = object()


class Subscription:
    """An async iterator of the messages matching one pattern."""

    def __init__(self, client: Client, sid: int, pattern: str, start: Start,
                 durable: str | None, window: int, auto_ack: bool = True) -> None:
        self.client = client
        self.auto_ack = auto_ack  # False: the application calls ack() when it is safe
        self.sid = sid
        self.pattern = pattern
        self.start = start
        self.durable = durable
        self.window = window
        self.received = 0  # messages handed to the application
        self.gap_count = 0  # losses reported, by the broker or found on reconnect
        self.missed = 0  # messages those losses add up to
        self.recent_gaps: deque[Gap] = deque(maxlen=100)  # the latest, for a closer look
        self._ack_every = max(1, window // 4)
        self._queue: deque[tuple[p.Deliver | Gap, int, int]] = deque()  # item, generation, epoch
        self._ready = asyncio.Event()
        self._closed: BaseException | None = None
        self._batch: p.Deliver | None = None
        self._batch_epoch = 0  # the broker epoch that numbered the current batch
        self._index = 0
        self._batch_current = False  # batch came on the current connection (so is ackable)
        self._outstanding = False  # a message was handed out and not yet finished
        self._done = 0  # finished, not yet acknowledged (current connection only)
        self._handed = 0  # manual ack: handed out on this connection, not yet ack()ed
        self._last_seq: dict[str, int] = {}  # highest seq handed out per topic, this epoch
        self._pending_gaps: dict[str, Gap] = {}
        self._ack_timer: asyncio.TimerHandle | None = None
        self._gap_log_next = 0.0
        self._gaps_logged = (0, 0)  # gap_count, missed when last logged
        self._gap_log_timer: asyncio.TimerHandle | None = None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        if self._outstanding:  # asking for the next message finishes the previous one
            self._outstanding = False
            if self.auto_ack:
                self._finish(1)
            else:
                self._handed += 1
        while True:
            batch = self._batch
            if batch is not None and self._index < len(batch.payloads):
                index = self._index
                self._index = index + 1
                self._outstanding = self._batch_current
                self.received += 1
                topic = batch.topic
                gap = self._pending_gaps.pop(topic, None) if self._pending_gaps else None
                return Message(topic, batch.first_seq + index, batch.timestamps_us[index],
                               batch.payloads[index], gap, self._batch_epoch)
            self._batch = None
            if self._queue:
                self._load(*self._queue.popleft())
                continue
            self._ack_soon()  # about to wait: give credit back, but not a frame per message
            if self._closed is not None:
                if isinstance(self._closed, StopAsyncIteration):
                    raise StopAsyncIteration
                raise self._closed
            self._ready.clear()
            await self._ready.wait()

    def _load(self, item: p.Deliver | Gap, generation: int, epoch: int) -> None:
        """Make `item` current: note gaps, skip re-deliveries, find losses on reconnect."""
        current = generation == self.client.generation
        same_epoch = epoch == self.client.epoch
        last = self._last_seq.get(item.topic, 0) if same_epoch else 0
        if type(item) is Gap:
            self._record_gap(item)
            if same_epoch:
                self._last_seq[item.topic] = max(last, item.first_seq + item.missed - 1)
            return
        assert type(item) is p.Deliver
        skip = max(0, min(last - item.first_seq + 1, len(item.payloads)))
        if current and skip:  # re-delivered after a reconnect: we had them already
            self._done += skip
            self._flush_acks()
        first_new = item.first_seq + skip
        if same_epoch and last and first_new > last + 1 and skip < len(item.payloads):
            self._record_gap(Gap(self.sid, item.topic, last + 1, first_new - last - 1,
                                 "reconnect: published while this subscription was away"))
        if same_epoch:
            self._last_seq[item.topic] = max(last, item.first_seq + len(item.payloads) - 1)
        self._batch = item
        self._batch_epoch = epoch
        self._index = skip
        self._batch_current = current

    def _record_gap(self, gap: Gap) -> None:
        self.gap_count += 1
        self.missed += gap.missed
        self.recent_gaps.append(gap)
        earlier = self._pending_gaps.get(gap.topic)
        if earlier is not None:  # two losses with no message between: one gap to the reader
            gap = earlier._replace(missed=earlier.missed + gap.missed)
        self._pending_gaps[gap.topic] = gap
        self._log_gaps()

    def _log_gaps(self) -> None:
        """Log the first loss at once, then at most one summary line a second."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._gap_log_next:
            if self._gap_log_timer is None:  # make sure the last losses are logged too
                self._gap_log_timer = loop.call_at(self._gap_log_next, self._log_gaps)
            return
        self._gap_log_timer = None
        unlogged_gaps = self.gap_count - self._gaps_logged[0]
        if not unlogged_gaps:
            return
        unlogged_missed = self.missed - self._gaps_logged[1]
        self._gaps_logged = (self.gap_count, self.missed)
        self._gap_log_next = loop.time() + GAP_LOG_INTERVAL_S
        gap = self.recent_gaps[-1]
        if unlogged_gaps == 1:
            log.warning("subscription %r lost %d messages of %r from seq %d: %s",
                        self.pattern, gap.missed, gap.topic, gap.first_seq, gap.reason)
        else:
            log.warning("subscription %r lost %d messages in %d gaps (latest: %r from seq %d: "
                        "%s); %d lost in all", self.pattern, unlogged_missed, unlogged_gaps,
                        gap.topic, gap.first_seq, gap.reason, self.missed)

    @property
    def unacknowledged(self) -> int:
        """Manual ack: messages handed out on this connection and not yet ack()ed.

        The one being handled now is not counted until the next is asked for.
        """
        return self._handed

    def ack(self, count: int, generation: int) -> None:
        """Manual ack: the oldest `count` handed-out messages are safe (stored, done).

        `generation` is `client.generation` when they were counted: after a
        reconnect the broker re-delivers from its own mark, so an old count
        must not be applied to the new connection (it is dropped).
        """
        if generation != self.client.generation:
            return
        count = min(count, self._handed)
        self._handed -= count
        self._done += count
        self._flush_acks()

    def _finish(self, count: int) -> None:
        self._done += count
        if self._done >= self._ack_every:
            self._flush_acks()

    def _ack_soon(self) -> None:
        """Acknowledge within ACK_DELAY_S unless a full batch does it first.

        An idle consumer at a low message rate would otherwise send one ACK
        frame per message; credit is far from used up, so a short delay costs
        nothing and keeps durable positions fresh.
        """
        if self._done and self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY_S, self._flush_acks)

    def _flush_acks(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self._done:
            self.client._send_ack(self.sid, self._done)
            self._done = 0

    # --- fed by the client's reader ----------------------------------------------

    def _push(self, item: p.Deliver | Gap) -> None:
        self._queue.append((item, self.client.generation, self.client.epoch))
        self._ready.set()

    def _reconnected(self, broker_restarted: bool) -> None:
        """A new connection starts with no credit used: old deliveries are no longer ackable."""
        if broker_restarted:
            self._last_seq.clear()  # seqs start again from 1 in the new epoch
        self._done = 0
        self._handed = 0
        self._outstanding = False
        self._batch_current = False

    def _close(self, reason: BaseException) -> None:
        if self._closed is None:
            self._closed = reason
            self._ready.set()

    def subscribe_frame(self, start: Start) -> p.Subscribe:
        return p.Subscribe(self.sid, self.pattern, start, self.durable, self.window)

    async def unsubscribe(self) -> None:
        """Stop this subscription; a durable one keeps its position in the broker."""
        self._flush_acks()
        self.client._forget(self)
        self.client._send_control(p.Unsubscribe(self.sid))
        self._close(StopAsyncIteration())


class _Run:
    """Consecutive publishes to one topic: one PUB frame in the making."""

    __slots__ = ("payloads", "size", "topic", "waiters")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.payloads: list[bytes] = []
        self.size = 0
        self.waiters: list[tuple[int, asyncio.Future[int]]] = []


class Client:
    """A connection to the broker that survives the broker going away and coming back."""

    def __init__(self, broker: str | None = None, *, name: str = "slipstream-client",
                 token: str | None = None, reconnect: bool = True,
                 connect_timeout_s: float = 5.0, reconnect_max_delay_s: float = 2.0,
                 max_buffered_bytes: int = 8 * 1024 * 1024) -> None:
        self.address = broker or os.environ.get(BROKER_ENV) or DEFAULT_BROKER
        self.host, self.port = parse_address(self.address)
        self.name = name
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.reconnect = reconnect
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_max_delay_s = reconnect_max_delay_s
        self.max_buffered_bytes = max_buffered_bytes
        self.epoch = 0
        self.generation = 0  # counts connections made; deliveries are tagged with it
        self.max_payload_bytes = p.DEFAULT_MAX_FRAME_BYTES - p.FRAME_ROOM_BYTES
        self.published = 0
        self.reconnects = 0
        self.errors: list[BrokerError] = []  # non-fatal errors the broker reported
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._decoder = p.FrameDecoder()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._broker_shutting_down = False
        self._failure: SlipstreamError | None = None
        self._subs: dict[int, Subscription] = {}
        self._ids = itertools.count(1)
        self._waiting: dict[tuple[str, int], asyncio.Future[Any]] = {}
        self._confirms: dict[int, list[tuple[int, asyncio.Future[int]]]] = {}
        self._outbox: list[_Run] = []
        self._outbox_bytes = 0
        self._published_since_yield = 0
        self._flush_scheduled = False
        self._topics_seen: set[str] = set()

    @property
    def connected(self) -> bool:
        """Whether a connection to the broker is up right now."""
        return self._connected.is_set() and self._failure is None and not self._closing

    # --- connecting --------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self, wait: bool = False) -> None:
        """Connect: once, failing fast, or with `wait` until the broker is up (backing off).

        After that, losses are handled by reconnecting.
        """
        if wait:
            await self._open_with_backoff("connect", wait_first=False)
        else:
            await self._open()
        self._task = asyncio.create_task(self._run(), name=f"slipstream-client-{self.name}")

    async def _open(self) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, limit=READ_CHUNK_BYTES)
        except (OSError, TimeoutError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
                str(exc) or type(exc).__name__)
            raise ConnectError(f"cannot reach broker at {self.host}:{self.port}: {reason} "
                               "(is `python -m broker` running?)") from None
        decoder = p.FrameDecoder()
        writer.write(p.encode(p.Hello(p.PROTOCOL_VERSION, self.name, self.token)))
        try:
            welcome = await self._await_welcome(reader, decoder)
        except BaseException:
            writer.close()
            raise
        self.epoch = welcome.epoch
        self.max_payload_bytes = welcome.max_frame_bytes - p.FRAME_ROOM_BYTES
        # Deliveries may carry a full-size payload plus their header.
        decoder.max_frame_bytes = welcome.max_frame_bytes + p.FRAME_ROOM_BYTES
        self._reader, self._writer, self._decoder = reader, writer, decoder
        self.generation += 1
        self._connected.set()

    async def _await_welcome(self, reader: asyncio.StreamReader,
                             decoder: p.FrameDecoder) -> p.Welcome:
        where = f"broker at {self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                while True:
                    data = await reader.read(READ_CHUNK_BYTES)
                    if not data:
                        raise ConnectError(f"{where} closed the connection during the handshake")
                    frames = decoder.feed(data)
                    if decoder.error is not None:
                        raise decoder.error
                    if frames:
                        break
        except TimeoutError:
            raise ConnectError(f"{where} did not answer HELLO within "
                               f"{self.connect_timeout_s:g} s") from None
        except OSError as exc:
            raise ConnectError(f"{where} failed during the handshake: {exc}") from None
        first = frames[0]
        if type(first) is p.Error:
            raise HandshakeRefusedError(f"{where} refused the handshake [{first.code}]: "
                                        f"{first.message}")
        if type(first) is not p.Welcome:
            raise ProtocolError(f"{where} answered HELLO with {type(first).__name__}")
        return first

    async def _run(self) -> None:
        """Read until the connection ends; then reconnect, or fail everything waiting."""
        while True:
            reason = await self._read_until_lost()
            self._connection_lost(reason)
            if self._closing or not self.reconnect:
                self._fail_all(ConnectionLostError(reason))
                return
            try:
                await self._reconnect()
            except HandshakeRefusedError as exc:
                self._fail_all(exc)
                return
            except ConnectionLostError as exc:  # closed while reconnecting
                self._fail_all(exc)
                return

    async def _read_until_lost(self) -> str:
        reader, decoder = self._reader, self._decoder
        assert reader is not None
        try:
            while True:
                data = await reader.read(READ_CHUNK_BYTES)
                if not data:
                    return f"broker at {self.host}:{self.port} closed the connection"
                for frame in decoder.feed(data):
                    self._dispatch(frame)
                if decoder.error is not None:
                    log.error("broker sent a bad frame: %s", decoder.error)
                    return f"protocol error: {decoder.error}"
        except OSError as exc:
            return f"connection to {self.host}:{self.port} failed: {exc}"

    def _connection_lost(self, reason: str) -> None:
        self._connected.clear()
        if self._writer is not None:
            self._writer.close()
        lost = ConnectionLostError(f"{reason}; the outcome of this request is unknown")
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(lost)
        self._waiting.clear()
        for waiters in self._confirms.values():
            for _, future in waiters:
                if not future.done():
                    future.set_exception(lost)
        self._confirms.clear()
        if self._broker_shutting_down:
            log.info("%s: the broker is shutting down", reason)
        elif not self._closing:
            log.warning("%s", reason)
        self._broker_shutting_down = False

    async def _open_with_backoff(self, what: str, *, wait_first: bool) -> int:
        """Open a connection, retrying with exponential backoff and jitter; the attempt no."""
        delay = 0.05
        for attempt in itertools.count(1):
            if wait_first or attempt > 1:
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter spreads a herd
                delay = min(delay * 2, self.reconnect_max_delay_s)
            if self._closing:
                raise ConnectionLostError(f"client closed during {what}")
            try:
                await self._open()
                return attempt
            except (ConnectError, ProtocolError) as exc:
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("%s attempt %d failed: %s", what, attempt, exc)
        raise AssertionError("unreachable: itertools.count never ends")

    async def _reconnect(self) -> None:
        previous_epoch = self.epoch
        attempt = await self._open_with_backoff("reconnect", wait_first=True)
        self.reconnects += 1
        log.info("reconnected to %s:%d (attempt %d)", self.host, self.port, attempt)
        restarted = self.epoch != previous_epoch
        if restarted:
            log.warning("the broker restarted (new epoch): resubscribing from its earliest")
        for sub in self._subs.values():
            sub._reconnected(restarted)
            # Same broker: a durable resumes where it acknowledged, a plain one takes
            # what is new. A restarted broker holds nothing we have seen: take it all.
            self._send_control(sub.subscribe_frame("earliest" if restarted else "new"))
        self._flush()

    # --- reading ---------------------------------------------------------------

    def _dispatch(self, frame: p.Frame | p.UnknownFrame) -> None:
        if isinstance(frame, p.Deliver | p.Gap):
            sub = self._subs.get(frame.sid)
            if sub is not None:
                sub._push(frame)
            return
        match frame:
            case p.PublishAck(confirm_id, first_seq, _):
                for index, future in self._confirms.pop(confirm_id, []):
                    if not future.done():
                        future.set_result(first_seq + index)
            case p.Subscribed(sid):
                self._resolve(("sub", sid), sid)
            case p.Pong(nonce):
                self._resolve(("ping", nonce), nonce)
            case p.StatsReply(request_id, stats):
                self._resolve(("stats", request_id), stats)
            case p.Ping(nonce):
                self._send_control(p.Pong(nonce))
            case p.Error():
                self._broker_error(frame)
            case _:
                log.warning("ignoring unexpected %s frame from the broker", type(frame).__name__)

    def _resolve(self, key: tuple[str, int], value: Any) -> None:
        future = self._waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(value)

    def _broker_error(self, frame: p.Error) -> None:
        error = BrokerError(frame.code, frame.message)
        if frame.fatal:
            if frame.code == "shutdown":
                self._broker_shutting_down = True  # expected: not worth a warning
            else:
                log.error("%s", error)
            return  # the broker closes the connection next; _run handles that
        # sids, confirm ids and request ids come from one counter, so `ref` names one thing.
        failed: list[asyncio.Future[Any]] = []
        if frame.ref is not None:
            failed = [future for _, future in self._confirms.pop(frame.ref, [])]
            failed += [self._waiting.pop(key) for key in list(self._waiting) if key[1] == frame.ref]
        for future in failed:
            if not future.done():
                future.set_exception(error)
        if not failed:
            self.errors.append(error)
            log.warning("%s", error)

    # --- publishing -------------------------------------------------------------

    async def publish(self, topic: str, data: Any, *, confirm: bool = False) -> int | None:
        """Publish `data` (anything msgpack can encode) to `topic`.

        Returns at once (the message is queued and flushed within this loop
        iteration), waiting only when the socket is backed up. With
        `confirm=True` it waits for the broker and returns the message's seq.
        """
        return await self.publish_bytes(topic, msgpack.packb(data), confirm=confirm)

    async def publish_bytes(self, topic: str, payload: bytes, *,
                            confirm: bool = False) -> int | None:
        """Publish an already-encoded payload; the broker forwards these exact bytes."""
        if topic not in self._topics_seen:
            validate_topic(topic)
            self._topics_seen.add(topic)
        if len(payload) > self.max_payload_bytes:
            raise BrokerError("payload_too_large",
                              f"payload of {len(payload):,} bytes to {topic!r} exceeds max "
                              f"payload {self.max_payload_bytes:,}")
        if self._failure is not None:
            raise self._failure
        future = self._enqueue(topic, payload, confirm)
        self.published += 1
        self._published_since_yield += len(payload)
        if self._published_since_yield >= YIELD_EVERY_BYTES:
            self._published_since_yield = 0
            self._flush()
            # A producer publishing in a tight loop may never suspend (drain() does not
            # when the socket keeps up): without this it would starve the event loop
            # (signals, acks, the broker's errors) for as long as it publishes.
            await asyncio.sleep(0)
        await self._backpressure()
        if future is None:
            return None
        return await future

    def _enqueue(self, topic: str, payload: bytes, confirm: bool) -> asyncio.Future[int] | None:
        outbox = self._outbox
        run = outbox[-1] if outbox else None
        if run is None or run.topic != topic or run.size + len(payload) > self.max_payload_bytes:
            run = _Run(topic)
            outbox.append(run)
        run.payloads.append(payload)
        run.size += len(payload) + 5  # + msgpack bin header
        self._outbox_bytes += len(payload)
        future: asyncio.Future[int] | None = None
        if confirm:
            future = asyncio.get_running_loop().create_future()
            run.waiters.append((len(run.payloads) - 1, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    async def _backpressure(self) -> None:
        writer = self._writer
        if self._connected.is_set() and writer is not None:
            if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER_BYTES:
                with contextlib.suppress(OSError):  # the reader notices the loss, reconnects
                    await writer.drain()
        elif self._outbox_bytes > self.max_buffered_bytes:
            await self._wait_connected()  # disconnected with a full buffer: wait it out

    async def _wait_connected(self) -> None:
        while not self._connected.is_set():
            if self._failure is not None:
                raise self._failure
            if self._closing:
                raise ConnectionLostError("client is closed")
            waiter = asyncio.ensure_future(self._connected.wait())
            done, _ = await asyncio.wait([waiter], timeout=0.5)
            if not done:
                waiter.cancel()

    def _flush(self) -> None:
        """Write every queued run as a PUB frame, all in one writelines."""
        self._flush_scheduled = False
        writer = self._writer
        if not self._outbox or not self._connected.is_set() or writer is None:
            return
        frames = []
        for run in self._outbox:
            confirm_id = None
            if run.waiters:
                confirm_id = next(self._ids)
                self._confirms[confirm_id] = run.waiters
            frames.append(p.encode(p.Publish(run.topic, run.payloads, confirm_id)))
        self._outbox = []
        self._outbox_bytes = 0
        writer.writelines(frames)

    async def flush(self) -> None:
        """Write everything queued and wait until the socket has taken it."""
        self._flush()
        if self._outbox:
            await self._wait_connected()
            self._flush()
        if self._writer is not None and self._connected.is_set():
            with contextlib.suppress(OSError):
                await self._writer.drain()

    # --- subscribing and requests --------------------------------------------------

    async def subscribe(self, pattern: str, *, start: Start = "new", durable: str | None = None,
                        window: int = 8192, auto_ack: bool = True) -> Subscription:
        """Subscribe and wait until the broker confirms; iterate the result for messages.

        With auto_ack (the default) a message is acknowledged once the next one
        is asked for; without, call `Subscription.ack` when it is safe to.
        """
        validate_pattern(pattern)
        sid = next(self._ids)
        sub = Subscription(self, sid, pattern, start, durable, window, auto_ack)
        self._subs[sid] = sub
        try:
            await self._request(("sub", sid), sub.subscribe_frame(start))
        except BaseException:
            self._subs.pop(sid, None)
            raise
        return sub

    async def stats(self) -> dict[str, Any]:
        """The broker's statistics (see docs/protocol.md, STATS)."""
        request_id = next(self._ids)
        stats: dict[str, Any] = await self._request(("stats", request_id),
                                                    p.StatsRequest(request_id))
        return stats

    async def ping(self) -> float:
        """Round-trip time to the broker, in seconds."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        nonce = next(self._ids)
        await self._request(("ping", nonce), p.Ping(nonce))
        return loop.time() - started

    async def _request(self, key: tuple[str, int], frame: p.Frame) -> Any:
        await self._wait_connected()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        self._flush()  # keep order: publishes queued before this request go first
        self._send_control(frame)
        async with asyncio.timeout(self.connect_timeout_s + 5):
            return await future

    def _send_control(self, frame: p.Frame) -> None:
        if self._writer is not None and self._connected.is_set():
            self._writer.write(p.encode(frame))

    def _send_ack(self, sid: int, count: int) -> None:
        self._send_control(p.Ack(sid, count))

    def _forget(self, sub: Subscription) -> None:
        self._subs.pop(sub.sid, None)

    # --- closing ---------------------------------------------------------------

    def _fail_all(self, error: SlipstreamError) -> None:
        self._failure = error
        for sub in self._subs.values():
            sub._close(StopAsyncIteration() if self._closing else error)
        self._connected.set()  # release anyone waiting to reconnect; they see _failure

    async def close(self) -> None:
        """Send what is queued, acknowledge what was finished, and disconnect."""
        if self._closing:
            return
        connected = self._connected.is_set() and self._failure is None
        if connected:
            try:
                for sub in self._subs.values():
                    if sub._outstanding and sub.auto_ack:
                        sub._outstanding = False
                        sub._finish(1)
                    sub._flush_acks()
                async with asyncio.timeout(2):
                    await self.flush()
            except (TimeoutError, SlipstreamError):
                log.warning("could not flush everything before closing")
        self._closing = True
        if self._writer is not None:
            self._writer.close()
        self._connected.set()  # wake anyone waiting for a reconnect: they see _closing
        if self._task is not None:
            if not connected:
                self._task.cancel()  # it is only sleeping between reconnect attempts
            try:
                async with asyncio.timeout(1):
                    await self._task
            except TimeoutError:
                self._task.cancel()
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # we are being cancelled ourselves, not just the reader task
        for sub in self._subs.values():
            sub._close(StopAsyncIteration())
