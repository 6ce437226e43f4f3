"""The client for slipstream's own (embedded) broker: `Client("HOST:PORT")` makes one.

Publishes are coalesced: what is published before the loop comes round (or,
in a burst, up to 4 MiB) is grouped per topic and goes out in one write, the
runs of several topics sharing PUBM frames (protocol version 2).
A subscription (broker/subscription.py) is an async iterator of messages.
If the connection drops, the client reconnects with backoff and resubscribes;
each subscription then skips what it had already handed out and reports
what can no longer be had as a `Gap`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from typing import Any

from broker import protocol as p
from broker.client import Client, parse_address
from broker.embedded_subscription import EmbeddedSubscription
from broker.errors import (
    BrokerError,
    ConnectError,
    ConnectionLostError,
    HandshakeRefusedError,
    ProtocolError,
    SlipstreamError,
)
from broker.routing import validate_pattern, validate_topic
from broker.subscription import Start

log = logging.getLogger("slipstream.client")

READ_CHUNK_BYTES = 256 * 1024
WRITE_HIGH_WATER_BYTES = 1024 * 1024
YIELD_EVERY_BYTES = 256 * 1024  # a publishing task lets others run at least this often
# A publishing burst is written every this many bytes: with many interleaved topics, the
# longer the outbox, the longer each topic's run (4 MiB: 1,000 topics keep ~88% of one
# topic's rate here; 256 KiB kept 19%). A producer that pauses is written at once.
BURST_FLUSH_BYTES = 4 * 1024 * 1024


class _Run:
    """Consecutive publishes to one topic: one PUB frame in the making."""

    __slots__ = ("payloads", "size", "topic", "waiters")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.payloads: list[bytes] = []
        self.size = 0
        self.waiters: list[tuple[int, asyncio.Future[int]]] = []


class EmbeddedClient(Client):
    """A connection to the broker that survives the broker going away and coming back."""

    def __init__(self, broker: str | None = None, *, name: str = "slipstream-client",
                 token: str | None = None, reconnect: bool = True,
                 connect_timeout_s: float = 5.0, reconnect_max_delay_s: float = 2.0,
                 max_buffered_bytes: int = 8 * 1024 * 1024) -> None:
        super().__init__(broker, name=name, token=token, reconnect=reconnect,
                         connect_timeout_s=connect_timeout_s,
                         reconnect_max_delay_s=reconnect_max_delay_s)
        self.host, self.port = parse_address(self.address)
        self.max_buffered_bytes = max_buffered_bytes
        self.max_payload_bytes = p.DEFAULT_MAX_FRAME_BYTES - p.FRAME_ROOM_BYTES
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._decoder = p.FrameDecoder()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._broker_shutting_down = False
        self._failure: SlipstreamError | None = None
        self._subs: dict[int, EmbeddedSubscription] = {}
        self._ids = itertools.count(1)
        self._waiting: dict[tuple[str, int], asyncio.Future[Any]] = {}
        self._confirms: dict[int, list[tuple[int, asyncio.Future[int]]]] = {}
        self._outbox: list[_Run] = []
        self._open_runs: dict[str, _Run] = {}  # per topic, the run in the outbox still open
        self._outbox_bytes = 0
        self._runs_per_frame = False  # the broker takes PUBM (version 2)
        self._max_frame_bytes = p.DEFAULT_MAX_FRAME_BYTES
        self._published_since_yield = 0
        self._flush_scheduled = False
        self._in_burst = False  # the publisher yields mid-burst (publish_bytes)
        self._topics_seen: set[str] = set()

    @property
    def connected(self) -> bool:
        """Whether a connection to the broker is up right now."""
        return self._connected.is_set() and self._failure is None and not self._closing

    # --- connecting --------------------------------------------------------------

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
        self._max_frame_bytes = welcome.max_frame_bytes
        self._runs_per_frame = welcome.version >= 2
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
        if type(first) is p.Error and first.code in ("busy", "too_many_connections"):
            # The broker is full for now: like an unreachable broker, worth retrying.
            raise ConnectError(f"{where} is full [{first.code}]: {first.message}")
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
            sub.reconnected(self.generation, self.epoch)
            # Same broker: a durable resumes where it acknowledged, a plain one takes
            # what is new. A restarted broker holds nothing we have seen: take it all.
            self._send_control(sub.subscribe_frame("earliest" if restarted else "new"))
        self._flush()

    # --- reading ---------------------------------------------------------------

    def _dispatch(self, frame: p.Frame | p.UnknownFrame) -> None:
        if isinstance(frame, p.Deliver | p.Gap):
            sub = self._subs.get(frame.sid)
            if sub is not None:
                sub.deliver(frame)
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
            if self._outbox_bytes >= BURST_FLUSH_BYTES:
                self._flush()
            # A producer publishing in a tight loop may never suspend (drain() does not
            # when the socket keeps up): without this it would starve the event loop
            # (signals, acks, the broker's errors) for as long as it publishes. The
            # scheduled flush leaves the outbox alone during this yield (see _flush_soon).
            self._in_burst = True
            try:
                await asyncio.sleep(0)
            finally:
                self._in_burst = False
        await self._backpressure()
        if future is None:
            return None
        return await future

    def _enqueue(self, topic: str, payload: bytes, confirm: bool) -> asyncio.Future[int] | None:
        # One run per topic per flush, however the topics interleave: order is kept
        # within a topic, which is all the protocol promises.
        run = self._open_runs.get(topic)
        if run is None or run.size + len(payload) > self.max_payload_bytes:
            run = self._open_runs[topic] = _Run(topic)
            self._outbox.append(run)
        run.payloads.append(payload)
        run.size += len(payload) + 5  # + msgpack bin header
        self._outbox_bytes += len(payload)
        future: asyncio.Future[int] | None = None
        if confirm:
            future = asyncio.get_running_loop().create_future()
            run.waiters.append((len(run.payloads) - 1, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_soon)
        return future

    def _flush_soon(self) -> None:
        """The loop came round: write the outbox, unless the publisher is only yielding in
        the middle of a burst (then the burst writes it, or the next round does)."""
        if self._in_burst and self._outbox_bytes < BURST_FLUSH_BYTES:
            asyncio.get_running_loop().call_soon(self._flush_soon)
            return
        self._flush()

    async def _backpressure(self) -> None:
        writer = self._writer
        if self._connected.is_set() and writer is not None:
            if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER_BYTES:
                with contextlib.suppress(OSError):  # the reader notices the loss, reconnects
                    await writer.drain()
        elif self._outbox_bytes > self.max_buffered_bytes:
            await self._wait_connected()  # disconnected with a full buffer: wait it out

    async def _wait_connected(self) -> None:
        """Return once connected; raise the stored failure (a SlipstreamError) if the
        client has given up or is closed. `_fail_all` sets `_connected` to wake us."""
        while True:
            if self._failure is not None:
                raise self._failure
            if self._closing:
                raise ConnectionLostError("client is closed")
            if self._connected.is_set():
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):  # also re-checks _closing now and then
                    await self._connected.wait()

    def _flush(self) -> None:
        """Write every queued run, all in one writelines: the runs of several topics
        share PUBM frames (version 2); a run with a confirmed publish gets a PUB of its
        own, whose PUBACK names its first seq."""
        self._flush_scheduled = False
        writer = self._writer
        if not self._outbox or not self._connected.is_set() or writer is None:
            return
        frames: list[bytes] = []
        shared: list[tuple[str, list[bytes]]] = []
        shared_size = 0
        room = self._max_frame_bytes - 64  # the PUBM's own header
        for run in self._outbox:
            if run.waiters or not self._runs_per_frame:
                if shared:  # what came before goes first: a topic's runs stay in order
                    frames.append(self._shared_frame(shared))
                    shared, shared_size = [], 0
                confirm_id = None
                if run.waiters:
                    confirm_id = next(self._ids)
                    self._confirms[confirm_id] = run.waiters
                frames.append(p.encode(p.Publish(run.topic, run.payloads, confirm_id)))
                continue
            size = run.size + len(run.topic) + 8
            if shared and shared_size + size > room:
                frames.append(self._shared_frame(shared))
                shared, shared_size = [], 0
            shared.append((run.topic, run.payloads))
            shared_size += size
        if shared:
            frames.append(self._shared_frame(shared))
        self._outbox = []
        self._open_runs.clear()
        self._outbox_bytes = 0
        writer.writelines(frames)

    @staticmethod
    def _shared_frame(runs: list[tuple[str, list[bytes]]]) -> bytes:
        if len(runs) == 1:
            return p.encode(p.Publish(*runs[0]))
        return p.encode_publish_runs(runs)

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
                        window: int = 8192, auto_ack: bool = True) -> EmbeddedSubscription:
        validate_pattern(pattern)
        sid = next(self._ids)
        sub = EmbeddedSubscription(sid, pattern, start, durable, window, auto_ack,
                                   send=self._send_control,
                                   forget=lambda: self._forget(sid),
                                   generation=self.generation, epoch=self.epoch)
        self._subs[sid] = sub
        try:
            await self._request(("sub", sid), sub.subscribe_frame(start))
        except BaseException:
            self._subs.pop(sid, None)
            raise
        return sub

    async def stats(self, **options: Any) -> dict[str, Any]:
        """One page of the broker's statistics (docs/protocol.md, STATS): `topics`
        (a pattern), `after_topic`, `topic_limit`, `after_connection`, `connection_limit`."""
        request_id = next(self._ids)
        stats: dict[str, Any] = await self._request(
            ("stats", request_id), p.StatsRequest(request_id, options or None))
        return stats

    async def stats_all(self, topics: str | None = None,
                        connections: bool = True) -> dict[str, Any]:
        """Every page of the statistics, merged (the server totals from the first page)."""
        query: dict[str, Any] = {} if topics is None else {"topics": topics}
        if not connections:
            query["connection_limit"] = 0
        merged = await self.stats(**query)
        more = merged.pop("more", None) or {}
        while more.get("topics") is not None or more.get("connections") is not None:
            page_query = dict(query)
            if more.get("topics") is None:
                page_query["topic_limit"] = 0
            else:
                page_query["after_topic"] = more["topics"]
            if more.get("connections") is None:
                page_query["connection_limit"] = 0
            else:
                page_query["after_connection"] = more["connections"]
            page = await self.stats(**page_query)
            merged["topics"].update(page["topics"])
            merged["connections"].extend(page["connections"])
            more = page.get("more") or {}
        return merged

    async def ping(self) -> float:
        """Round-trip time to the broker, in seconds."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        nonce = next(self._ids)
        await self._request(("ping", nonce), p.Ping(nonce))
        return loop.time() - started

    async def _request(self, key: tuple[str, int], frame: p.Frame) -> Any:
        """Send a request and wait for its answer; only SlipstreamErrors come out."""
        await self._wait_connected()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        self._flush()  # keep order: publishes queued before this request go first
        self._send_control(frame)
        answer_within_s = self.connect_timeout_s + 5
        try:
            async with asyncio.timeout(answer_within_s):
                return await future
        except TimeoutError:
            self._waiting.pop(key, None)
            raise self._failure or ConnectionLostError(
                f"broker at {self.host}:{self.port} did not answer "
                f"{type(frame).__name__} within {answer_within_s:g} s") from None

    def _send_control(self, frame: p.Frame) -> None:
        writer = self._writer
        if writer is not None and self._connected.is_set() and not writer.is_closing():
            writer.write(p.encode(frame))

    def _forget(self, sid: int) -> None:
        self._subs.pop(sid, None)

    # --- closing ---------------------------------------------------------------

    def _fail_all(self, error: SlipstreamError) -> None:
        self._failure = error
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()
        for sub in self._subs.values():
            sub.end(StopAsyncIteration() if self._closing else error)
        self._connected.set()  # release anyone waiting to reconnect; they see _failure

    async def close(self) -> None:
        """Send what is queued, acknowledge what was finished, and disconnect."""
        if self._closing:
            return
        connected = self._connected.is_set() and self._failure is None
        if connected:
            try:
                for sub in self._subs.values():
                    sub.finish_on_close()
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
            sub.end(StopAsyncIteration())
