"""The whole broker under a deterministic simulation: its real core, simulated clients.

The broker's sans-I/O parts (`BrokerCore`, one `Session` per connection, their
`Delivery`) run as broker/server/server.py runs them, but the sockets are in-memory
byte pipes (`Link`), the clock is virtual, and the disk, with --data-dir, is
`SimFiles` (tests/sim/filesystem.py). One seeded random generator decides
everything: which actor moves next, how many bytes a read takes, how long a
step lasts, when a client stalls, vanishes or sends garbage, when the broker
crashes. So a seed is a run, identical every time. Half the seeds run with a
users file: every client logs in, some subscribers may not read one topic, and
an intruder tries to publish and read where it may not and to create more
topics than its quota.

Clients: publishers (with confirmations), subscribers that are fast, slow,
stalled for a while (past --write-timeout, so they are cut off and come back),
durable ones, ones that hop between connections and resume at a seq, ones that
never read at all, vandals (garbage, a HELLO and half a frame, nothing at
all, a frame too big), and lurkers that hold handshake slots by saying
nothing. The broker crashes and restarts (with --data-dir).

After every step, `check_step` asserts what the docs promise at every moment;
after the run, the publishers stop, every reader catches up, and `check_end`
asserts what must have arrived:

- per subscription and topic, deliveries come in seq order with nothing
  skipped and nothing twice: a loss is a GAP whose count is exact;
- under --on-full block, a subscription connected throughout gets no GAP;
- a durable resumes at or before what it acknowledged, never after it;
- what is delivered was published to that topic, at the seq its PUBACK named;
- retained bytes stay within --max-memory; the bytes queued to a connection
  stay within the high-water mark plus one pass;
- a connection that takes no bytes is cut off within --write-timeout, one that
  never finishes its HELLO within --handshake-timeout; no more than
  --max-handshakes are ever in their handshake;
- a fast subscriber is never held back by another client: each message reaches
  it within FAIR_BOUND_S of its publish (virtual time);
- at the end, every reader has every message up to each topic's end;
- with users: nothing the intruder sent to a topic it may not write is stored
  or delivered, no denied topic reaches a subscriber, and no user ever holds
  more topics than its quota.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from broker.server.config import BrokerConfig, OnFull
from broker.server.core import BrokerCore, Handshaking
from broker.server.routing import pattern_matches
from broker.server.session import FRAMES_PER_PASS, Session, Wait
from broker.storage.storage import TopicStorage, sync_topics
from broker.storage.topics import Retention
from broker.users.passwords import hash_password
from broker.users.table import parse_users
from broker.wire import protocol as p
from broker.wire.states import State
from tests.sim.clock import VirtualClock
from tests.sim.filesystem import SimFiles

READ_CHUNK_BYTES = 64 * 1024  # what the broker takes from a link at once (server.py's)
SYNC_INTERVAL_S = 0.1  # --fsync interval, as broker/server/server.py runs it
STEP_MAX_S = 0.002  # virtual time one round of turns may take
FAIR_BOUND_S = 10 * STEP_MAX_S  # a fast subscriber has a message within 10 rounds
TOPICS = 6
MAX_PAYLOAD_BYTES = 200


class Violation(AssertionError):
    """An invariant did not hold."""


def fail(message: str) -> None:
    raise Violation(message)


@dataclass(frozen=True)
class Scenario:
    """One seeded run: the seed decides the rest (see `Scenario.of`)."""

    seed: int
    on_full: OnFull
    disk: bool
    steps: int
    users: bool = False

    @property
    def label(self) -> str:
        return (f"broker seed={self.seed} on_full={self.on_full} disk={int(self.disk)} "
                f"steps={self.steps} users={int(self.users)}")

    @classmethod
    def of(cls, seed: int, steps: int = 1000) -> Scenario:
        rng = random.Random(seed)
        return cls(seed, rng.choice(("drop", "block")), rng.random() < 0.5, steps,
                   rng.random() < 0.5)

    @classmethod
    def parse(cls, label: str) -> Scenario:
        words = dict(word.split("=", 1) for word in label.split()[1:])
        on_full: OnFull = "block" if words["on_full"] == "block" else "drop"
        return cls(int(words["seed"]), on_full, words["disk"] == "1", int(words["steps"]),
                   words.get("users") == "1")


def config_for(scenario: Scenario) -> BrokerConfig:
    """Small limits, so that a few thousand steps reach every one of them."""
    return BrokerConfig(
        on_full=scenario.on_full,
        retention=Retention(max_messages=60, max_bytes=8 * 1024),
        max_memory_bytes=24 * 1024,
        max_frame_bytes=16 * 1024,
        write_high_water_bytes=4 * 1024,
        write_stall_timeout_s=0.5,
        handshake_timeout_s=0.3,
        max_run_messages=16,
        max_run_bytes=2 * 1024,
        max_connections=64,
        max_handshakes=4,
        max_handshakes_per_address=3,
        data_dir=Path("/data") if scenario.disk else None,
        fsync="interval",
        users=parse_users(USERS, "sim-users.toml") if scenario.users else None)


INTRUDER_TOPICS = 2  # the intruder's quota of topics (its own x.*)
DENIED_TOPIC = "t.5"  # what a "picky" reader may not read
_HASH = hash_password("pw", (16, 1, 1))  # cheap: the simulation checks rules, not cost
USERS = f"""
[users.pub]
password = "{_HASH}"
publish = ["t.>"]

