"""One client connection's whole life in the broker, sans-I/O: frames in, acts, frames out.

A `Session` joins the connection's protocol rules (broker/wire/broker_connection.py),
its fan-out (broker/server/delivery.py) and the broker's state (broker/server/core.py).
`receive_data` takes bytes; `act()` acts on the frames they completed, in
order, until each is done or the I/O loop has to wait, and says for what
(`Wait`); `send_pass()` queues deliveries; `data_to_send()` hands back the
bytes. The asyncio `Connection` (broker/server/server.py) and the simulator
(tests/sim/broker.py) are two loops around the same object.

    wait     when act() returns it                             then the loop
    READ     every frame read so far is acted on               reads more bytes
    TURN     a pass ended (FRAMES_PER_PASS frames, a SUB or     lets others run, then
             STATS, or output over the high-water mark)        acts again
    RATE     a PUB is over --max-publish-rate                  sleeps `delay_s`, acts again
    ROOM     block policy: a PUB waits for room in             waits for room_freed
             `blocked_on` (or for another run there)           there, acts again
    CLOSE    the connection failed: its fatal ERROR is queued  sends it, closes
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Any

from broker.errors import ProtocolError, StorageError
from broker.limits import TokenBucket
from broker.server.core import BrokerCore
from broker.server.delivery import Cursors, Delivery
from broker.server.routing import echo
from broker.storage.segments import WriteRefusedError
from broker.storage.storage import TopicStorage as Topic
from broker.users.accounts import Account, Refusal
from broker.wire import protocol as p
from broker.wire.broker_connection import BrokerConnection, Received
from broker.wire.states import State

log = logging.getLogger("slipstream.broker")

# act() lets the other connections run after this many frames.
FRAMES_PER_PASS = 512
_COSTLY_FRAMES = (p.Subscribe, p.StatsRequest)  # up to O(topics) each: each ends a pass


class Wait(Enum):
    """What act() stopped for (the module docstring's table says what the loop does)."""

    READ = "every frame read so far is acted on"
    TURN = "a pass ended: let others run, then act again"
    RATE = "a PUB is over --max-publish-rate: sleep delay_s"
    ROOM = "block policy: a PUB waits for room in blocked_on"
    CLOSE = "the connection failed: its fatal ERROR is queued"


class _Run:
    """Block policy: a PUB whose payloads are stored a part at a time as room frees."""

    __slots__ = ("first_seq", "remaining", "reserved_bytes", "topic")

    def __init__(self, topic: Topic, first_seq: int) -> None:
        self.topic = topic
        self.first_seq = first_seq
        self.remaining: list[bytes] = []  # not stored yet
        self.reserved_bytes = 0  # of the --max-memory budget, kept for `remaining`


def _nothing() -> None:
    return None


def _no_bytes() -> int:
    return 0


class Session:
    """One connection, broker side: its rules, its subscriptions, its publishing.

    `output_full()` says whether the bytes handed out but not yet taken by the
    peer are over the high-water mark; `buffered_bytes()` how many there are;
    `wake()` that there is something new to send. The I/O loop provides them.
    """

    def __init__(self, core: BrokerCore, session_id: int, peer: str, *,
                 address: str = "", cert_name: str | None = None,
                 said_something: Callable[[], bool] = lambda: True,
                 output_full: Callable[[], bool] = lambda: False,
                 buffered_bytes: Callable[[], int] = _no_bytes,
                 wake: Callable[[], None] = _nothing) -> None:
        config = core.config
        self.core = core
        self.config = config
        self.id = session_id
        self.peer = peer
        self.address = address or peer  # the source address: handshake slots are per address
        self.cert_name = cert_name  # the CN of its TLS client certificate, if it sent one
        self.said_something = said_something  # has the peer sent a byte yet?
        self.output_full = output_full
        self.buffered_bytes = buffered_bytes
        self.conn: BrokerConnection[Cursors] = BrokerConnection(
            server_name=config.server_name, epoch=core.epoch,
            max_frame_bytes=config.max_frame_bytes, authenticate=self._login,
            max_subscriptions=config.max_subscriptions)
        self.account: Account | None = None  # the user it logged in as
        self.subscriptions = self.conn.subscriptions  # by sid
        self.delivery = Delivery(self.conn, config, core.totals, core.log_throttle,
                                 self.log_once, self.describe, wake)
        self.frames: deque[Received] = deque()  # read, not yet acted on
        self.published = 0
        self.throttled_s = 0.0
        self.delay_s = 0.0  # Wait.RATE: how long
        self.blocked_on: Topic | None = None  # Wait.ROOM: where
        self._run: _Run | None = None  # block policy: the PUB stored a part at a time
        self._paid: p.Publish | None = None  # the PUB the rate limit already delayed
        self._block = config.on_full == "block"
        self._errors_logged: set[str] = set()
        now = core.clock.monotonic
        self._message_rate = (TokenBucket(config.max_publish_rate_msgs, clock=now)
                              if config.max_publish_rate_msgs else None)
        self._byte_rate = (TokenBucket(config.max_publish_rate_bytes, clock=now)
                           if config.max_publish_rate_bytes else None)
        self._rated = bool(self._message_rate or self._byte_rate)
        core.sessions.add(self)

    def _login(self, hello: p.Hello) -> Refusal | None:
        """The HELLO names a user (or a token, or none): which account, if any."""
        account = self.core.accounts.login(hello, self.address, self.cert_name)
        if isinstance(account, Refusal):
            return account
        self.account = self.delivery.account = account
        return None

    @property
    def state(self) -> State:
        return self.conn.state

    @property
    def client_name(self) -> str:
        return self.conn.client_name or "?"  # "?" until the client is authenticated

    @property
    def closing(self) -> bool:
        return self.conn.state in (State.CLOSING, State.CLOSED)

    def describe(self) -> str:
        user = f" user {self.account.name!r}" if self.account is not None \
            and self.core.accounts.has_users else ""
        return f"#{self.id} {self.client_name!r}{user} ({self.peer})"

    # --- bytes in and out ----------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self.core.totals["bytes_in"] += len(data)
        self.frames.extend(self.conn.receive_data(data))

    def receive_eof(self) -> None:
        self.conn.receive_eof()

    def data_to_send(self) -> list[bytes]:
        out = self.conn.data_to_send()
        if out:
            self.core.totals["bytes_out"] += sum(map(len, out))
        return out

    def send_pass(self) -> None:
        """Queue what the subscriptions are owed (one pass; see Delivery.send_pass)."""
        self.delivery.send_pass()

    def fail(self, code: str, message: str) -> None:
        """End this connection from the broker's side, telling the client why."""
        self.conn.fail(code, message)

    def end(self) -> None:
        """The connection is gone: let go of its subscriptions and what it held."""
        if self.conn.state is not State.CLOSED:
            self.conn.receive_eof()
        self._end_run()
        self.core.detach(self)
        if self.account is not None:
            self.core.accounts.logout(self.account)
            self.account = None
        if self.conn.client_name is not None:
            log.info("connection %s closed: published %d, delivered %d, gaps %d (%d missed)",
                     self.describe(), self.published, *self.delivery.totals_of_subscriptions())

    # --- acting on frames ----------------------------------------------------------

    def act(self) -> Wait:
        """Act on the frames read so far, in order, until done or a wait (see Wait)."""
        budget = FRAMES_PER_PASS
        frames = self.frames
        if self.closing:  # failed from outside (shutdown, a slow reader) since the last act
            frames.clear()
        while frames:
            frame = frames[0]
            try:
                if type(frame) is p.Publish:
                    wait = self._publish(frame)
                    if wait is not None:
                        return wait
                else:
                    self._control(frame)
                    if self.closing:  # Broken: nothing after it is acted on
                        frames.clear()
                        break
                    # SUB and STATS cost up to O(topics): each ends the pass, so a storm of
                    # them cannot hold the loop; so does output over the high-water mark.
                    if type(frame) in _COSTLY_FRAMES or self.output_full():
                        budget = 0
            except ProtocolError as exc:
                self._reject(exc, frame)
            frames.popleft()
            budget -= 1
            if budget <= 0 and frames:
                return Wait.TURN
        if self.closing:  # a fatal ERROR is queued (Broken, or the broker's own reason)
            return Wait.CLOSE
        return Wait.READ

    def _publish(self, frame: p.Publish) -> Wait | None:
        if self._paid is not frame and (self._rated or self.account.rated):  # type: ignore[union-attr]
            self.delay_s = self._rate_delay(frame)
            self._paid = frame
            if self.delay_s > 0:
                self.throttled_s += self.delay_s
                return Wait.RATE
        if self._block:
            return self._publish_blocking(frame)
        topic = self._check_publish(frame)
        try:
            first_seq = topic.append(frame.payloads, self.core.clock.wall_us())
        except StorageError as exc:
            raise self._storage_error(topic, exc) from None
        if self.core.budget.over:
            self.core.make_room()
        self._published(topic, frame, first_seq)
        return None

    def _rate_delay(self, frame: p.Publish) -> float:
        """--max-publish-rate: a publisher over its rate is not read until back under."""
        delay = 0.0
        size = sum(map(len, frame.payloads))
        account = self.account
        assert account is not None
        # This connection's buckets, then its user's (shared by all its connections).
        for messages, octets in ((self._message_rate, self._byte_rate),
                                 (account.message_rate, account.byte_rate)):
            if messages is not None:
                delay = max(delay, messages.take(len(frame.payloads)))
            if octets is not None:
                delay = max(delay, octets.take(size))
        return delay

    def _publish_blocking(self, frame: p.Publish) -> Wait | None:
        """Block policy: append only what evicts no unacknowledged message; wait for the rest.

        While we wait, this connection's later frames wait too, so TCP pushes
        back on the publisher. The topic is held while a run is stored a part
        at a time, so its seqs stay consecutive.
        """
        core = self.core
        run = self._run
        if run is None:
            topic = self._check_publish(frame)
            holder = core.holder(topic)
            if holder is not None and holder is not self:
                self.blocked_on = topic  # another publisher's run is still being stored
                return Wait.ROOM
            if not core.make_room(sum(map(len, frame.payloads))):
                raise ProtocolError(
                    f"PUB to {echo(topic.name)} refused: the broker's retained bytes are at "
                    f"--max-memory {self.config.max_memory_bytes:,} and every message is "
                    "still unacknowledged by some subscriber", code="memory_full")
            first_seq, payloads = topic.next_seq, frame.payloads
        else:
            topic, first_seq, payloads = run.topic, run.first_seq, run.remaining
        try:
            appended = topic.append_within(payloads, core.clock.wall_us(),
                                           core.keep_from(topic, self.delivery))
        except StorageError as exc:
            self._end_run()
            raise self._storage_error(topic, exc) from None
        if appended == len(payloads):  # all stored (at once: the common case)
            self._end_run()
            self._published(topic, frame, first_seq)
            return None
        # The rest waits for room, its room in the budget kept for it meanwhile (no _Run
        # is made for a PUB stored at once).
        if run is None:
            run = self._run = _Run(topic, first_seq)
        run.remaining = payloads[appended:]
        rest_bytes = sum(map(len, run.remaining))
        core.budget.reserved_bytes += rest_bytes - run.reserved_bytes
        run.reserved_bytes = rest_bytes
        if appended:
            core.notify(topic)  # their acks are what frees the room
        core.hold(topic, self)
        self.blocked_on = topic
        return Wait.ROOM

    def _end_run(self) -> None:
        """The run is stored (or refused, or its connection gone): give back what is left
        of its room and its topic."""
        run, self._run = self._run, None
        if run is not None:
            self.core.budget.reserved_bytes -= run.reserved_bytes
            self.core.release(run.topic)

    def _check_publish(self, frame: p.Publish) -> Topic:
        payloads = frame.payloads
        if not payloads:
            raise ProtocolError(f"PUB to {echo(frame.topic)} carries no payloads",
                                code="bad_publish")
        # One payload over the limit needs the run over it too: the max only then.
        limit = self.config.max_payload_bytes
        biggest = len(payloads[0]) if len(payloads) == 1 else (
            max(map(len, payloads)) if sum(map(len, payloads)) > limit else 0)
        if biggest > limit:
            raise ProtocolError(
                f"payload of {biggest:,} bytes to {echo(frame.topic)} exceeds max payload "
                f"{self.config.max_payload_bytes:,} (max-frame minus {p.FRAME_ROOM_BYTES})",
                code="payload_too_large")
        account = self.account
        assert account is not None
        if account.publish_checked:
            reason = account.publish.refuse_topic(frame.topic)
            if reason is not None:
                raise ProtocolError(f"user {account.name!r} may not publish to "
                                    f"{echo(frame.topic)}: {reason}", code="permission_denied")
        return self.core.topic(frame.topic, account)

    def _storage_error(self, topic: Topic, exc: StorageError) -> ProtocolError:
        """Disk full, read-only: this PUB is refused (nothing of it stored), reads go on.
        After a failed fsync the topic takes no writes until a restart: said loudly, once."""
        self.core.storage_failing = True
        if isinstance(exc, WriteRefusedError) and exc.stopped:
            self.core.log_throttle.log(logging.ERROR, f"stopped:{topic.name}", "%s", exc)
            return ProtocolError(f"PUB to {echo(topic.name)} not stored: {exc}",
                                 code="storage")
        return ProtocolError(
            f"PUB to {echo(topic.name)} not stored: {exc} "
            f"({self.config.data_dir}); publishing works again once it can be written",
            code="storage")  # logged once per connection, as every refusal is

    def _published(self, topic: Topic, frame: p.Publish, first_seq: int) -> None:
        """Both publish paths end here, once every payload of `frame` is stored."""
        core = self.core
        if core.storage_failing:
            core.storage_failing = False
            log.warning("storage works again: %s can be written", self.config.data_dir)
        self.published += len(frame.payloads)
        self.account.published += len(frame.payloads)  # type: ignore[union-attr]
        core.totals["published"] += len(frame.payloads)
        core.notify(topic)
        self.conn.published(frame, first_seq)

    def _reject(self, exc: ProtocolError, frame: Received) -> None:
        """A request we refuse but can survive: answer with a non-fatal ERROR."""
        self.log_once(exc.code, "connection %s: %s", self.describe(), exc)
        if self.account is not None:
            self.account.refused[exc.code] += 1
        self.conn.reject(exc, frame)

    def _control(self, frame: Received) -> None:
        """Everything but PUB: the core applies the connection's rules (and raises
        ProtocolError when one is broken, or fails the connection on `Broken`); what
        is left is the broker's to do."""
        match self.conn.handle(frame):
            case p.Ack(sid, count):
                self._ack(self.conn.subscription(sid), count)
            case p.Subscribe() as subscribe:
                self._subscribe(subscribe)
            case p.Unsubscribe(sid):
                self.core.unsubscribe(self.conn.unsubscribed(sid))
            case p.StatsRequest(request_id, options):
                self.conn.send(p.StatsReply(request_id, self.core.stats(options,
                                                                       self.account)))
            case p.Error(code, message):
                # Logged once per connection: a client cannot fill the broker's log.
                self.log_once("client-error", "connection %s reports error [%s]: %s "
                              "(further errors from it are not logged)", self.describe(),
                              code[:64], message[:200])
            case _:
                pass  # PING and PONG: the core has answered

    def _subscribe(self, frame: p.Subscribe) -> None:
        sub = self.core.subscribe(self.delivery, frame)
        self.conn.subscribed(frame.sid, sub)
        log.info("connection %s subscribed sid %d to %s (start=%s%s)", self.describe(),
                 frame.sid, echo(frame.pattern), frame.start,
                 f", durable {echo(frame.durable)}" if frame.durable else "")
        self.delivery.subscribed(sub)

    def _ack(self, sub: Cursors, count: int) -> None:
        moved = self.delivery.acked(sub, count)
        if sub.durable:
            self.core.durables_moved()
        for topic in moved:  # --on-full block: a publisher may wait for this room
            self.core.room_freed(topic)

    # --- reporting ---------------------------------------------------------------

    def log_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._errors_logged:
            self._errors_logged.add(key)
            log.warning(message, *args)
