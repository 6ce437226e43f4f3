"""The broker's asyncio loop: sockets in, the sans-I/O core in the middle, bytes out.

Everything the broker decides is in sans-I/O objects: the broker's state in
`BrokerCore` (broker/server/core.py), each connection's rules, publishing and acks in
a `Session` (broker/server/session.py), fan-out in its `Delivery`
(broker/server/delivery.py). This module only moves bytes and time between them and
the operating system, as the client's broker/embedded/client.py does:

- `Broker` listens, admits, runs the fsync and housekeeping timers, and shuts
  everything down;
- `Connection` gives each client two tasks. The reader feeds the session what
  the socket brings and waits when `Session.act()` says so (for the socket, a
  rate limit, or room under the block policy). The sender wakes when a publish
  marks a subscription dirty, lets the session queue its runs, and writes them
  in one `writelines`.

Every buffer a peer can fill is bounded (docs/protocol.md, "Limits"): a
connection whose unsent output is above the high-water mark is not read until
it takes its bytes (or is cut off after --write-timeout); before HELLO a
connection may send only a small frame, and asyncio buffers at most
2 x READ_CHUNK_BYTES of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import ssl
import struct
import termios
from collections.abc import Callable
from typing import Any

from broker.server.config import BrokerConfig, OnFull
from broker.server.core import BrokerCore, Handshaking
from broker.server.routing import echo
from broker.server.session import Session, Wait
from broker.server.tls_gate import TlsGate
from broker.server.websocket import WebSocketGate
from broker.storage.storage import TopicStorage as Topic
from broker.storage.storage import sync_topics
from broker.tls import server_context
from broker.users.table import UserTable
from broker.wire import protocol as p
from broker.wire.states import State

__all__ = ["Broker", "BrokerConfig", "Connection", "OnFull"]

log = logging.getLogger("slipstream.broker")

# asyncio's StreamReader buffers up to twice this before it stops reading the
# socket, so it also bounds what a connection holds in the broker before HELLO.
READ_CHUNK_BYTES = 64 * 1024
# Block policy: what a blocked publisher's connection may have read ahead while
# it waits (so that a publisher that hangs up is noticed and released).
MAX_LOOKAHEAD_BYTES = 2 * READ_CHUNK_BYTES
HOUSEKEEPING_MAX_INTERVAL_S = 30.0
# After a fatal ERROR the broker half-closes and reads (and drops) what the client still
# sends for up to this long: closing with unread bytes would be a TCP reset, which can
# destroy the ERROR in the client's buffers before it is read.
LINGER_AFTER_FATAL_S = 1.0
SYNC_INTERVAL_S = 0.1  # --fsync interval: topics and durable positions reach the disk this often


class Broker:
    """A `BrokerCore` served on a TCP port: listening, admission, timers, shutdown."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.core = BrokerCore(config)
        self.core.on_room_freed = self._room_freed
        self.connections: dict[Session, Connection] = {}
        # In their TLS handshake or WebSocket upgrade, oldest first.
        self._gates: dict[TlsGate | WebSocketGate, None] = {}
        self._room_events: dict[Topic, asyncio.Event] = {}
        self._server: asyncio.Server | None = None
        self._ws_server: asyncio.Server | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._syncer: asyncio.Task[None] | None = None
        self._next_connection_id = 1

    @property
    def state(self) -> str:
        return self.core.state

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self.core.load()  # before listening: a damaged DIR stops the start, nothing half-up
        config = self.config
        tls = server_context(config.tls) if config.tls else None
        loop = asyncio.get_running_loop()

        def protocol() -> _Accepted:
            reader = asyncio.StreamReader(limit=READ_CHUNK_BYTES, loop=loop)
            return _Accepted(reader, self._accept, loop=loop)

        def gated() -> TlsGate:  # TLS: counted from accept (broker/server/tls_gate.py)
            assert tls is not None
            app = protocol()
            gate = TlsGate(self, tls, config.handshake_timeout_s, app)
            app.on_connected = gate.handshake_done
            return gate

        self._server = await loop.create_server(gated if tls else protocol, config.host,
                                                config.port)
        if config.ws is not None:
            def websocket() -> asyncio.BaseProtocol:  # TLS (wss://), then the upgrade
                gate = WebSocketGate(self, protocol(), config.ws_allow_origins,
                                     config.max_frame_bytes, config.handshake_timeout_s)
                if tls is None:
                    return gate
                secured = TlsGate(self, tls, config.handshake_timeout_s, gate)
                gate.on_connected = secured.handshake_done
                return secured

            try:
                self._ws_server = await loop.create_server(websocket, *config.ws)
            except OSError:
                self._server.close()
                raise
        self._housekeeping = asyncio.create_task(self._housekeep(), name="broker-housekeeping")
        if self.core.storage.syncs_periodically:
            self._syncer = asyncio.create_task(self._sync_periodically(), name="broker-sync")
        self.core.state = "accepting"
        if config.users is not None:
            log.info("%d users from %s", len(config.users.users), config.users.source)
            self._say_oversubscribed()
        secured = ""
        if config.tls is not None:
            secured = " with TLS" + (", client certificates required" if config.tls.ca else "")
        log.info("listening on %s:%d%s (on-full=%s, retain %d messages / %d bytes per topic, "
                 "%d bytes in all)", config.host, self.port, secured, config.on_full,
                 config.retention.max_messages, config.retention.max_bytes,
                 config.max_memory_bytes)
        if config.ws is not None:
            log.info("WebSocket on %s:%d%s (pages may connect from: %s)", config.ws[0],
                     self.ws_port, secured, ", ".join(config.ws_allow_origins) or
                     "no other site; --ws-allow-origin adds them")

    @property
    def port(self) -> int:
        assert self._server is not None, "broker not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def ws_port(self) -> int | None:
        if self._ws_server is None:
            return None
        port: int = self._ws_server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop accepting, tell every client we are going, and end all connections."""
        self.core.state = "stopping"
        if self._server is not None:
            self._server.close()
        for task in (self._housekeeping, self._syncer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._ws_server is not None:
            self._ws_server.close()
        for gate in list(self._gates):
            gate.drop()
        for connection in list(self.connections.values()):
            connection.close("shutdown", "broker is shutting down")
        tasks = [c.task for c in self.connections.values() if c.task is not None]
        if tasks:
            _, still_running = await asyncio.wait(tasks, timeout=0.5)
            for task in still_running:
                task.cancel()
            await asyncio.gather(*still_running, return_exceptions=True)
        for server in (self._server, self._ws_server):
            if server is not None:
                await server.wait_closed()
        self.core.close()
        log.info("stopped")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        refusal = self.core.refusal()
        if refusal is not None:
            self.core.counters["refused_connections"] += 1
            self.core.log_throttle.warning(refusal.code, "refusing a connection: %s",
                                           refusal.message)
            writer.write(p.encode(refusal))
            writer.close()
            return
        connection = Connection(self, self._next_connection_id, reader, writer)
        self._next_connection_id += 1
        self.connections[connection.session] = connection
        try:
            await connection.run()
        except asyncio.CancelledError:
            # Broker.close() cancels what is still running (a connection lingering after a
            # fatal ERROR, say): that is how it ends, not an error for asyncio to log.
            if self.core.state != "stopping":
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]  # ours: done
        finally:
            self.connections.pop(connection.session, None)

    def gate_started(self, gate: TlsGate | WebSocketGate) -> bool:
        """A socket accepted for TLS or a WebSocket upgrade: it holds a connection and a
        handshake slot from now (False: over --max-connections, to be closed at once)."""
        core = self.core
        refusal = core.refusal(pending=len(self._gates))
        if refusal is not None:
            core.counters["refused_connections"] += 1
            core.log_throttle.warning(refusal.code, "refusing a %s connection from %s: %s "
                                      "(connections in their handshake count)", _kind(gate),
                                      gate.peer, refusal.message)
            return False
        self._gates[gate] = None
        oldest = core.handshake_started(gate)
        if oldest is not None:
            self.drop_handshake(oldest)
        return True

    def gate_ended(self, gate: TlsGate | WebSocketGate) -> None:
        self._gates.pop(gate, None)
        self.core.handshake_ended(gate)

    def drop_handshake(self, victim: Handshaking) -> None:
        """Make room for a new connection: the oldest still in its handshake goes."""
        config, core = self.config, self.core
        if isinstance(victim, (TlsGate, WebSocketGate)):
            core.counters["dropped_handshakes"] += 1
            core.log_throttle.warning(
                "dropped-gate", "dropping the %s handshake of %s, the oldest connection "
                "still in its handshake, to make room (--max-handshakes %d, "
                "--max-handshakes-per-address %d)", _kind(victim), victim.peer,
                config.max_handshakes, config.max_handshakes_per_address)
            victim.drop()
            return
        connection = self.connections.get(victim)  # type: ignore[call-overload]
        if connection is None:
            return
        core.counters["dropped_handshakes"] += 1
        core.log_throttle.warning(
            "dropped-handshake", "dropping %s, the oldest connection still in its handshake, "
            "to make room (--max-handshakes %d, --max-handshakes-per-address %d)",
            connection.describe(), config.max_handshakes, config.max_handshakes_per_address)
        connection.drop(f"dropped to make room: the broker holds {config.max_handshakes:,} "
                        f"connections in their handshake ({config.max_handshakes_per_address:,}"
                        " per address), and the oldest goes first; try again")

    def reload_users(self, table: UserTable) -> None:
        """SIGHUP's new users file: connections still allowed go on under its rules; the
        others are told why and closed."""
        closing = self.core.reload_users(table)
        for session, code, message in closing:
            connection = self.connections.get(session)
            if connection is not None:
                connection.close(code, message)  # which logs it
        log.info("users file %s reloaded: %d users; %d connections closed as no longer "
                 "allowed", table.source, len(table.users), len(closing))
        self._say_oversubscribed()

    def _say_oversubscribed(self) -> None:
        for note in self.core.accounts.oversubscribed():
            log.warning("%s", note)

    # --- timers ------------------------------------------------------------------

    async def _housekeep(self) -> None:
        """Forget idle topics nobody reads and durables nobody has used, now and then."""
        config = self.config
        interval = min(HOUSEKEEPING_MAX_INTERVAL_S,
                       max(0.05, min(config.topic_ttl_s, config.durable_ttl_s) / 4))
        while True:
            await asyncio.sleep(interval)
            self.core.expire()

    async def _sync_periodically(self) -> None:
        """--fsync interval: what was written reaches the disk within SYNC_INTERVAL_S; an
        fsync error stops that topic's writes, loudly, and the syncer goes on."""
        core = self.core
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            topics = core.topics_to_sync()
            if topics:
                for error in await asyncio.to_thread(sync_topics, topics):
                    log.error("%s (its PUBs are refused with 'storage')", error)
            if core.durables.changed:
                core.durables.changed = False
                snapshot = core.durables.positions()
                try:
                    await asyncio.to_thread(core.storage.save_durables, snapshot)
                except OSError as exc:
                    core.durables_not_saved(exc)

    # --- block policy: publishers waiting for room ----------------------------------

    def _room_freed(self, topic: Topic) -> None:
        event = self._room_events.pop(topic, None)
        if event is not None:
            event.set()

    def room_event(self, topic: Topic) -> asyncio.Event:
        return self._room_events.setdefault(topic, asyncio.Event())