[users.reader]
password = "{_HASH}"
subscribe = ["t.>"]

[users.picky]
password = "{_HASH}"
subscribe = {{ allow = ["t.>"], deny = ["{DENIED_TOPIC}"] }}

[users.intruder]
password = "{_HASH}"
publish = ["x.>"]
subscribe = ["x.>"]
max_topics = {INTRUDER_TOPICS}
"""


# --- the pipes -------------------------------------------------------------------------


class Link:
    """One TCP connection's bytes in flight: each way, what was written and not yet read."""

    def __init__(self) -> None:
        self.to_broker = bytearray()
        self.to_client = bytearray()
        self.client_closed = False  # the client hung up (or vanished)
        self.broker_closed = False
        self.client_wrote = False  # the client has sent a byte (what FIONREAD tells)
        # For the checks, seen from outside the broker: since when the bytes queued to the
        # client are over the high-water mark, and when the client last took some.
        self.over_from_s: float | None = None
        self.taken_s = 0.0

    def take(self, buffer: bytearray, limit: int) -> bytes:
        data = bytes(buffer[:limit])
        del buffer[:limit]
        return data


class BrokerSide:
    """broker/server/server.py's `Connection`, one step at a time: the same calls, in its order."""

    def __init__(self, sim: Simulation, link: Link, number: int) -> None:
        self.sim = sim
        self.link = link
        self.session = Session(sim.core, number, f"sim:{number}", address="127.0.0.1",
                               said_something=lambda: link.client_wrote,
                               output_full=self.over_high_water,
                               buffered_bytes=lambda: len(link.to_client))
        self.opened_s = sim.clock.now_s
        self.wait = Wait.READ
        self.until_s = 0.0  # Wait.RATE
        self.room_freed = False  # Wait.ROOM: the topic it waits on had room freed
        self.over_since_s: float | None = None
        self.closed = False
        oldest = sim.core.handshake_started(self.session)
        if oldest is not None:  # the table was full: the oldest in it makes room
            sim.drop(oldest)

    def over_high_water(self) -> bool:
        self.flush()
        return len(self.link.to_client) > self.sim.config.write_high_water_bytes

    def flush(self) -> None:
        for data in self.session.data_to_send():
            self.link.to_client += data
            self.sim.trace = zlib.crc32(data, self.sim.trace)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.flush()
            self.link.broker_closed = True
            self.session.end()

    def turn(self) -> None:
        if self.closed:
            return
        session, config, now = self.session, self.sim.config, self.sim.clock.now_s
        if self.link.client_closed and self.link.to_client:
            self.close()  # writing to a socket the peer closed: a reset
            return
        if session.state is State.HANDSHAKE:
            if now - self.opened_s > config.handshake_timeout_s:
                session.fail("handshake_timeout", "no HELLO in time")
            elif self.link.to_broker:
                session.receive_data(self.link.take(self.link.to_broker, READ_CHUNK_BYTES))
            elif self.link.client_closed:
                self.close()
                return
            if session.state is State.HANDSHAKE:
                return
            self.sim.core.handshake_ended(session)
            if session.state is not State.OPEN:
                self.close()
                return
        if not self.over_high_water():
            self._read_turn()
        if not self.closed and session.delivery.dirty and not self.over_high_water():
            session.send_pass()
        self.flush()
        self._stall_check()

    def _read_turn(self) -> None:
        session, now = self.session, self.sim.clock.now_s
        if self.wait is Wait.RATE and now < self.until_s:
            return
        if self.wait is Wait.ROOM and not self.room_freed:
            if self.link.client_closed and not self.link.to_broker:
                self.close()  # hung up while its PUB waited for room
            return
        if self.wait is Wait.READ:
            if self.link.to_broker:
                session.receive_data(self.link.take(self.link.to_broker, READ_CHUNK_BYTES))
            elif self.link.client_closed:
                session.receive_eof()
                self.close()
                return
        self.wait = session.act()
        if self.wait is Wait.RATE:
            self.until_s = now + session.delay_s
        elif self.wait is Wait.ROOM:
            self.room_freed = False
        elif self.wait is Wait.CLOSE:
            self.close()

    def _stall_check(self) -> None:
        """--write-timeout: output over the high-water mark that the client does not take."""
        if self.closed:
            return
        config, now = self.sim.config, self.sim.clock.now_s
        if len(self.link.to_client) <= config.write_high_water_bytes:
            self.over_since_s = None
        elif self.over_since_s is None:
            self.over_since_s = now
        elif now - self.over_since_s > config.write_stall_timeout_s:
            self.sim.core.counters["slow_consumers"] += 1
            self.session.fail("slow_consumer", "took no bytes in time")
            self.close()

    def took_bytes(self) -> None:
        if self.over_since_s is not None:
            self.over_since_s = self.sim.clock.now_s


