"""The client's loss bookkeeping, driven by protocol frames alone (no sockets)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from broker.embedded.client import EmbeddedClient as Client
from broker.embedded.subscription import EmbeddedSubscription as Subscription
from broker.wire import protocol as p
from tests.sim.clock import VirtualClock

_sent: list[p.Frame] = []  # what the subscriptions asked to send (acknowledgements)


def _nothing() -> None:
    pass


async def test_many_gaps_are_counted_exactly_and_logged_as_a_summary(
        caplog: pytest.LogCaptureFixture) -> None:
    timers = VirtualClock(start_s=0.0)
    sub = Subscription(1, "t", "new", None, window=1000, send=_sent.append, forget=_nothing,
                       generation=1, epoch=1, timers=timers)
    seq = 1
    for _ in range(500):  # message, then a gap of 3, over and over
        sub.deliver(p.Deliver(1, "t", seq, [0], [b"x"]))
        sub.deliver(p.Gap(1, "t", seq + 1, 3, "evicted"))
        seq += 4
    sub.deliver(p.Deliver(1, "t", seq, [0], [b"x"]))
    with caplog.at_level(logging.WARNING, logger="slipstream.client"):
        messages = [await anext(sub) for _ in range(501)]
        assert [m.seq for m in messages] == list(range(1, seq + 1, 4))
        assert all(m.gap is not None and m.gap.missed == 3 for m in messages[1:])
        assert (sub.gap_count, sub.missed, len(sub.recent_gaps)) == (500, 1500, 100)
        assert len(caplog.records) == 1  # the first loss, at once; the rest wait for a summary
        timers.advance(0.999)
        assert len(caplog.records) == 1
        timers.advance(0.001)  # the second is up: the deferred summary
    assert len(caplog.records) == 2
    assert "lost 1497 messages in 499 gaps" in caplog.records[1].getMessage()
    assert "1500 lost in all" in caplog.records[1].getMessage()


async def test_gaps_with_no_message_between_reach_the_reader_as_one(
        caplog: pytest.LogCaptureFixture) -> None:
    sub = Subscription(1, "t", "new", None, window=10, send=_sent.append, forget=_nothing,
                       generation=1, epoch=1)
    sub.deliver(p.Gap(1, "t", 1, 5, "evicted"))
    sub.deliver(p.Gap(1, "t", 6, 7, "evicted"))
    sub.deliver(p.Deliver(1, "t", 13, [0], [b"x"]))
    message = await anext(sub)
    assert message.seq == 13
    assert message.gap is not None and (message.gap.first_seq, message.gap.missed) == (1, 12)


async def test_messages_keep_the_epoch_that_numbered_them() -> None:
    sub = Subscription(1, "t", "new", None, window=10, send=_sent.append, forget=_nothing,
                       generation=1, epoch=1)
    sub.deliver(p.Deliver(1, "t", 7, [0], [b"old"]))
    sub.reconnected(generation=2, epoch=2)  # the broker restarted; we reconnected
    sub.deliver(p.Deliver(1, "t", 1, [0], [b"new"]))
    first, second = await anext(sub), await anext(sub)
    assert (first.epoch, first.seq, second.epoch, second.seq) == (1, 7, 2, 1)
    assert first.gap is None  # what the old broker may have lost after #7 is said, not hidden:
    assert second.gap is not None and (second.gap.first_seq, second.gap.missed) == (8, -1)


async def test_a_broker_restart_is_a_gap_of_unknown_size_after_what_was_received() -> None:
    sub = Subscription(1, "t.>", "new", None, window=10, send=_sent.append, forget=_nothing,
                       generation=1, epoch=1)
    sub.deliver(p.Deliver(1, "t.a", 1, [0, 0], [b"1", b"2"]))
    sub.deliver(p.Deliver(1, "t.b", 5, [0], [b"5"]))
    sub.reconnected(generation=2, epoch=2)  # the broker restarted; we reconnected
    sub.deliver(p.Deliver(1, "t.a", 1, [0], [b"new"]))
    got = [await anext(sub) for _ in range(4)]
    assert [(m.topic, m.seq, m.epoch) for m in got] == [
        ("t.a", 1, 1), ("t.a", 2, 1), ("t.b", 5, 1), ("t.a", 1, 2)]
    gap = got[3].gap  # the old epoch's loss reaches the reader with the next message
    assert gap is not None and gap.missed == -1 and gap.first_seq == 3
    assert "broker restarted" in gap.reason
    assert (sub.gap_count, sub.unknown_gaps, sub.missed) == (2, 2, 0)  # t.a and t.b


async def test_requests_after_the_client_gave_up_raise_its_error_at_once() -> None:
    from broker.errors import ConnectionLostError
    client = Client("127.0.0.1:1", reconnect=False)
    client._fail_all(ConnectionLostError("broker at 127.0.0.1:1 closed the connection"))
    for request in (client.ping(), client.stats(), client.subscribe("t")):
        with pytest.raises(ConnectionLostError, match="closed the connection"):
            async with asyncio.timeout(1):
                await request


async def test_an_idle_subscription_acknowledges_within_the_ack_delay_by_its_clock() -> None:
    from broker.subscription import ACK_DELAY_S

    timers, sent = VirtualClock(start_s=0.0), list[p.Frame]()
    sub = Subscription(1, "t", "new", None, window=1000, send=sent.append, forget=_nothing,
                       generation=1, epoch=1, timers=timers)
    sub.deliver(p.Deliver(1, "t", 1, [0, 0, 0], [b"a", b"b", b"c"]))
    for _ in range(3):
        await anext(sub)
    waiting = asyncio.ensure_future(anext(sub))  # finishes the 3rd, then waits: idle
    await asyncio.sleep(0)
    assert sent == []  # three done, far from a quarter of the window: no ACK yet
    timers.advance(ACK_DELAY_S - 0.001)
    assert sent == []
    timers.advance(0.001)
    assert sent == [p.Ack(1, 3)]
    waiting.cancel()
