"""The client for slipstream's own (embedded) broker: `Client("HOST:PORT")` makes one.

The asyncio layer: it opens sockets, moves bytes and wakes whoever waits. The
conversation's rules are in the sans-I/O core, broker/wire/client_connection.py
(one per TCP connection), and the grouping of publishes in broker/embedded/outbox.py.
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
import ssl
from collections.abc import Sequence
from typing import Any

from broker.client import Client, parse_address, uses_tls
from broker.embedded.outbox import Outbox
from broker.embedded.subscription import EmbeddedSubscription
from broker.errors import (
    BrokerError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    HandshakeRefusedError,
    ProtocolError,
    SlipstreamError,
)
from broker.server.routing import validate_pattern, validate_topic
from broker.subscription import Start
from broker.tasks import stop_task
from broker.tls import TlsFiles, client_context
from broker.wire import protocol as p
from broker.wire.client_connection import ClientConnection, Event, Opened, Refused
from broker.wire.states import State

log = logging.getLogger("slipstream.client")

READ_CHUNK_BYTES = 256 * 1024
WRITE_HIGH_WATER_BYTES = 1024 * 1024
YIELD_EVERY_BYTES = 256 * 1024  # a publishing task lets others run at least this often
# A publishing burst is written every this many bytes: with many interleaved topics, the
# longer the outbox, the longer each topic's run (4 MiB: 1,000 topics keep ~88% of one
# topic's rate here; 256 KiB kept 19%). A producer that pauses is written at once.
BURST_FLUSH_BYTES = 4 * 1024 * 1024


class EmbeddedClient(Client):
    """A connection to the broker that survives the broker going away and coming back."""

    def __init__(self, broker: str | None = None, *, name: str = "slipstream-client",
                 token: str | None = None, reconnect: bool = True,
                 connect_timeout_s: float = 5.0, reconnect_max_delay_s: float = 2.0,
                 max_buffered_bytes: int = 8 * 1024 * 1024, tls: TlsFiles | None = None,
                 user: str | None = None, password: str | None = None) -> None:
        super().__init__(broker, name=name, token=token, reconnect=reconnect,
                         connect_timeout_s=connect_timeout_s,
                         reconnect_max_delay_s=reconnect_max_delay_s, tls=tls, user=user,
                         password=password)
        self.host, self.port = parse_address(self.address)
        self._ssl: ssl.SSLContext | None = None
        if uses_tls(self.address):
            self._ssl = client_context(self.tls)  # ConfigError now, not at each reconnect
        elif self.tls:
            raise ConfigError(f"--tls-* given for {self.address!r}: a broker with TLS is "
                              "reached at tls://HOST:PORT")
        self.max_buffered_bytes = max_buffered_bytes
        self.max_payload_bytes = p.DEFAULT_MAX_FRAME_BYTES - p.FRAME_ROOM_BYTES
        self._conn: ClientConnection | None = None  # the current connection's rules
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        # Set when the connection opens, and when the client gives up or is closed:
        # whoever waits for a connection then looks at which it was.
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False  # the application called close()
        self._failure: SlipstreamError | None = None  # the client has given up, for this
        self._subs: dict[int, EmbeddedSubscription] = {}
        self._ids = itertools.count(1)  # sids, confirm ids and request ids: one counter
        self._waiting: dict[tuple[str, int], asyncio.Future[Any]] = {}
        self._confirms: dict[int, list[tuple[int, asyncio.Future[int]]]] = {}
        self._outbox: Outbox[asyncio.Future[int]] = Outbox()
        self._published_since_yield = 0
        self._flush_scheduled = False
        self._in_burst = False  # the publisher yields mid-burst (publish_bytes)
        self._topics_seen: set[str] = set()

    @property
    def _open_conn(self) -> ClientConnection | None:
        """The current connection, if it is open (handshake done, not closing)."""
        conn = self._conn
        return conn if conn is not None and conn.state is State.OPEN else None

    @property
    def connected(self) -> bool:
        """Whether a connection to the broker is up right now."""
        return self._open_conn is not None and self._failure is None and not self._closing

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
        where = f"broker at {self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, limit=READ_CHUNK_BYTES, ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None)
        except ssl.SSLCertVerificationError as exc:  # will not pass on a retry either
            raise HandshakeRefusedError(
                f"{where}: its TLS certificate is not trusted ({exc.verify_message}); give "
                "--tls-ca with the CA that signed it") from None
        except ssl.SSLError as exc:
            raise ConnectError(f"TLS with {where} failed: {exc.reason or exc} (is it running "
                               "with --tls-cert, and does it want a client certificate?)"
                               ) from None
        except (OSError, TimeoutError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
                str(exc) or type(exc).__name__)
            raise ConnectError(f"cannot reach {where}: {reason} "
                               "(is `python -m broker` running?)") from None
        # With a user, HELLO's token field carries its password (docs/protocol.md).
        conn = ClientConnection(self.name, self.password if self.user else self.token,
                                user=self.user)
        writer.writelines(conn.data_to_send())  # HELLO
        try:
            after_welcome = await self._await_welcome(reader, conn, where)
        except BaseException:
            writer.close()
            raise
        self.epoch = conn.epoch
        self.max_payload_bytes = conn.max_payload_bytes
        self._reader, self._writer, self._conn = reader, writer, conn
        self.generation += 1
        self._changed.set()
        for event in after_welcome:
            self._dispatch(event)

    async def _await_welcome(self, reader: asyncio.StreamReader, conn: ClientConnection,
                             where: str) -> list[Event]:
        """Read until the handshake is settled; the events that came behind WELCOME."""
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                while conn.state is State.HANDSHAKE:
                    data = await reader.read(READ_CHUNK_BYTES)
                    if not data:
                        raise self._cut_in_handshake(where, "closed the connection")
                    events = conn.receive_data(data)
        except TimeoutError:
            # A broker that serves TLS reads a plain HELLO as the start of a TLS record
            # and waits for the rest: say so, as for a connection cut in the handshake.
            hint = " (if it serves TLS: tls://HOST:PORT)" if self._ssl is None else ""
            raise ConnectError(f"{where} did not answer HELLO within "
                               f"{self.connect_timeout_s:g} s{hint}") from None
        except ssl.SSLError as exc:  # TLS 1.3 reports a refused client certificate here
            raise HandshakeRefusedError(
                f"{where} ended TLS: {exc.reason or exc} (a broker started with --tls-ca "
                "wants a client certificate: --tls-cert and --tls-key)") from None
        except ConnectionResetError:
            raise self._cut_in_handshake(where, "reset the connection") from None
        except OSError as exc:
            raise ConnectError(f"{where} failed during the handshake: {exc}") from None
        first = events[0]
        if type(first) is Refused:
            if first.retry:  # full for now: like an unreachable broker, worth retrying
                raise ConnectError(f"{where} is full [{first.code}]: {first.message}")
            if conn.error is not None:
                raise conn.error
            raise HandshakeRefusedError(f"{where} refused the handshake [{first.code}]: "
                                        f"{first.message}")
        assert type(first) is Opened
        return events[1:]

    def _cut_in_handshake(self, where: str, how: str) -> SlipstreamError:
        """The broker ended the connection before WELCOME: say what is likely wrong."""
        if self._ssl is None:
            return ConnectError(f"{where} {how} during the handshake (if it serves TLS: "
                                "tls://HOST:PORT)")
        if self.tls.cert is None:  # a broker started with --tls-ca refuses such clients
            return HandshakeRefusedError(
                f"{where} {how} during the TLS handshake: it probably wants a client "
                "certificate (--tls-cert and --tls-key)")
        return ConnectError(f"{where} {how} during the TLS handshake")

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
        reader, conn = self._reader, self._conn
        assert reader is not None and conn is not None
        try:
            while True:
                data = await reader.read(READ_CHUNK_BYTES)
                if not data:
                    why = f" [{conn.fatal.code}]: {conn.fatal.message}" if conn.fatal else ""
                    return f"broker at {self.host}:{self.port} closed the connection{why}"
                for event in conn.receive_data(data):
                    self._dispatch(event)
                self._write()  # PONGs
                if conn.error is not None:
                    log.error("broker sent a bad frame: %s", conn.error)
                    return f"protocol error: {conn.error}"
        except OSError as exc:
            return f"connection to {self.host}:{self.port} failed: {exc}"

    def _connection_lost(self, reason: str) -> None:
        conn = self._conn
        assert conn is not None
        if conn.state is not State.CLOSED:
            conn.receive_eof()
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
        if conn.fatal is not None and conn.fatal.code == "shutdown":
            log.info("%s: the broker is shutting down", reason)
        elif not self._closing:
            log.warning("%s", reason)

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

    def _write(self) -> None:
        """Hand the socket whatever the connection has queued."""
        conn, writer = self._conn, self._writer
        if conn is not None and writer is not None:
            out = conn.data_to_send()
            if out and not writer.is_closing():
                writer.writelines(out)

    # --- reading ---------------------------------------------------------------

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, p.Deliver | p.Gap):
            sub = self._subs.get(event.sid)
            if sub is not None:
                sub.deliver(event)
            return
        match event:
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
            case p.Ping():
                pass  # the connection has queued the PONG
            case p.Error():
                self._broker_error(event)
            case _:
                log.warning("ignoring unexpected %s frame from the broker", type(event).__name__)

    def _resolve(self, key: tuple[str, int], value: Any) -> None:
        future = self._waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(value)

    def _broker_error(self, frame: p.Error) -> None:
        error = BrokerError(frame.code, frame.message)
        if frame.fatal:
            if frame.code != "shutdown":  # a shutdown is expected: not worth an error
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
        self._check_publish(topic, len(payload))
        future: asyncio.Future[int] | None = None
        if confirm:
            future = asyncio.get_running_loop().create_future()
        self._outbox.add(topic, payload, self.max_payload_bytes, future)
        if self._queued(1, len(payload)):
            await self._pause()
        if future is None:
            return None
        return await future

    async def publish_batch(self, topic: str, payloads: Sequence[bytes]) -> None:
        """Publish payloads to one topic in order: the checks, the bookkeeping and the
        pauses of `publish_bytes` once per batch instead of once per message."""
        self._check_publish(topic, max(map(len, payloads), default=0))
        before = self._outbox.payload_bytes
        self._outbox.add_many(topic, payloads, self.max_payload_bytes)
        if self._queued(len(payloads), self._outbox.payload_bytes - before):
            await self._pause()

    def _check_publish(self, topic: str, biggest_bytes: int) -> None:
        if topic not in self._topics_seen:
            validate_topic(topic)
            self._topics_seen.add(topic)
        if biggest_bytes > self.max_payload_bytes:
            raise BrokerError("payload_too_large",
                              f"payload of {biggest_bytes:,} bytes to {topic!r} exceeds max "
                              f"payload {self.max_payload_bytes:,}")
        if self._failure is not None:
            raise self._failure

    def _queued(self, count: int, payload_bytes: int) -> bool:
        """Count what was just put in the outbox; whether it is time to _pause(). A sync
        test per publish: the coroutine runs only every YIELD_EVERY_BYTES (or when the
        outbox is over its bound)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_soon)
        self.published += count
        self._published_since_yield += payload_bytes
        return (self._published_since_yield >= YIELD_EVERY_BYTES
                or self._outbox.payload_bytes > self.max_buffered_bytes)

    async def _pause(self) -> None:
        """Every YIELD_EVERY_BYTES published, and with the outbox over its bound: write a
        burst's outbox, let the loop run, and wait for the socket (or the reconnect)."""
        if self._published_since_yield >= YIELD_EVERY_BYTES:
            self._published_since_yield = 0
            if self._outbox.payload_bytes >= BURST_FLUSH_BYTES:
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

    def _flush_soon(self) -> None:
        """The loop came round: write the outbox, unless the publisher is only yielding in
        the middle of a burst (then the burst writes it, or the next round does)."""
        if self._in_burst and self._outbox.payload_bytes < BURST_FLUSH_BYTES:
            asyncio.get_running_loop().call_soon(self._flush_soon)
            return
        self._flush()

    async def _backpressure(self) -> None:
        writer = self._writer
        if self._open_conn is not None and writer is not None:
            if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER_BYTES:
                with contextlib.suppress(OSError):  # the reader notices the loss, reconnects
                    await writer.drain()
        elif self._outbox.payload_bytes > self.max_buffered_bytes:
            await self._wait_connected()  # disconnected with a full buffer: wait it out

    async def _wait_connected(self) -> ClientConnection:
        """The open connection, once there is one; raise the stored failure (a
        SlipstreamError) if the client has given up or is closed."""
        while True:
            if self._failure is not None:
                raise self._failure
            if self._closing:
                raise ConnectionLostError("client is closed")
            conn = self._open_conn
            if conn is not None:
                return conn
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):  # also re-checks _closing now and then
                    await self._changed.wait()

    def _flush(self) -> None:
        """Write every queued run, all in one writelines (broker/embedded/outbox.py says how the
        runs become frames)."""
        self._flush_scheduled = False
        conn = self._open_conn
        if not self._outbox or conn is None:
            return
        frames, confirmations = self._outbox.frames(conn.runs_per_frame, conn.max_frame_bytes,
                                                    self._ids.__next__)
        self._confirms.update(confirmations)
        conn.send_encoded(frames)
        self._write()

    async def flush(self) -> None:
        """Until the broker has stored everything published so far: write what is queued,
        then a PING, whose PONG proves the PUBs before it are in their topics (on disk,
        with --data-dir). ConnectionLostError if the connection goes first."""
        self._flush()
        if self._outbox:
            await self._wait_connected()
            self._flush()
        if self._writer is not None and self._open_conn is not None:
            with contextlib.suppress(OSError):
                await self._writer.drain()
            await self.ping()

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
        """Send on the current connection; dropped while there is none (a subscription
        is subscribed again, with its position, after the reconnect)."""
        conn = self._open_conn
        if conn is not None:
            conn.send(frame)
            self._write()

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
        self._changed.set()  # release anyone waiting to reconnect; they see _failure

    async def close(self) -> None:
        """Send what is queued, acknowledge what was finished, and disconnect."""
        if self._closing:
            return
        connected = self._open_conn is not None and self._failure is None
        if connected:
            try:
                for sub in self._subs.values():
                    sub.finish_on_close()
                async with asyncio.timeout(2):
                    await self.flush()
            except (TimeoutError, SlipstreamError):
                log.warning("could not flush everything before closing")
        self._closing = True
        if self._conn is not None and self._conn.state is not State.CLOSED:
            self._conn.close()
        if self._writer is not None:
            self._writer.close()
        self._changed.set()  # wake anyone waiting for a reconnect: they see _closing
        if self._task is not None:
            if not connected:
                self._task.cancel()  # it is only sleeping between reconnect attempts
            try:
                async with asyncio.timeout(1):
                    await self._task
            except TimeoutError:
                await stop_task(self._task)  # cancelled, and waited for: never left running
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # we are being cancelled ourselves, not just the reader task
        for sub in self._subs.values():
            sub.end(StopAsyncIteration())