# --- the clients -------------------------------------------------------------------------


class Client:
    """A client's side of a link: frames out, frames in, reconnection."""

    def __init__(self, sim: Simulation, name: str) -> None:
        self.sim = sim
        self.name = name
        self.link: Link | None = None
        self.side: BrokerSide | None = None
        self.decoder = p.FrameDecoder(1 << 24)
        self.open = False  # WELCOME received
        self.reconnect_at_s = 0.0
        self.version = 2
        self.user: str | None = None  # with users: who it logs in as

    def hello(self) -> p.Hello:
        if self.sim.scenario.users and self.user is not None:
            return p.Hello(self.version, self.name, "pw", self.user)
        return p.Hello(self.version, self.name)

    @property
    def rng(self) -> random.Random:
        return self.sim.rng

    def connect(self) -> None:
        self.link, self.side = self.sim.connect()
        self.decoder = p.FrameDecoder(1 << 24)
        self.open = False
        self.send(self.hello())

    def send(self, *frames: p.Frame) -> None:
        for frame in frames:
            self.send_bytes(p.encode(frame))

    def send_bytes(self, data: bytes) -> None:
        assert self.link is not None
        self.link.to_broker += data
        self.link.client_wrote = True

    def hang_up(self, after_s: float = 0.0) -> None:
        if self.link is not None:
            self.link.client_closed = True
        self.link = self.side = None
        self.open = False
        self.reconnect_at_s = self.sim.clock.now_s + after_s

    def read(self, limit: int) -> list[p.Frame | p.UnknownFrame]:
        """Up to `limit` bytes of what the broker sent; at its end, the connection is over."""
        link = self.link
        assert link is not None
        data = link.take(link.to_client, limit)
        if data:
            link.taken_s = self.sim.clock.now_s
            if self.side is not None:
                self.side.took_bytes()
        frames = self.decoder.feed(data)
        if self.decoder.error is not None:
            fail(f"{self.name}: the broker sent bytes that do not parse: {self.decoder.error}")
        return frames

    def ended(self) -> bool:
        """The broker closed the connection and every byte of it has been read."""
        return self.link is not None and self.link.broker_closed and not self.link.to_client

    def on_closed(self) -> None:
        """The broker closed the connection (the frames are its last)."""

    def turn(self) -> None:
        if self.link is None:
            if self.sim.clock.now_s >= self.reconnect_at_s:
                self.connect()
            return
        for frame in self.read(self.read_limit()):
            if type(frame) is p.Welcome:
                self.open = True
                self.welcomed(frame)
            elif self.link is not None:
                self.handle(frame)
        if self.ended():
            self.on_closed()
            self.hang_up(self.rng.uniform(0.0, 0.05))
        elif self.link is not None and self.open:
            self.act()

    def read_limit(self) -> int:
        return self.rng.choice((64, 700, 4096, 65536))

    def welcomed(self, welcome: p.Welcome) -> None:
        pass

    def handle(self, frame: p.Frame | p.UnknownFrame) -> None:
        if type(frame) is p.Error and frame.code not in ("shutdown",) and \
                frame.code not in self.expected_errors():
            fail(f"{self.name}: unexpected ERROR {frame.code}: {frame.message}")

    def expected_errors(self) -> tuple[str, ...]:
        return ("slow_consumer", "busy", "too_many_connections")

    def refused_login(self) -> tuple[str, ...]:
        """With users, a HELLO that names none is refused `auth`."""
        return ("auth",) if self.sim.scenario.users else ()

    def act(self) -> None:
        pass


