"""A subscription on a JetStream stream: a push consumer, read in order, acknowledged in batches.

Each subscription is one JetStream consumer (durable when asked for), filtered
on the pattern, with `ack all` and `max_ack_pending` = the window: the same
flow control as the embedded broker, where an acknowledgement of a message
covers every one before it.

Order and exactly once. A delivery carries, in its reply subject, the stream
seq and the consumer's own delivery count. A delivery count that jumps means
deliveries were lost in transit (a dropped connection, a failed node); since
`ack all` must never cover a lost message, the subscription then *repositions*:
it makes its consumer again from the first stream seq it has not received (a
durable: from the last it acknowledged) and skips what it already has. An
idle heartbeat that goes quiet, or that reports deliveries we never saw,
repositions too. So a consumer sees each message once, in stream order.

Losses. The publisher's `Nats-Msg-Id` (broker/jetstream/publisher.py) counts
each producer's messages per topic: a count that jumps is a loss (retention
discarded messages before we read them), reported as a `Gap` with its size.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import errors as js_errors
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, SequenceInfo

from broker.errors import BrokerError, ConfigError, SlipstreamError
from broker.jetstream.answers import Outage
from broker.jetstream.connection import header_value, msg_id_of
from broker.jetstream.stream import epoch_of
from broker.subscription import UNKNOWN_COUNT, Batch, Message, Start, Subscription
from broker.tasks import stop_task
from broker.wire.protocol import Gap

if TYPE_CHECKING:
    from broker.jetstream.client import JetStreamClient

log = logging.getLogger("slipstream.client")

HEARTBEAT_S = 2.0  # JetStream says "still here" this often when it has nothing to send
QUIET_LIMIT_S = 3 * HEARTBEAT_S  # silence longer than this: the consumer is gone or cut off
ACK_WAIT_S = 30.0  # an unacknowledged delivery is sent again after this
INBOX_PREFIX = "_INBOX_"  # + the user: its replies and deliveries (see client.py)
EPHEMERAL_IDLE_S = 60.0  # the server forgets a non-durable consumer nobody reads this long
MAX_PRODUCER_MARKS = 100_000  # (producer, topic) counters kept for loss detection
QUEUE_LIMIT_WINDOWS = 2  # deliveries held unread, in windows (see _drop_oldest)


def durable_name(durable: str) -> str:
    """A JetStream-safe consumer name: slipstream's durable names may hold '.', '>', ':'."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", durable)
    if safe == durable:
        return durable
    return f"{safe[:40]}-{hashlib.sha256(durable.encode()).hexdigest()[:10]}"


def deliver_policy(start: Start) -> tuple[DeliverPolicy, int | None]:
    if start == "new":
        return DeliverPolicy.NEW, None
    if start == "earliest":
        return DeliverPolicy.ALL, None
    return DeliverPolicy.BY_START_SEQUENCE, int(start)


class _Delivery:
    __slots__ = ("epoch", "msg_id", "payload", "seq", "timestamp_us", "topic")

    def __init__(self, topic: str, seq: int, timestamp_us: int, payload: bytes,
                 msg_id: str | None, epoch: int) -> None:
        self.topic = topic
        self.seq = seq
        self.timestamp_us = timestamp_us
        self.payload = payload
        self.msg_id = msg_id
        self.epoch = epoch