def _kind(gate: TlsGate | WebSocketGate) -> str:
    return "TLS" if isinstance(gate, TlsGate) else "WebSocket"


class _Accepted(asyncio.StreamReaderProtocol):
    """asyncio.start_server's protocol, knowing whether the peer has said anything yet: a
    full handshake table drops a silent connection before one whose HELLO has come."""

    def __init__(self, reader: asyncio.StreamReader, accepted: Any,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(reader, accepted, loop=loop)
        self.spoke = False
        self.on_connected: Callable[[], None] | None = None  # TLS: its handshake is done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.on_connected is not None:
            self.on_connected()
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.spoke = True
        super().data_received(data)


def _bytes_waiting(fd: int) -> bool:
    """Has the peer sent bytes the loop has not read yet (FIONREAD)? Under a flood of new
    connections the loop may not have polled a client's HELLO (or ClientHello) before a
    hundred newer connections want its slot: the kernel knows it is there."""
    try:
        waiting: int = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
    except OSError:
        return False
    return waiting > 0


def _common_name(certificate: dict[str, Any] | None) -> str | None:
    """The CN of a TLS client certificate the handshake verified (--tls-ca), if any."""
    for rdn in (certificate or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class _Closed(Exception):
    """Internal: this connection is over; unwinds its tasks."""


class Connection:
    """One client's TCP connection: a `Session` and the two tasks that move its bytes."""

    def __init__(self, broker: Broker, connection_id: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.broker = broker
        self.config = broker.config
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")  # None when reset before we got here
        self._wake = asyncio.Event()
        protocol = writer.transport.get_protocol()
        sock = writer.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1

        def said_something() -> bool:
            return bool(getattr(protocol, "spoke", True)) or _bytes_waiting(fd)

        self.session = Session(
            broker.core, connection_id, f"{peer[0]}:{peer[1]}" if peer else "(gone)",
            address=str(peer[0]) if peer else "(gone)",
            cert_name=_common_name(writer.get_extra_info("peercert")),
            said_something=said_something,
            output_full=self._out_over_high_water, buffered_bytes=self._buffered_bytes,
            wake=self._wake.set)
        self._dropped = False
        self.task = asyncio.current_task()
        self._lookahead: list[bytes] = []  # read while a blocked PUB waited
        self._lookahead_bytes = 0
        self._sender: asyncio.Task[None] | None = None
        self._linger = False  # a fatal ERROR was sent: let it arrive before closing

    def describe(self) -> str:
        return self.session.describe()

    def _buffered_bytes(self) -> int:
        return self.writer.transport.get_write_buffer_size()

    # --- lifecycle -----------------------------------------------------------

    async def run(self) -> None:
        core = self.broker.core
        try:
            oldest = core.handshake_started(self.session)
            if oldest is not None:
                self.broker.drop_handshake(oldest)
            try:
                await self._handshake()
            except asyncio.CancelledError:
                if not self._dropped:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]  # ours: done
                raise _Closed from None
            finally:
                core.handshake_ended(self.session)
            async with asyncio.TaskGroup() as tasks:
                self._sender = tasks.create_task(self._send_loop())
                tasks.create_task(self._read_loop())
        except* _Closed:
            pass
        except* (ConnectionError, TimeoutError, ssl.SSLError) as group:
            if not self._dropped:
                log.info("connection %s ended: %s", self.describe(), group.exceptions[0])
        finally:
            try:
                if self._linger:
                    await self._linger_after_fatal()
            finally:
                self.writer.close()
                self.session.end()

    def close(self, code: str, message: str) -> None:
        """End this connection from the broker's side, telling the client why."""
        if self.session.closing:
            return
        self.session.fail(code, message)
        self._after_fatal()

    def drop(self, message: str) -> None:
        """Dropped in its handshake to make room (Broker.drop_handshake): a fatal `busy`, if
        it can be read, and close at once, without lingering: under a flood of idle
        sockets a dropped one must give its file descriptor back now."""
        if self.session.closing:
            return
        self._dropped = True
        self.session.fail("busy", message)
        self._flush()
        self.writer.close()
        if self.task is not None:
            self.task.cancel()  # it waits for a HELLO: it unwinds now, its socket given back

    def _after_fatal(self) -> None:
        """The session has queued a fatal ERROR (ours, or the rules'): log it, send it, and
        close as fits."""
        fatal = self.session.conn.fatal
        assert fatal is not None
        if fatal.code == "shutdown":
            log.info("closing %s: %s", self.describe(), fatal.message)
        else:
            self.session.log_once(fatal.code, "closing %s: %s", self.describe(), fatal.message)
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

    async def _handshake(self) -> None:
        """HELLO first, small, and in time; the frames pipelined behind it wait in the
        session for the reader.

        Until the client is authenticated the core accepts frames of at most
        MAX_HELLO_BYTES (broker/wire/broker_connection.py) and asyncio buffers at most
        2 x READ_CHUNK_BYTES, so a connection that never finishes its HELLO holds little.
        """
        session = self.session
        try:
            async with asyncio.timeout(self.config.handshake_timeout_s):
                while session.state is State.HANDSHAKE:
                    data = await self.reader.read(READ_CHUNK_BYTES)
                    if not data:
                        raise _Closed
                    session.receive_data(data)
        except TimeoutError:
            session.fail("handshake_timeout",
                         f"no HELLO within {self.config.handshake_timeout_s:g} s")
        if self._dropped:
            raise _Closed
        if session.state is not State.OPEN:  # refused: the core queued the fatal ERROR
            self._after_fatal()
            raise _Closed
        self._flush()  # WELCOME
        log.info("connection %s: handshake done", self.describe())

    # --- reading ---------------------------------------------------------------

    async def _read_loop(self) -> None:
        session = self.session
        while True:
            match session.act():
                case Wait.READ:
                    # Read no more while this client has not taken what we owe it: its
                    # requests (PING, STATS, ...) must not pile up answers in our memory.
                    await self._room_to_write()
                    data = await self._next_data()
                    if not data:
                        session.receive_eof()
                        self._stop_sender()
                        raise _Closed
                    session.receive_data(data)
                case Wait.TURN:
                    await self._room_to_write()  # flushes what this pass queued
                case Wait.RATE:
                    self._flush()
                    await asyncio.sleep(session.delay_s)
                case Wait.ROOM:
                    self._flush()
                    assert session.blocked_on is not None
                    await self._wait_for_room(session.blocked_on)
                case Wait.CLOSE:
                    self._after_fatal()
                    self._stop_sender()
                    raise _Closed

    async def _next_data(self) -> bytes:
        if self._lookahead:
            data = b"".join(self._lookahead)
            self._lookahead.clear()
            self._lookahead_bytes = 0
            return data
        return await self.reader.read(READ_CHUNK_BYTES)

    def _stop_sender(self) -> None:
        if self._sender is not None:
            self._sender.cancel()

    async def _wait_for_room(self, topic: Topic) -> None:
        """Wait until a subscriber frees room in `topic`, or raise _Closed if the publisher
        hangs up meanwhile (read ahead into a bounded buffer to see its end).

        While we wait we do not act on this connection's later frames, so TCP
        pushes back on the publisher."""
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

    # --- sending ---------------------------------------------------------------

    async def _send_loop(self) -> None:
        session = self.session
        wake = self._wake
        while not session.closing:
            await wake.wait()
            wake.clear()
            while session.delivery.dirty and not session.closing:
                session.send_pass()
                await self._room_to_write()  # more to send: let the readers run first
        # Closed from outside (a reload, a slow reader): the read loop may be waiting for
        # bytes that never come; ending the task group ends it too.
        raise _Closed

    def _flush(self) -> None:
        out = self.session.data_to_send()
        if out:
            self.writer.writelines(out)

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

    async def _drain(self) -> None:
        """Wait for the socket to take our bytes; cut off a client that stops reading."""
        try:
            async with asyncio.timeout(self.config.write_stall_timeout_s):
                await self.writer.drain()
        except TimeoutError:
            queued = self.writer.transport.get_write_buffer_size()
            self.broker.core.counters["slow_consumers"] += 1
            self.close("slow_consumer",
                       f"took no bytes for {self.config.write_stall_timeout_s:g} s with "
                       f"{queued:,} bytes queued; disconnected so it cannot hold back others")
            raise _Closed from None