class Publisher(Client):
    """Publishes runs with confirmations; at most MAX_UNCONFIRMED runs unconfirmed."""

    MAX_UNCONFIRMED = 4

    def __init__(self, sim: Simulation, name: str) -> None:
        super().__init__(sim, name)
        self.user = "pub"
        self.made = 0
        self.unconfirmed: dict[int, tuple[str, list[bytes]]] = {}
        self.next_confirm = 1

    def payload(self, topic: str) -> bytes:
        self.made += 1
        head = f"{topic}|{self.name}|{self.made}|".encode()
        return head + b"x" * self.rng.randrange(0, MAX_PAYLOAD_BYTES - len(head))

    def act(self) -> None:
        if self.sim.quiet or len(self.unconfirmed) >= self.MAX_UNCONFIRMED:
            return
        if self.rng.random() < 0.5:
            topic = f"t.{self.rng.randrange(TOPICS)}"
            payloads = [self.payload(topic) for _ in range(self.rng.choice((1, 1, 2, 5, 12)))]
            confirm = self.next_confirm
            self.next_confirm += 1
            self.unconfirmed[confirm] = (topic, payloads)
            for payload in payloads:
                self.sim.published_at[payload] = self.sim.clock.now_s
            self.send(p.Publish(topic, payloads, confirm))

    def handle(self, frame: p.Frame | p.UnknownFrame) -> None:
        if type(frame) is p.PublishAck:
            topic, payloads = self.unconfirmed.pop(frame.confirm_id)
            if frame.message_count != len(payloads):
                fail(f"{self.name}: PUBACK of {frame.message_count} for {len(payloads)}")
            for i, payload in enumerate(payloads):
                self.sim.confirmed(topic, frame.first_seq + i, payload)
        elif type(frame) is p.Error and frame.ref in self.unconfirmed and not frame.fatal:
            if frame.code != "memory_full":
                fail(f"{self.name}: PUB refused: {frame.code}: {frame.message}")
            del self.unconfirmed[frame.ref]
        else:
            super().handle(frame)

    def on_closed(self) -> None:
        self.unconfirmed.clear()  # in doubt: stored or not, never confirmed


