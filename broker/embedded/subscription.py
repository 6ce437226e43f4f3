"""The embedded broker's subscription: deliveries and gap notices in, messages out.

`EmbeddedClient.subscribe` makes one. The client's reader hands it deliveries
and gap notices (`deliver`); the application pulls messages out (the shared
rules are in broker/subscription.py). After a reconnect (`reconnected`),
re-delivered messages are skipped and losses reported as a `Gap` on the next
message of their topic.

It knows nothing of the client: it is given two callables, one that sends a
frame on the current connection and one that forgets it, and is told the
connection's generation and the broker's epoch when they change.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from broker.subscription import (
    LOOP_TIMERS,
    UNKNOWN_COUNT,
    Batch,
    Message,
    Start,
    Subscription,
    Timers,
)
from broker.wire import protocol as p
from broker.wire.protocol import Gap


class EmbeddedSubscription(Subscription):
    """The messages matching one pattern, from the embedded broker."""

    def __init__(self, sid: int, pattern: str, start: Start, durable: str | None, window: int,
                 auto_ack: bool = True, *, send: Callable[[p.Frame], None],
                 forget: Callable[[], None], generation: int = 0, epoch: int = 0,
                 timers: Timers = LOOP_TIMERS) -> None:
        super().__init__(pattern, start, durable, window, auto_ack, timers)
        self.sid = sid
        self._send = send  # a frame on the current connection (dropped while there is none)
        self._forget = forget  # the client stops routing deliveries to us
        self._generation = generation  # the client's connection count: deliveries' tag
        self._epoch = epoch  # the broker run numbering what arrives now
        self._queue: deque[tuple[p.Deliver | Gap, int, int]] = deque()  # item, generation, epoch
        self._batch: p.Deliver | None = None
        self._batch_epoch = 0  # the broker epoch that numbered the current batch
        self._index = 0
        self._batch_current = 0  # 1: batch came on the current connection (so is ackable)
        self._last_seq: dict[str, int] = {}  # highest seq handed out per topic, this epoch
        self._received_last: dict[str, int] = {}  # highest seq received per topic, this epoch

    @property
    def current_generation(self) -> int:
        return self._generation

    async def __anext__(self) -> Message:
        # The hot path of every consumer: one run (a MSG) serves thousands of calls, so
        # the common case is a few attribute reads and one Message; acknowledgement is
        # counted inline and sent in batches (see _finish_previous).
        outstanding = self._outstanding
        if outstanding:  # _finish_previous, inline for auto_ack: it runs once per message
            self._outstanding = 0
            if self.auto_ack:
                done = self._done + outstanding
                self._done = done
                if done >= self._ack_every:
                    self._flush_acks()
            else:
                self._handed += outstanding
        batch = self._batch
        index = self._index
        if batch is None or index >= len(batch.payloads):
            batch = await self._next_run()
            index = self._index
        self._index = index + 1
        self._outstanding = self._batch_current
        self.received += 1
        topic = batch.topic
        gap = self._pending_gaps.pop(topic, None) if self._pending_gaps else None
        return Message(topic, batch.first_seq + index, batch.timestamps_us[index],
                       batch.payloads[index], gap, self._batch_epoch)

    async def next_batch(self) -> Batch:
        """The rest of the current run: what one MSG delivered, less what was taken."""
        self._finish_previous()
        batch = self._batch
        start = self._index
        if batch is None or start >= len(batch.payloads):
            batch = await self._next_run()
            start = self._index
        end = len(batch.payloads)
        self._index = end
        self._outstanding = (end - start) * self._batch_current
        self.received += end - start
        topic = batch.topic
        gap = self._pending_gaps.pop(topic, None) if self._pending_gaps else None
        stamps, payloads = batch.timestamps_us, batch.payloads
        if start:  # part was taken one by one, or skipped as a re-delivery
            stamps, payloads = stamps[start:], payloads[start:]
        return Batch(topic, range(batch.first_seq + start, batch.first_seq + end), stamps,
                     payloads, gap, self._batch_epoch)

    async def _next_run(self) -> p.Deliver:
        """Make the next run with messages left current (waiting for one if need be)."""
        while True:
            self._batch = None
            if self._queue:
                self._load(*self._queue.popleft())
                batch = self._batch
                if batch is not None and self._index < len(batch.payloads):
                    return batch
                continue
            await self._wait_for_more()

    def _load(self, item: p.Deliver | Gap, generation: int, epoch: int) -> None:
        """Make `item` current: note gaps, skip re-deliveries, find losses on reconnect."""
        current = generation == self._generation
        same_epoch = epoch == self._epoch
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
        self._batch_current = 1 if current else 0

    def _send_acks(self, count: int) -> None:
        if self._closed is None:  # after the end there is no subscription to acknowledge
            self._send(p.Ack(self.sid, count))

    # --- fed by the client's reader ----------------------------------------------

    def deliver(self, item: p.Deliver | Gap) -> None:
        """A MSG or GAP for this subscription, as the reader decoded it."""
        # The newest seq received per topic in this epoch: where a restart's gap begins.
        last = item.first_seq - 1 + (len(item.payloads) if type(item) is p.Deliver
                                     else item.missed)  # type: ignore[union-attr]
        if last > self._received_last.get(item.topic, 0):
            self._received_last[item.topic] = last
        self._queue.append((item, self._generation, self._epoch))
        self._ready.set()

    def reconnected(self, generation: int, epoch: int) -> None:
        """A new connection starts with no credit used: old deliveries are no longer ackable.

        After a broker restart, what the old broker held and had not sent us is gone,
        and nobody can say how much: each topic we had seen gets a gap of unknown size.
        """
        broker_restarted = epoch != self._epoch
        self._generation, self._epoch = generation, epoch
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
        self._outstanding = 0
        self._batch_current = 0

    def subscribe_frame(self, start: Start) -> p.Subscribe:
        return p.Subscribe(self.sid, self.pattern, start, self.durable, self.window)

    async def unsubscribe(self) -> None:
        """Stop this subscription; a durable one keeps its position in the broker."""
        self.finish_on_close()  # the message in hand is done, as on close()
        self._forget()
        self._send(p.Unsubscribe(self.sid))
        self.end(StopAsyncIteration())
