"""What a consumer reads, whatever the engine: `Message`, and the `Subscription` interface.

A subscription is an async iterator of messages. Asking for the next message
finishes the previous one; finished messages are acknowledged in batches
(that is what returns flow-control credit), and losses reach the reader as a
`Gap` on the next message of their topic. The embedded broker's subscription
(broker/embedded/subscription.py) and the NATS JetStream one
(broker/jetstream/subscription.py) share the bookkeeping here: counting and
logging losses, and batching acknowledgements.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal, Protocol

import msgpack

from broker.wire.protocol import Gap

log = logging.getLogger("slipstream.client")

ACK_DELAY_S = 0.05  # an idle subscription acknowledges what it finished this soon
# Gap.missed when the count cannot be known: the broker restarted, and messages of its
# old epoch published after the last one we saw may have been lost with it.
UNKNOWN_COUNT = -1
GAP_LOG_INTERVAL_S = 1.0  # a subscription losing messages logs a summary at most this often
Start = Literal["new", "earliest"] | int


def _extension(code: int, data: bytes) -> Any:
    """msgpack extensions slipstream defines (docs/messages.md): 71 is a game datagram,
    decoded here, when a consumer first reads it (f1vocab/game/packed.py)."""
    if code == 71:
        from f1vocab.game.packed import unpack_datagram

        return unpack_datagram(data)
    return msgpack.ExtType(code, data)


class Message:
    """One delivered message. `data` is the payload decoded from msgpack, on first use."""

    __slots__ = ("_data", "epoch", "gap", "payload", "seq", "timestamp_us", "topic")

    def __init__(self, topic: str, seq: int, timestamp_us: int, payload: bytes,
                 gap: Gap | None, epoch: int) -> None:
        self.topic = topic
        # Embedded broker: per topic, from 1. NATS: the stream's sequence (across topics).
        # Either way increasing within a topic, and unique with (epoch, topic).
        self.seq = seq
        self.timestamp_us = timestamp_us  # broker's clock when it was published
        self.payload = payload  # the bytes exactly as published
        self.gap = gap  # messages of this topic lost just before this one, if any
        self.epoch = epoch  # the broker run (or JetStream stream) that numbered it
        self._data: Any = _UNDECODED

    @property
    def data(self) -> Any:
        if self._data is _UNDECODED:
            self._data = msgpack.unpackb(self.payload, ext_hook=_extension)
        return self._data

    def __repr__(self) -> str:
        return f"Message({self.topic!r}, seq={self.seq}, {len(self.payload)} bytes)"


_UNDECODED: Any = object()


class Batch:
    """Messages of one topic delivered together, as lists: the i-th has `seqs[i]`,
    `timestamps_us[i]` and `payloads[i]`. `gap` (losses just before the first) as on
    `Message`. Iterating gives the `Message`s, for code that wants them one by one."""

    __slots__ = ("epoch", "gap", "payloads", "seqs", "timestamps_us", "topic")

    def __init__(self, topic: str, seqs: Sequence[int], timestamps_us: Sequence[int],
                 payloads: Sequence[bytes], gap: Gap | None, epoch: int) -> None:
        self.topic = topic
        self.seqs = seqs
        self.timestamps_us = timestamps_us
        self.payloads = payloads
        self.gap = gap
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.payloads)

    def __iter__(self) -> Iterator[Message]:
        gap = self.gap
        for seq, stamp, payload in zip(self.seqs, self.timestamps_us, self.payloads,
                                       strict=True):
            yield Message(self.topic, seq, stamp, payload, gap, self.epoch)
            gap = None

    def __repr__(self) -> str:
        return f"Batch({self.topic!r}, seq={self.seqs[0]}.., {len(self.payloads)} messages)"


class Timer(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """Where a subscription's delays come from: the running asyncio loop (LoopTimers), or
    a test's clock that moves only when told."""

    def time(self) -> float: ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer: ...


class LoopTimers:
    """The running asyncio loop's clock and timers."""

    def time(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay_s, callback)


LOOP_TIMERS = LoopTimers()