class Subscriber(Client):
    """Reads `pattern` and checks every delivery against what it already had.

    kind: "fast" reads everything and acks at once; "slow" reads little and acks
    late; "stalled" stops reading for a while (longer than --write-timeout, so
    the broker cuts it off) and comes back by its durable; "hopper" hangs up now
    and then and resumes one topic at the seq it expects; "durable" acks some,
    hangs up, and resumes by name.
    """

    def __init__(self, sim: Simulation, name: str, kind: str) -> None:
        super().__init__(sim, name)
        self.kind = kind
        # A hopper reads one topic, which may be the denied one: it is never picky.
        self.user = "picky" if kind in ("slow", "durable") else "reader"
        self.durable = name if kind in ("durable", "stalled") else None
        self.pattern = f"t.{sim.rng.randrange(TOPICS)}" if kind == "hopper" else "t.>"
        self.window = {"fast": 1000, "slow": 8, "stalled": 32, "hopper": 16,
                       "durable": 24}[kind]
        self.expected: dict[str, int] = {}  # next seq wanted, per topic
        self.acked_to: dict[str, int] = {}  # first seq not acknowledged, per topic
        self.unacked: list[tuple[str, int, int]] = []  # delivered: (topic, end seq, count)
        self.subscribed = False
        self.continuous = True  # connected since before anything was published
        self.resume_from: dict[str, int] = {}
        self.stalled_until_s = 0.0
        self.sid = 0

    def welcomed(self, welcome: p.Welcome) -> None:
        """Subscribe: a hopper on from the seq it expects next (one topic); a durable where
        its ack marks are; the others from seq 1 again (what was evicted is a GAP)."""
        self.sid += 1
        start = self.expected.get(self.pattern, 1) if self.kind == "hopper" else 1
        if self.kind != "hopper":
            self.expected = {}
        self.resume_from = dict(self.acked_to)
        self.unacked.clear()
        self.send(p.Subscribe(self.sid, self.pattern, start, self.durable, self.window))

    def on_closed(self) -> None:
        self.subscribed = False
        self.continuous = False

    def read_limit(self) -> int:
        if self.sim.quiet or self.kind == "fast":
            return 1 << 20
        if self.kind == "stalled" and self.sim.clock.now_s < self.stalled_until_s:
            return 0
        if self.kind == "slow":
            return self.rng.choice((0, 0, 100, 500))
        return super().read_limit()

    def handle(self, frame: p.Frame | p.UnknownFrame) -> None:
        if type(frame) is p.Subscribed:
            self.subscribed = True
        elif type(frame) is p.Error and frame.code == "durable_in_use":
            self.hang_up(0.02)  # its last connection is not closed yet: try again shortly
        elif type(frame) is p.Deliver:
            self.delivered(frame)
        elif type(frame) is p.Gap:
            self.gap(frame)
        else:
            super().handle(frame)

    def _check_start(self, topic: str, seq: int, what: str) -> None:
        """The first delivery or GAP of `topic` on this connection: where may it start?"""
        if self.durable and topic not in self.expected:
            mark = self.resume_from.get(topic, 1)
            if seq > mark:
                fail(f"{self.name}: durable resumed {topic} at {seq} ({what}), after its "
                     f"ack mark {mark}: skipped what it never acknowledged")
            self.expected[topic] = seq  # at or before the mark: a redelivery is allowed
        want = self.expected.setdefault(topic, 1)
        if seq != want:
            fail(f"{self.name}: {what} of {topic} at seq {seq}, expected {want}: "
                 f"{'skipped' if seq > want else 'sent twice'} {abs(seq - want)}")

    def denied(self, topic: str) -> bool:
        return self.sim.scenario.users and self.user == "picky" and topic == DENIED_TOPIC

    def delivered(self, run: p.Deliver) -> None:
        if run.sid != self.sid:
            return  # for a subscription of an earlier connection: not ours now
        if self.denied(run.topic):
            fail(f"{self.name}: {run.topic} delivered to user {self.user!r}, which may not "
                 "read it")
        self._check_start(run.topic, run.first_seq, "delivery")
        now_us = self.sim.clock.wall_us()
        for i, payload in enumerate(run.payloads):
            self.sim.check_payload(run.topic, run.first_seq + i, payload, self.name)
            if self.kind == "fast" and self.continuous and not self.sim.quiet:
                age_s = (now_us - run.timestamps_us[i]) / 1e6  # since it was stored
                if age_s > FAIR_BOUND_S:
                    fail(f"{self.name}: a message reached this fast subscriber {age_s:.3f} s "
                         f"after it was stored (bound {FAIR_BOUND_S} s)")
        end = run.first_seq + len(run.payloads)
        self.expected[run.topic] = end
        self.unacked.append((run.topic, end, len(run.payloads)))
        if sum(n for _, _, n in self.unacked) > self.window:
            fail(f"{self.name}: {sum(n for _, _, n in self.unacked)} messages unacknowledged, "
                 f"over its window of {self.window}")
        self.maybe_ack()

    def gap(self, gap: p.Gap) -> None:
        if gap.sid != self.sid:
            return
        self._check_start(gap.topic, gap.first_seq, "GAP")
        if gap.missed < 1:
            fail(f"{self.name}: GAP of {gap.missed} messages")
        if self.sim.scenario.on_full == "block" and self.continuous and \
                not gap.reason.startswith("unreadable"):
            fail(f"{self.name}: under --on-full block, a subscriber connected throughout "
                 f"missed {gap.missed} of {gap.topic}: {gap.reason}")
        self.expected[gap.topic] = gap.first_seq + gap.missed
        if not gap.reason.startswith("unreadable"):
            # The broker's ack mark passes a GAP with the next ACK after it (Delivery).
            self.unacked.append((gap.topic, gap.first_seq + gap.missed, 0))
        self.sim.gaps += 1
        self.sim.missed += gap.missed

    def maybe_ack(self) -> None:
        if not any(n for _, _, n in self.unacked):
            return
        if self.kind in ("fast", "hopper") or self.sim.quiet or self.rng.random() < 0.3:
            count = sum(n for _, _, n in self.unacked) if self.kind != "slow" else \
                next(n for _, _, n in self.unacked if n)
            self.ack(count)

    def ack(self, count: int) -> None:
        """ACK the oldest `count` delivered, and move this side's ack marks as the broker
        moves its own (Cursors.acknowledge)."""
        if self.link is None:
            return  # the connection is gone: its deliveries come again
        self.send(p.Ack(self.sid, count))
        while count:
            topic, end, n = self.unacked[0]
            taken = min(n, count)
            self.acked_to[topic] = max(self.acked_to.get(topic, 1), end - n + taken)
            if taken == n:
                self.unacked.pop(0)
            else:
                self.unacked[0] = (topic, end, n - taken)
            count -= taken

    def act(self) -> None:
        if self.sim.quiet:
            self.maybe_ack()
            return
        now = self.sim.clock.now_s
        if self.kind == "stalled" and now >= self.stalled_until_s and self.rng.random() < 0.004:
            self.stalled_until_s = now + self.rng.uniform(0.2, 1.2)
        if self.kind in ("hopper", "durable") and self.subscribed and self.rng.random() < 0.006:
            if self.rng.random() < 0.5:  # vanishes mid-frame
                self.send_bytes(p.encode(p.Ack(self.sid, 1))[:self.rng.randrange(1, 6)])
            self.on_closed()
            self.hang_up(self.rng.uniform(0.0, 0.1))
        elif self.kind == "slow":
            self.maybe_ack()

    def caught_up(self, topics: dict[str, TopicStorage]) -> list[str]:
        """At the end: what this reader still lacks, per topic it reads."""
        lacking = []
        for name, topic in topics.items():
            if pattern_matches(self.pattern, name) and self.position(name) != topic.next_seq \
                    and not self.denied(name):
                lacking.append(f"{self.name} ({self.kind}) has {name} up to "
                               f"{self.position(name)}, the topic up to {topic.next_seq}")
        return lacking

    def position(self, topic: str) -> int:
        """The next seq this reader wants: a durable that resumed where nothing was left
        to send has heard nothing of the topic on this connection."""
        return self.expected.get(topic) or (self.resume_from.get(topic, 1) if self.durable
                                            else 1)


