"""Fan-out, sans-I/O: what one connection's subscriptions are owed, and the frames that pay it.

A publish marks (subscription, topic) pairs "dirty"; `send_pass()` reads each
dirty pair's log from its cursor, as far as the subscription's credit and the
run caps allow, and queues MSG / MSGM frames (or a GAP, when the log evicted
past the cursor) on the connection's sans-I/O core. An ACK (`acked`) moves the
ack marks, returns credit and wakes what waited for it. No socket, no clock, no
task: broker/server/session.py calls it, broker/server/server.py moves its bytes, and
tests/unit/test_delivery.py drives it with frames alone.

What it promises (docs/protocol.md, "Delivery"): per topic, messages go out in
seq order, each once per subscription; at most `window` are unacknowledged; a
subscriber the log left behind gets one GAP with the exact count before the
next delivery of that topic; a subscriber that cannot keep up moves only its
own cursor.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from broker.limits import LogThrottle
from broker.server.config import BrokerConfig
from broker.server.routing import echo
from broker.storage.segments import UnreadableRangeError
from broker.storage.storage import TopicStorage as Topic
from broker.users.accounts import Account
from broker.wire import protocol as p
from broker.wire.broker_connection import BrokerConnection

# log_once(key, message, *args): a line per key per connection (broker/server/session.py).
LogOnce = Callable[..., None]


class Cursors:
    """The broker's side of one subscription of one connection: a cursor and an ack mark
    per matching topic (the client's side is broker/subscription.py)."""

    __slots__ = ("acked", "cursors", "delivered", "durable", "gaps", "inflight", "missed",
                 "owner", "pattern", "sid", "stalled", "unacked", "window")

    def __init__(self, owner: Delivery, sid: int, pattern: str,
                 window: int, durable: str | None) -> None:
        self.owner = owner
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
        self.stalled: dict[Topic, None] = {}  # an ordered set: runs are deterministic
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


class Delivery:
    """One connection's subscriptions: which owe what, and the frames that pay it.

    `describe` names the connection in messages; `wake` tells the I/O loop that
    something became dirty (an asyncio Event's `set` in broker/server/server.py).
    """

    def __init__(self, out: BrokerConnection[Cursors], config: BrokerConfig,
                 totals: dict[str, int], log_throttle: LogThrottle, log_once: LogOnce,
                 describe: Callable[[], str], wake: Callable[[], None]) -> None:
        self.out = out
        self.config = config
        self.totals = totals
        self.log_throttle = log_throttle
        self.log_once = log_once
        self.describe = describe
        self.wake = wake
        self.dirty: dict[tuple[Cursors, Topic], None] = {}  # an ordered set
        self.followed = 0  # (subscription, topic) pairs: --max-followed-topics
        self.account: Account | None = None  # whose subscriptions these are, once logged in
        self._runs: dict[Cursors, list[bytes]] = {}  # this pass's runs, per subscription

    def new_subscription(self, sid: int, pattern: str, window: int,
                         durable: str | None) -> Cursors:
        return Cursors(self, sid, pattern, window, durable)

    def mark(self, sub: Cursors, topic: Topic) -> None:
        """`topic` has something for `sub` (a publish, an ack, an eviction to report)."""
        dirty = self.dirty
        if not dirty:
            self.wake()  # once per batch of marks: the sender takes them all in one pass
        dirty[sub, topic] = None

    def subscribed(self, sub: Cursors) -> None:
        for topic in sub.cursors:
            self.dirty[sub, topic] = None
        self.wake()

    def acked(self, sub: Cursors, count: int) -> dict[Topic, None]:
        """The core checked the count and returned the credit: move the ack marks, wake
        what waited for credit; the topics whose ack mark moved."""
        moved = sub.acknowledge(count)
        if sub.stalled:
            for topic in sub.stalled:
                if topic in sub.cursors:  # not forgotten meanwhile
                    self.dirty[sub, topic] = None
            sub.stalled.clear()
            self.wake()
        return moved

    def send_pass(self) -> None:
        """One pass over what is dirty now: runs and GAPs queued on the core. What a
        pass leaves dirty (credit left, more in the log) is for the next pass, so the
        I/O loop can let the socket and the other connections in between."""
        dirty, self.dirty = self.dirty, {}
        subscriptions = self.out.subscriptions
        for sub, topic in dirty:
            if subscriptions.get(sub.sid) is sub:  # not unsubscribed since
                self._deliver(sub, topic)
        if self._runs:
            self._emit_runs()

    def _deliver(self, sub: Cursors, topic: Topic) -> None:
        """Queue the next run of `topic` for `sub`, or a GAP if it fell behind retention."""
        credit = sub.window - sub.inflight
        if credit <= 0:
            sub.stalled[topic] = None  # the ack that returns credit marks it dirty again
            return
        cursor = sub.cursors[topic]
        first = topic.first_seq
        if cursor < first:
            # Reported only now that the subscriber can take messages again,
            # so a long stall becomes one notice with the whole count.
            self._gap(sub, topic, cursor, first - cursor)
            cursor = sub.cursors[topic] = first
            # The ack mark passes the GAP when what comes after it is acknowledged: a
            # durable whose client never read the GAP hears of it again when it resumes.
            sub.unacked.append([topic, first, 0])
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
        if self.out.runs_per_frame:
            self._runs.setdefault(sub, []).append(tail)  # one frame per subscription
        else:
            self.out.send_encoded(p.encode_deliver(sub.sid, tail))
        cursor += count
        sub.cursors[topic] = cursor
        sub.inflight += count
        sub.delivered += count
        self.totals["delivered"] += count
        sub.unacked.append([topic, cursor, count])
        if cursor < topic.next_seq:
            if sub.inflight < sub.window:
                self.dirty[sub, topic] = None
            else:
                sub.stalled[topic] = None

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
            self.out.send_encoded(p.encode_deliver(sid, tails[0]))
        else:
            self.out.send_encoded(p.encode_deliver_runs(sid, tails))

    def _unreadable(self, sub: Cursors, topic: Topic, damage: UnreadableRangeError) -> None:
        """Records on disk that cannot be served (damaged, files gone): a GAP that says so,
        then on from the first readable one, as after an eviction."""
        count = damage.end - damage.first
        self.totals["unreadable"] += count
        self.log_throttle.log(logging.ERROR, f"unreadable:{topic.name}", "%s", damage)
        self._gap(sub, topic, damage.first, count, f"unreadable: {damage.reason}")
        sub.cursors[topic] = damage.end  # its ack mark stays: a durable hears of it again
        self.dirty[sub, topic] = None

    def _gap(self, sub: Cursors, topic: Topic, first_missed: int, count: int,
             reason: str | None = None) -> None:
        sub.gaps += 1
        sub.missed += count
        self.totals["gaps"] += 1
        self.totals["missed"] += count
        config = self.config
        reason = reason or (f"evicted: fell behind retention of {echo(topic.name)} "
                            f"({config.retention.max_messages:,} messages / "
                            f"{config.retention.max_bytes:,} bytes per topic, "
                            f"{config.max_memory_bytes:,} bytes in all)")
        self.log_once("gap", "connection %s sid %d missed %d messages of %s from seq %d: %s",
                      self.describe(), sub.sid, count, echo(topic.name), first_missed, reason)
        self.out.send(p.Gap(sub.sid, topic.name, first_missed, count, reason))

    def totals_of_subscriptions(self) -> tuple[int, int, int]:
        """Delivered, gaps and missed, over this connection's current subscriptions."""
        subs = self.out.subscriptions.values()
        return (sum(s.delivered for s in subs), sum(s.gaps for s in subs),
                sum(s.missed for s in subs))