class Subscription:
    """An async iterator of the messages matching one pattern (the engines subclass it)."""

    def __init__(self, pattern: str, start: Start, durable: str | None, window: int,
                 auto_ack: bool, timers: Timers = LOOP_TIMERS) -> None:
        self.timers = timers
        self.auto_ack = auto_ack  # False: the application calls ack() when it is safe
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
        self._outstanding = 0  # handed out by the last step, not yet finished
        self._done = 0  # finished, not yet acknowledged (current connection only)
        self._handed = 0  # manual ack: handed out on this connection, not yet ack()ed
        self._pending_gaps: dict[str, Gap] = {}
        self._ack_timer: Timer | None = None
        self._gap_log_next = 0.0
        self._gaps_logged = (0, 0)  # gap_count, missed when last logged
        self._gap_log_timer: Timer | None = None
        self._ready = asyncio.Event()  # set when something arrives, or at the end
        self._closed: BaseException | None = None  # why deliveries ended, once they have

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        raise NotImplementedError

    async def next_batch(self) -> Batch:
        """The next run of one topic's messages (as many as have arrived, at least one).
        Asking for it finishes the previous batch (or message), as `__anext__` does."""
        raise NotImplementedError

    async def batches(self) -> AsyncIterator[Batch]:
        """`async for batch in sub.batches()`: the messages in runs, their payloads as a
        list. The per-message cost (a Message each, a step of the iterator each) is
        then paid per run: this is the fast way to read a busy subscription."""
        while True:
            try:
                batch = await self.next_batch()
            except StopAsyncIteration:
                return
            yield batch

    async def unsubscribe(self) -> None:
        """Stop this subscription; a durable one keeps its position in the broker."""
        raise NotImplementedError

    @property
    def current_generation(self) -> int:
        """Changes whenever deliveries before it can no longer be acknowledged."""
        raise NotImplementedError

    def _send_acks(self, count: int) -> None:
        """Tell the broker that the oldest `count` unacknowledged deliveries are done."""
        raise NotImplementedError

    async def _wait_for_more(self) -> None:
        """Nothing queued: give credit back (soon, not a frame per message), then wait
        for a delivery, or raise the end (StopAsyncIteration or the failure)."""
        self._ack_soon()
        if self._closed is not None:
            if isinstance(self._closed, StopAsyncIteration):
                raise StopAsyncIteration
            raise self._closed
        self._ready.clear()
        await self._ready.wait()

    def end(self, reason: BaseException) -> None:
        """No more deliveries: StopAsyncIteration for a clean end, else the failure. The
        gap-log timer ends with it: the losses it was holding back are logged now."""
        if self._closed is None:
            self._closed = reason
            self._ready.set()
            if self._gap_log_timer is not None:
                self._gap_log_timer.cancel()
                self._gap_log_timer = None
                self._gap_log_next = 0.0
                self._log_gaps()

    # --- finishing and acknowledging ------------------------------------------------

    def _finish_previous(self) -> None:
        """Asking for the next message (or batch) finishes the previous one."""
        count = self._outstanding
        if count:
            self._outstanding = 0
            if not self.auto_ack:
                self._handed += count
                return
            done = self._done + count  # _finish, inline: this runs once per message
            self._done = done
            if done >= self._ack_every:
                self._flush_acks()

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
        if generation != self.current_generation:
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
            self._ack_timer = self.timers.call_later(ACK_DELAY_S, self._flush_acks)

    def _flush_acks(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self._done:
            self._send_acks(self._done)
            self._done = 0

    def finish_on_close(self) -> None:
        """Leaving cleanly (client.close() or unsubscribe()): the message or batch in hand
        when the loop ended (by `break`, say) is done too, so a durable resumes after it.
        Whoever may fail on a message uses auto_ack=False and acks what succeeded."""
        if self._outstanding and self.auto_ack:
            self._finish(self._outstanding)
            self._outstanding = 0
        self._flush_acks()

    # --- losses -----------------------------------------------------------------------

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
        now = self.timers.time()
        if now < self._gap_log_next:
            if self._gap_log_timer is None:  # make sure the last losses are logged too
                self._gap_log_timer = self.timers.call_later(self._gap_log_next - now,
                                                             self._log_gaps)
            return
        self._gap_log_timer = None
        unlogged_gaps = self.gap_count - self._gaps_logged[0]
        if not unlogged_gaps:
            return
        unlogged_missed = self.missed - self._gaps_logged[1]
        self._gaps_logged = (self.gap_count, self.missed)
        self._gap_log_next = now + GAP_LOG_INTERVAL_S
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