class NeverReads(Client):
    """Subscribes to everything and never reads: the broker must cut it off."""

    def __init__(self, sim: Simulation, name: str) -> None:
        super().__init__(sim, name)
        self.user = "reader"

    def read_limit(self) -> int:
        return 65536 if not self.open else 0

    def welcomed(self, welcome: p.Welcome) -> None:
        self.send(p.Subscribe(1, "t.>", "earliest", None, 100_000))


class Vandal(Client):
    """Breaks the protocol in one of several ways, then comes back and does it again."""

    def connect(self) -> None:
        self.link, self.side = self.sim.connect()
        self.decoder = p.FrameDecoder(1 << 24)
        self.open = False
        trick = self.rng.randrange(5)
        link = self.link
        if trick == 0:
            link.to_broker += self.rng.randbytes(self.rng.randrange(1, 300))
        elif trick == 1:
            link.to_broker += p.encode(self.hello()) + b"\x00\x00\x00\x09\x94\x03"
            link.client_closed = self.rng.random() < 0.5  # vanishes mid-frame, or stays
        elif trick == 2:
            pass  # says nothing: the handshake timeout must end it
        elif trick == 3:
            link.to_broker += (1 << 20).to_bytes(4, "big") + b"\x95" * 100  # too big
        else:
            link.to_broker += p.encode(self.hello()) + b"\x00\x00\x00\x03\xc1\xc1\xc1"
        link.client_wrote = bool(link.to_broker)

    def expected_errors(self) -> tuple[str, ...]:
        return ("handshake", "handshake_timeout", "frame_too_large", "bad_frame", "busy",
                "too_many_connections", "slow_consumer", "version", *self.refused_login())


class Lurker(Client):
    """Connects and says nothing, and again as soon as it is dropped: the idle sockets that
    once kept every handshake slot (issue 24); the broker must drop the oldest of them."""

    def connect(self) -> None:
        self.link, self.side = self.sim.connect()
        self.decoder = p.FrameDecoder(1 << 24)
        self.open = False

    def expected_errors(self) -> tuple[str, ...]:
        return ("busy", "handshake_timeout", "too_many_connections")


class Intruder(Client):
    """With users: logs in as a user that may write and read only x.* (at most
    INTRUDER_TOPICS of them) and tries t.* anyway, and more x.* topics than its quota."""

    def __init__(self, sim: Simulation, name: str) -> None:
        super().__init__(sim, name)
        self.user = "intruder"
        self.forbidden: set[int] = set()  # confirm ids of its PUBs to t.*
        self.next_confirm = 1

    def welcomed(self, welcome: p.Welcome) -> None:
        self.send(p.Subscribe(1, "t.>", "earliest", None, 100))

    def act(self) -> None:
        if self.sim.quiet or self.rng.random() < 0.8:
            return
        confirm, self.next_confirm = self.next_confirm, self.next_confirm + 1
        if self.rng.random() < 0.5:
            topic = f"t.{self.rng.randrange(TOPICS)}"
            self.forbidden.add(confirm)
        else:
            topic = f"x.{self.rng.randrange(INTRUDER_TOPICS * 3)}"
        # Never recorded as published: were it ever delivered, check_payload would say so.
        self.send(p.Publish(topic, [f"{topic}|{self.name}|{confirm}|".encode()], confirm))

    def handle(self, frame: p.Frame | p.UnknownFrame) -> None:
        if type(frame) is p.PublishAck and frame.confirm_id in self.forbidden:
            fail(f"{self.name}: its PUB to a topic it may not write was stored")
        elif type(frame) is p.Error and frame.ref == 1 and frame.code == "permission_denied":
            pass  # its SUB to t.>: refused, as it must be
        elif type(frame) is p.Error and frame.ref in self.forbidden and \
                frame.code != "permission_denied":
            fail(f"{self.name}: its PUB to t.* was refused {frame.code}, not for permission")
        elif type(frame) is p.Deliver:
            fail(f"{self.name}: {frame.topic} was delivered to a user that may not read it")
        elif not (type(frame) is p.Error and frame.code in (
                "permission_denied", "too_many_topics", "memory_full")):
            super().handle(frame)


# --- the simulation ----------------------------------------------------------------------


