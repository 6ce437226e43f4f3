"""A subscription: the async iterator of messages a consumer reads, and what it owes.

`Client.subscribe` makes one. The client's reader pushes deliveries and gap
notices into it; the application pulls messages out. Asking for the next
message finishes the previous one, finished messages are acknowledged in
batches (that is what returns flow-control credit to the broker), and after
a reconnect re-delivered messages are skipped and losses reported as a `Gap`
on the next message of their topic.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Literal

import msgpack

from broker import protocol as p
from broker.protocol import Gap

if TYPE_CHECKING:
    from broker.client import Client

log = logging.getLogger("slipstream.client")

ACK_DELAY_S = 0.05  # an idle subscription acknowledges what it finished this soon
# Gap.missed when the count cannot be known: the broker restarted, and messages of its
# old epoch published after the last one we saw may have been lost with it.
UNKNOWN_COUNT = -1
GAP_LOG_INTERVAL_S = 1.0  # a subscription losing messages logs a summary at most this often
Start = Literal["new", "earliest"] | int


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
        self.missed = 0  # messages those losses add up to (the counted ones)
        self.unknown_gaps = 0  # losses whose size cannot be known (a broker restart)
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
        self._received_last: dict[str, int] = {}  # highest seq received per topic, this epoch
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
        if gap.missed == UNKNOWN_COUNT:
            self.unknown_gaps += 1
        else:
            self.missed += gap.missed
        self.recent_gaps.append(gap)
        earlier = self._pending_gaps.get(gap.topic)
        if earlier is not None:  # two losses with no message between: one gap to the reader
            unknown = UNKNOWN_COUNT in (earlier.missed, gap.missed)
            gap = earlier._replace(
                missed=UNKNOWN_COUNT if unknown else earlier.missed + gap.missed)
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
        if gap.missed == UNKNOWN_COUNT and unlogged_gaps == 1:
            log.warning("subscription %r may have lost messages of %r after seq %d: %s",
                        self.pattern, gap.topic, gap.first_seq - 1, gap.reason)
        elif unlogged_gaps == 1:
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
        # The newest seq received per topic in this epoch: where a restart's gap begins.
        last = item.first_seq - 1 + (len(item.payloads) if type(item) is p.Deliver
                                     else item.missed)  # type: ignore[union-attr]
        if last > self._received_last.get(item.topic, 0):
            self._received_last[item.topic] = last
        self._queue.append((item, self.client.generation, self.client.epoch))
        self._ready.set()

    def _reconnected(self, broker_restarted: bool) -> None:
        """A new connection starts with no credit used: old deliveries are no longer ackable.

        After a broker restart, what the old broker held and had not sent us is gone,
        and nobody can say how much: each topic we had seen gets a gap of unknown size.
        """
        if broker_restarted:
            # Queued behind what we still hold of the old epoch (epoch 0 matches none,
            # so the gap leaves the new epoch's seq bookkeeping alone).
            for topic, last in self._received_last.items():
                self._queue.append((Gap(self.sid, topic, last + 1, UNKNOWN_COUNT,
                                        "the broker restarted (new epoch): messages it held "
                                        f"after #{last} of {topic!r} may be lost"), 0, 0))
            self._received_last.clear()
            self._ready.set()
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