class JetStreamSubscription(Subscription):
    """The messages matching one pattern, from a JetStream consumer."""

    def __init__(self, client: JetStreamClient, pattern: str, start: Start,
                 durable: str | None, window: int, auto_ack: bool = True) -> None:
        super().__init__(pattern, start, durable, window, auto_ack)
        self.client = client
        # A user's durables are its own, as on the embedded broker.
        owner = f"{client.user}-" if client.user else ""
        self.consumer = durable_name(owner + durable) if durable else ""
        self._refused = asyncio.Event()  # nats-server refused our consumer CREATE
        self._creating = ""  # the name of the consumer being made, while it is
        self.repositioned = 0  # times the consumer was made again (see the module doc)
        self._queue: deque[_Delivery] = deque()
        self._queue_limit = QUEUE_LIMIT_WINDOWS * window  # then the oldest unread is dropped
        self._replies: dict[int, bytes] = {}  # stream seq -> reply subject, until acknowledged
        self._subjects: dict[bytes, str] = {}  # topic names decoded once, not per message
        self._awaiting: deque[int] = deque()  # stream seqs handed out, not yet acknowledged
        self._received_seq = 0  # highest stream seq received (queued or handed out)
        self._acked_seq = 0  # highest stream seq acknowledged
        self._next_delivery = 1  # the consumer's next delivery count
        self._first_received = 0  # the first stream seq this subscription received
        self._marks: dict[str, tuple[int, int]] = {}  # "producer.index" -> n, seq
        self._topics_seen: set[str] = set()
        self._last_heard = 0.0
        self._heard = False  # something arrived since the watchdog last looked
        self._nats_sub: NatsSubscription | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._outage = Outage()  # repositioning that keeps failing: said once, and its end
        self._repositioning = False
        self._ephemeral = ""  # the server's name for a non-durable consumer

    @property
    def current_generation(self) -> int:
        # Acknowledgements name stream seqs, never a connection: none goes stale.
        return self.client.generation

    def refused(self, subject: str) -> None:
        """nats-server refused a consumer CREATE (`subject`, which names the consumer):
        ours, if the name is the one being made."""
        prefix = f"$js.api.consumer.create.{self.client.spec.name}.{self._creating}.".lower()
        if self._creating and (subject.lower() + ".").startswith(prefix):
            self._refused.set()

    async def _unless_refused(self, creating: Awaitable[ConsumerInfo]) -> ConsumerInfo:
        """`creating`'s answer; BrokerError as soon as nats-server says the user may not
        (it never answers a request it refused: the request would time out)."""
        request = asyncio.ensure_future(creating)
        refusal = asyncio.ensure_future(self._refused.wait())
        try:
            await asyncio.wait({request, refusal}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in (request, refusal):
                if not waiting.done():
                    waiting.cancel()
            await asyncio.wait({request, refusal})
        if request.done() and not request.cancelled():
            return request.result()
        raise BrokerError("permission_denied", f"NATS refused a consumer for {self.pattern!r}: "
                          "the user may not subscribe to it (its permissions)")

    # --- starting and repositioning ----------------------------------------------------

    async def attach(self) -> None:
        """Attach to (or make) the consumer and start receiving."""
        if self.durable:
            info = await self._existing_durable()
            if info is not None:
                await self._resume_durable(info)
                self._start_watchdog()
                return
        policy, opt_seq = deliver_policy(self.start)
        await self._make_consumer(policy, opt_seq)
        self._start_watchdog()

    async def _resume_durable(self, info: ConsumerInfo) -> None:
        self._acked_seq = info.ack_floor.stream_seq if info.ack_floor else 0
        self._received_seq = self._acked_seq
        delivered = info.delivered or SequenceInfo(consumer_seq=0, stream_seq=0)
        if delivered.stream_seq <= self._acked_seq:
            await self._listen(info.config.deliver_subject or "", delivered.consumer_seq + 1)
            return
        # The last reader left deliveries unacknowledged (it was killed): JetStream would
        # send them again only after the ack wait, behind newer ones. Start the consumer
        # again right after what was acknowledged, so they come first and in order.
        await self._delete_consumer()
        if self._acked_seq:
            await self._make_consumer(DeliverPolicy.BY_START_SEQUENCE, self._acked_seq + 1)
        else:
            await self._make_consumer(info.config.deliver_policy or DeliverPolicy.ALL,
                                      info.config.opt_start_seq)

    async def _existing_durable(self) -> ConsumerInfo | None:
        try:
            info: ConsumerInfo = await self.client.js.consumer_info(self.client.spec.name,
                                                                    self.consumer)
        except js_errors.NotFoundError:
            return None
        have = info.config.filter_subject or ">"
        if have != self.pattern:
            raise ConfigError(f"durable {self.durable!r} exists on JetStream stream "
                              f"{self.client.spec.name!r} with pattern {have!r}, not "
                              f"{self.pattern!r}: use another durable name, or delete it with "
                              f"`nats consumer rm {self.client.spec.name} {self.consumer}`")
        if info.push_bound:
            raise SlipstreamError(f"durable {self.durable!r} is in use by another consumer "
                                  "right now; one reader per durable")
        return info

    async def _make_consumer(self, policy: DeliverPolicy, opt_seq: int | None) -> None:
        deliver_subject = self.client.nc.new_inbox()
        await self._listen(deliver_subject, next_delivery=1)
        # Named, so that nats-py puts the filter in the API subject
        # ($JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>): nats-server's permissions can
        # then say which patterns a user may read (`slipstream users --nats`).
        self._creating = self.consumer or f"eph-{secrets.token_hex(8)}"
        config = ConsumerConfig(
            name=self._creating,
            durable_name=self.consumer or None, deliver_subject=deliver_subject,
            deliver_policy=policy, opt_start_seq=opt_seq, ack_policy=AckPolicy.ALL,
            ack_wait=ACK_WAIT_S, max_ack_pending=self.window, idle_heartbeat=HEARTBEAT_S,
            filter_subject=None if self.pattern == ">" else self.pattern,
            inactive_threshold=None if self.consumer else EPHEMERAL_IDLE_S,
            description=f"slipstream {'durable ' + repr(self.durable) if self.durable else ''}"
                        f" {self.pattern!r} for {self.client.name}")
        try:
            info = await self._unless_refused(
                self.client.js.add_consumer(self.client.spec.name, config))
        except BaseException:
            self._repositioning = True  # nothing delivers to us: the watchdog tries again
            raise
        if not self.consumer:
            self._ephemeral = info.name

    async def _listen(self, deliver_subject: str, next_delivery: int) -> None:
        """Receive on `deliver_subject` (only): the consumer's next delivery count is
        `next_delivery`, and anything after a jump in it means a lost delivery."""
        await self._stop_listening()
        self._next_delivery = next_delivery
        self._repositioning = False
        self._last_heard = asyncio.get_running_loop().time()
        self._nats_sub = await self.client.nc.subscribe(deliver_subject)
        self.client.nc.route_directly(self._nats_sub, self._on_delivery)

    async def _delete_consumer(self) -> None:
        old = self.consumer or self._ephemeral
        if old:
            with contextlib.suppress(js_errors.NotFoundError):
                await self.client.js.delete_consumer(self.client.spec.name, old)

    def _start_watchdog(self) -> None:
        self._watchdog = asyncio.create_task(self._watch(), name=f"jetstream-{self.pattern}")

    async def _watch(self) -> None:
        """Reposition when deliveries went missing or the consumer went quiet."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(HEARTBEAT_S / 2)
            if self._heard:  # noted here, not per delivery: reading the clock costs
                self._heard = False
                self._last_heard = loop.time()
            quiet = loop.time() - self._last_heard > QUIET_LIMIT_S
            if (quiet or self._repositioning) and self.client.nc.is_connected:
                reason = ("no heartbeat for "
                          f"{QUIET_LIMIT_S:g} s" if quiet else "deliveries were lost in transit")
                try:
                    await self._reposition(reason)
                except (SlipstreamError, js_errors.Error, TimeoutError) as exc:
                    if self._outage.started(loop.time()):  # once: the retries are quiet
                        log.warning("subscription %r cannot read JetStream (%s: the stream "
                                    "may have no leader); trying again quietly", self.pattern,
                                    exc or type(exc).__name__)
                else:
                    lasted = self._outage.ended(loop.time())
                    if lasted is not None:
                        log.warning("subscription %r reads JetStream again after %.1f s",
                                    self.pattern, lasted)

    async def _reposition(self, reason: str) -> None:
        """Make the consumer again from the first message we do not have."""
        self._repositioning = True
        self.repositioned += 1
        info = await self.client.js.stream_info(self.client.spec.name)
        epoch = epoch_of(info)
        replaced = epoch != self.client.epoch
        if replaced:
            self._stream_replaced(epoch)
        await self._delete_consumer()
        # A durable resumes after what it acknowledged (what it still holds is skipped);
        # a plain subscription after what it received.
        if self.consumer:
            self._received_seq = max(self._received_seq, self._acked_seq)
            after = self._acked_seq or (self._first_received - 1 if self._first_received else 0)
        else:
            after = self._received_seq
        opt_seq: int | None = after + 1
        policy = DeliverPolicy.BY_START_SEQUENCE
        if replaced:
            policy, opt_seq = DeliverPolicy.ALL, None
        elif not after:  # nothing received yet: start where it was asked to
            policy, opt_seq = deliver_policy(self.start)
        await self._make_consumer(policy, opt_seq)
        log.info("subscription %r repositioned after seq %d: %s", self.pattern, after, reason)

    def _stream_replaced(self, epoch: int) -> None:
        """The stream was deleted and made again: its seqs start from 1 again."""
        log.warning("JetStream stream %r was made again (new epoch): reading it from its start",
                    self.client.spec.name)
        for topic in self._topics_seen:
            self._queue.append(_Delivery(topic, 0, 0, b"", None, 0))  # a gap marker
        self.client.epoch = epoch
        self._received_seq = self._acked_seq = self._first_received = 0
        self._replies.clear()
        self._awaiting.clear()
        self._marks.clear()
        self._ready.set()

    # --- receiving ---------------------------------------------------------------------

    def _on_delivery(self, subject: bytes, reply: bytes, data: bytes,
                     headers: bytes | None) -> None:
        # The hot path of a JetStream reader: bytes are parsed as bytes, the reply
        # subject is decoded only for the one delivery an ACK names, the topic once.
        self._heard = True
        if not reply.startswith(b"$JS.ACK."):
            self._on_status(headers)
            return
        tokens = reply.split(b".")
        base = 4 if len(tokens) == 9 else 6  # the newer form adds domain and account hash
        seq, delivery = int(tokens[base + 1]), int(tokens[base + 2])
        if self._repositioning:
            return
        if delivery > self._next_delivery:
            self._repositioning = True  # the watchdog makes the consumer again
            return
        self._next_delivery = delivery + 1
        if seq <= self._received_seq:  # sent again (ack wait, or after repositioning)
            if seq in self._replies:
                self._replies[seq] = reply  # acknowledge the newest delivery of it
            elif seq <= self._acked_seq:
                self._publish_ack(reply)  # handled before: only its acknowledgement went missing
            return
        self._received_seq = seq
        if not self._first_received:
            self._first_received = seq
        self._replies[seq] = reply
        queue = self._queue
        if len(queue) >= self._queue_limit:
            self._drop_oldest()
        topic = self._subjects.get(subject)
        if topic is None:
            if len(self._subjects) >= MAX_PRODUCER_MARKS:
                self._subjects.clear()
            topic = self._subjects[subject] = subject.decode()
        if not queue:  # a reader waits only on an empty queue: wake it once, not per message
            self._ready.set()
        queue.append(_Delivery(topic, seq, int(tokens[base + 3]) // 1000, data,
                               msg_id_of(headers), self.client.epoch))

    def _drop_oldest(self) -> None:
        """Keep the queue bounded. Retention discarding what a consumer has not acknowledged
        frees its window, so a reader that has stopped keeps being sent messages: drop the
        oldest unread, as the stream would have. A slipstream producer's count shows the
        loss on the next message of that topic; any other message is counted here."""
        dropped = self._queue.popleft()
        self._replies.pop(dropped.seq, None)
        if dropped.msg_id is None and dropped.seq:
            self._record_gap(Gap(0, dropped.topic, dropped.seq, 1,
                                 "dropped unread: this subscription fell a window behind"))

    def _on_status(self, headers: bytes | None) -> None:
        """An idle heartbeat: it names the last delivery; one we never got was lost."""
        last = header_value(headers, "Nats-Last-Consumer")
        if last is not None and int(last) >= self._next_delivery:
            self._repositioning = True

    async def __anext__(self) -> Message:
        self._finish_previous()
        item = await self._next_queued()
        gap = self._take(item)
        self._outstanding = 1
        return Message(item.topic, item.seq, item.timestamp_us, item.payload, gap, item.epoch)

    async def next_batch(self) -> Batch:
        """The deliveries of one topic queued back to back (at least one). A batch ends
        before a message that a loss precedes: its gap is reported on it, first."""
        self._finish_previous()
        first = await self._next_queued()
        topic = first.topic
        gap = self._take(first)
        items = [first]
        queue = self._queue
        while queue and queue[0].topic == topic and queue[0].seq:
            item = queue[0]
            if item.msg_id is not None:
                self._check_count(topic, item.msg_id, item.seq)
                if topic in self._pending_gaps:
                    break  # a loss before it: it starts the next batch (counted already)
            queue.popleft()
            self._take(item, counted=True)
            items.append(item)
        self._outstanding = len(items)
        return Batch(topic, [item.seq for item in items],
                     [item.timestamp_us for item in items], [item.payload for item in items],
                     gap, first.epoch)

    async def _next_queued(self) -> _Delivery:
        while True:
            if self._queue:
                item = self._queue.popleft()
                if item.seq:
                    return item
                # A marker: the stream was made again.
                self._record_gap(Gap(0, item.topic, 1, UNKNOWN_COUNT,
                                     "the JetStream stream was made again"))
                continue
            await self._wait_for_more()

    def _take(self, item: _Delivery, counted: bool = False) -> Gap | None:
        """Hand `item` out: await its acknowledgement, check its count (unless `counted`
        already); the gap before it."""
        self._awaiting.append(item.seq)
        self.received += 1
        topic = item.topic
        if item.msg_id is not None and not counted:
            self._check_count(topic, item.msg_id, item.seq)
        self._topics_seen.add(topic)
        return self._pending_gaps.pop(topic, None) if self._pending_gaps else None

    def _check_count(self, topic: str, msg_id: str, seq: int) -> None:
        """A producer's per-topic count that jumps: messages lost before we read them."""
        key, _, count_text = msg_id.rpartition(".")  # PRODUCER.INDEX, N
        if not count_text.isdigit() or not key:
            return  # not published by slipstream
        count = int(count_text)
        mark = self._marks.get(key)
        if mark is not None and count > mark[0] + 1:
            self._record_gap(Gap(0, topic, mark[1] + 1, count - mark[0] - 1,
                                 "discarded by the stream's retention before this "
                                 "subscription read them"))
        if mark is None or count > mark[0]:
            if mark is None and len(self._marks) >= MAX_PRODUCER_MARKS:
                del self._marks[next(iter(self._marks))]
            self._marks[key] = (count, seq)

    # --- acknowledging -----------------------------------------------------------------

    def _send_acks(self, count: int) -> None:
        """`ack all` on the newest of the `count` oldest handed out covers them all."""
        awaiting, replies = self._awaiting, self._replies
        count = min(count, len(awaiting))
        if not count:
            return
        for _ in range(count - 1):
            replies.pop(awaiting.popleft(), None)
        seq = awaiting.popleft()
        reply = replies.pop(seq, None)
        if reply is not None:
            self._acked_seq = max(self._acked_seq, seq)
            self._publish_ack(reply)

    def _publish_ack(self, reply: bytes) -> None:
        if self.client.nc.is_connected:
            self.client.sends.start(self.client.nc.publish(reply.decode(), b"+ACK"),
                                    "an acknowledgement")

    # --- stopping ----------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop receiving; a non-durable consumer is deleted on the server (a durable stays)."""
        await stop_task(self._watchdog)
        self._watchdog = None
        await self._stop_listening()
        if self._ephemeral and self.client.nc.is_connected:
            with contextlib.suppress(Exception):  # gone anyway once idle for a minute
                await self._delete_consumer()

    async def _stop_listening(self) -> None:
        if self._nats_sub is not None:
            self.client.nc.stop_routing(self._nats_sub)
            with contextlib.suppress(Exception):  # the connection may be gone already
                await self._nats_sub.unsubscribe()
            self._nats_sub = None

    async def unsubscribe(self) -> None:
        self.finish_on_close()  # the message in hand is done, as on close()
        await self.stop()
        self.client.forget(self)
        self.end(StopAsyncIteration())