@dataclass
class Simulation:
    scenario: Scenario
    rng: random.Random = field(init=False)
    clock: VirtualClock = field(default_factory=VirtualClock)
    files: SimFiles = field(default_factory=SimFiles)
    sides: list[BrokerSide] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)
    truth: dict[str, dict[int, bytes]] = field(default_factory=dict)  # from PUBACKs
    seen_at: dict[bytes, tuple[str, int]] = field(default_factory=dict)
    published_at: dict[bytes, float] = field(default_factory=dict)
    quiet: bool = True  # setting up, and the end: no publishing, no stalls, everyone reads
    gaps: int = 0
    missed: int = 0
    restarts: int = 0
    trace: int = 0  # a CRC of every byte the broker sent: equal runs have equal traces
    steps_run: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.scenario.seed)
        self.config = config_for(self.scenario)
        self.core = self._start_core()
        self._next_side = 1
        self._synced_s = 0.0

    def _start_core(self) -> BrokerCore:
        core = BrokerCore(self.config, self.clock, self.files)
        core.on_room_freed = self._room_freed
        core.load()
        core.state = "accepting"
        return core

    def drop(self, victim: Handshaking) -> None:
        """As Broker.drop_handshake: a fatal busy, and closed at once (the simulation has
        no TLS: every one in the table is a session)."""
        for side in self.sides:
            if side.session is victim and not side.closed:
                self.core.counters["dropped_handshakes"] += 1
                side.session.fail("busy", "dropped to make room")
                side.close()

    def _room_freed(self, topic: TopicStorage) -> None:
        for side in self.sides:
            if side.wait is Wait.ROOM and side.session.blocked_on is topic:
                side.room_freed = True

    def connect(self) -> tuple[Link, BrokerSide | None]:
        link = Link()
        refusal = self.core.refusal()
        if refusal is not None:
            self.core.counters["refused_connections"] += 1
            link.to_client += p.encode(refusal)
            link.broker_closed = True
            return link, None
        side = BrokerSide(self, link, self._next_side)
        self._next_side += 1
        self.sides.append(side)
        return link, side

    def confirmed(self, topic: str, seq: int, payload: bytes) -> None:
        known = self.truth.setdefault(topic, {}).setdefault(seq, payload)
        if known != payload:
            fail(f"two messages confirmed at {topic} seq {seq}")
        self._check_unique(topic, seq, payload)

    def check_payload(self, topic: str, seq: int, payload: bytes, reader: str) -> None:
        if not payload.startswith(f"{topic}|".encode()):
            fail(f"{reader}: {topic} seq {seq} carries a message published to another topic "
                 f"or never published: {payload[:40]!r}")
        if payload not in self.published_at:
            fail(f"{reader}: {topic} seq {seq} was never published: {payload[:40]!r}")
        known = self.truth.get(topic, {}).get(seq)
        if known is not None and known != payload:
            fail(f"{reader}: {topic} seq {seq} is not the message its PUBACK named")
        self._check_unique(topic, seq, payload)

    def _check_unique(self, topic: str, seq: int, payload: bytes) -> None:
        where = self.seen_at.setdefault(payload, (topic, seq))
        if where != (topic, seq):
            fail(f"one message stored twice: {topic} seq {seq} and {where[1]}")

    # --- running -------------------------------------------------------------------

    def populate(self) -> None:
        rng = self.rng
        kinds = ["fast", "fast", "slow", "stalled", "hopper", "durable"]
        for i, kind in enumerate(kinds):
            self.clients.append(Subscriber(self, f"sub{i}-{kind}", kind))
        for i in range(rng.randrange(1, 4)):
            self.clients.append(Publisher(self, f"pub{i}"))
        if rng.random() < 0.5:
            self.clients.append(NeverReads(self, "never-reads"))
        for i in range(rng.randrange(0, 3)):
            self.clients.append(Vandal(self, f"vandal{i}"))
        for i in range(rng.choice((0, 0, 3, 6))):
            self.clients.append(Lurker(self, f"lurker{i}"))
        if self.scenario.users:
            self.clients.append(Intruder(self, "intruder"))
        for client in self.clients:
            if not isinstance(client, Publisher):
                client.connect()
        # Subscribers are in before anything is published, so each knows where it starts.
        for _ in range(100):
            self.step(publishers=False)
            if all(c.subscribed for c in self.clients if isinstance(c, Subscriber)):
                break
        else:
            fail("subscribers did not get their SUBACKs")
        self.quiet = False

    def step(self, publishers: bool = True) -> None:
        """One round: every actor (each connection's broker side, each client) takes one
        turn, in a seeded order, as asyncio's loop gives each ready task a turn."""
        actors: list[Callable[[], None]] = [s.turn for s in self.sides if not s.closed]
        actors += [c.turn for c in self.clients if publishers or not isinstance(c, Publisher)]
        self.rng.shuffle(actors)
        for turn in actors:
            turn()
        self.clock.advance(self.rng.uniform(0.0, STEP_MAX_S))
        self._timers()
        self.sides = [s for s in self.sides if not s.closed]
        self.check_step()

    def _timers(self) -> None:
        """What broker/server/server.py's timer tasks do: fsync now and then, housekeeping."""
        if self.clock.now_s - self._synced_s < SYNC_INTERVAL_S:
            return
        self._synced_s = self.clock.now_s
        core = self.core
        sync_topics(core.topics_to_sync())
        if core.durables.changed:
            core.save_durables()
        core.expire()

    def crash(self) -> None:
        """The broker process dies: connections drop; a new one opens the same --data-dir."""
        for side in self.sides:
            side.closed = True
            side.link.broker_closed = True
        self.sides = []
        epoch = self.core.epoch
        self.files = self.files.crashed(self.rng, power_loss=False)
        self.core = self._start_core()
        self.restarts += 1
        if self.core.epoch != epoch:
            fail(f"the epoch changed across a restart: {epoch} -> {self.core.epoch}")
        for client in self.clients:
            if isinstance(client, Subscriber):
                client.continuous = False

    def run(self) -> None:
        self.populate()
        for _ in range(self.scenario.steps):
            self.step()
            if self.scenario.disk and self.rng.random() < 0.002:
                self.crash()
        self.quiet = True
        for client in self.clients:  # the end: stalls and vandals stop, everyone reads
            if isinstance(client, (Vandal, NeverReads, Lurker, Intruder)):
                client.hang_up(after_s=1e9)
        for _ in range(5_000):
            self.step()
            if self._settled():
                break
        self.check_end()

    def _settled(self) -> bool:
        subscribers = [c for c in self.clients if isinstance(c, Subscriber)]
        return all(c.subscribed and not c.caught_up(self.core.topics) for c in subscribers) \
            and not any(isinstance(c, Publisher) and c.unconfirmed for c in self.clients)

    # --- the invariants ----------------------------------------------------------------

    def check_step(self) -> None:
        self.steps_run += 1
        config, core, now = self.config, self.core, self.clock.now_s
        if not self.scenario.disk and core.budget.used_bytes > config.max_memory_bytes:
            fail(f"retained {core.budget.used_bytes:,} bytes over --max-memory "
                 f"{config.max_memory_bytes:,}")
        if self.scenario.users:
            # Topics loaded from --data-dir belong to no user (docs/security.md): after
            # each restart the intruder may make its quota again.
            held = sum(1 for name in core.topics if name.startswith("x."))
            if held > INTRUDER_TOPICS * (self.restarts + 1):
                fail(f"the intruder holds {held} topics, over its quota of {INTRUDER_TOPICS} "
                     f"(with {self.restarts} restarts)")
        if len(core.handshaking) > config.max_handshakes:
            fail(f"{len(core.handshaking)} connections in their handshake, over "
                 f"--max-handshakes {config.max_handshakes}")
        for side in self.sides:
            subs = side.session.subscriptions.values()
            # A pass of the reader (answers) and one of the sender (a run per dirty topic).
            one_pass = (sum(min(s.window, config.max_run_messages * TOPICS) for s in subs)
                        * (MAX_PAYLOAD_BYTES + 64) + FRAMES_PER_PASS * 64 + config.max_frame_bytes)
            queued = len(side.link.to_client)
            if queued > config.write_high_water_bytes + one_pass:
                fail(f"{queued:,} bytes queued to connection {side.session.id}: over the "
                     f"high-water mark plus one pass ({one_pass:,})")
            link = side.link
            if queued <= config.write_high_water_bytes:
                link.over_from_s = None
            elif link.over_from_s is None:
                link.over_from_s = now
            elif now - max(link.over_from_s, link.taken_s) > \
                    config.write_stall_timeout_s + 2 * STEP_MAX_S:
                fail(f"connection {side.session.id} took no bytes for "
                     f"{now - max(link.over_from_s, link.taken_s):.3f} s with its output over "
                     "the high-water mark, and was not cut off")
            if side.session.state is State.HANDSHAKE and \
                    now - side.opened_s > config.handshake_timeout_s + 1.0:
                fail(f"connection {side.session.id} still in its handshake after "
                     f"{now - side.opened_s:.3f} s")

    def check_end(self) -> None:
        lacking = [line for c in self.clients if isinstance(c, Subscriber)
                   for line in c.caught_up(self.core.topics)]
        if lacking:
            fail("readers did not get everything by the end: " + "; ".join(lacking[:5]))
        for topic, seqs in self.truth.items():
            log = self.core.topics.get(topic)
            if log is None or (seqs and max(seqs) >= log.next_seq):
                fail(f"confirmed messages of {topic} are not in its log")


def run_scenario(scenario: Scenario) -> Simulation:
    """Run one seed; raises Violation (with the replay label) if an invariant broke."""
    sim = Simulation(scenario)
    try:
        sim.run()
    except Violation as exc:
        raise Violation(f"{exc}\n  at step {sim.steps_run}, virtual time "
                        f"{sim.clock.now_s - 1000:.3f} s\n  replay it: python -m "
                        f"tests.sim.soak --replay '{scenario.label}'") from None
    return sim


def scenarios(first_seed: int, count: int, steps: int = 1000) -> list[Scenario]:
    return [replace(Scenario.of(seed), steps=steps)
            for seed in range(first_seed, first_seed + count)]
