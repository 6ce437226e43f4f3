"""`sub.batches()` on the embedded subscription, fed protocol frames alone (no sockets):
runs come out whole, mixed with per-message reading, with gaps, skips and acks right."""

from __future__ import annotations

from broker.embedded.subscription import EmbeddedSubscription
from broker.wire import protocol as p


def subscription(window: int = 8, auto_ack: bool = True
                 ) -> tuple[EmbeddedSubscription, list[p.Frame]]:
    sent: list[p.Frame] = []
    sub = EmbeddedSubscription(1, "t.>", "new", None, window, auto_ack, send=sent.append,
                               forget=lambda: None, generation=1, epoch=1)
    return sub, sent


def run(topic: str, first_seq: int, count: int) -> p.Deliver:
    return p.Deliver(1, topic, first_seq, list(range(first_seq, first_seq + count)),
                     [f"{topic}#{seq}".encode() for seq in range(first_seq, first_seq + count)])


async def test_each_batch_is_one_run_with_its_seqs_stamps_and_payloads() -> None:
    sub, _ = subscription()
    sub.deliver(run("t.a", 1, 3))
    sub.deliver(run("t.b", 10, 2))
    first = await sub.next_batch()
    assert (first.topic, list(first.seqs), first.timestamps_us, list(first.payloads)) == (
        "t.a", [1, 2, 3], [1, 2, 3], [b"t.a#1", b"t.a#2", b"t.a#3"])
    second = await sub.next_batch()
    assert (second.topic, list(second.seqs), len(second)) == ("t.b", [10, 11], 2)
    assert [m.seq for m in second] == [10, 11] and sub.received == 5


async def test_a_batch_after_messages_taken_one_by_one_is_the_rest_of_the_run() -> None:
    sub, _ = subscription()
    sub.deliver(run("t.a", 1, 4))
    assert (await anext(sub)).seq == 1
    rest = await sub.next_batch()
    assert list(rest.seqs) == [2, 3, 4] and list(rest.payloads) == [b"t.a#2", b"t.a#3", b"t.a#4"]


async def test_a_gap_rides_on_the_batch_after_it_and_only_on_its_first_message() -> None:
    sub, _ = subscription()
    sub.deliver(p.Gap(1, "t.a", 1, 5, "evicted"))
    sub.deliver(run("t.a", 6, 2))
    batch = await sub.next_batch()
    assert batch.gap is not None and batch.gap.missed == 5
    assert [m.gap is not None for m in batch] == [True, False]
    assert (sub.gap_count, sub.missed) == (1, 5)


async def test_asking_for_the_next_batch_acknowledges_the_whole_previous_one() -> None:
    sub, sent = subscription(window=8)  # acknowledged every quarter window: 2
    sub.deliver(run("t.a", 1, 3))
    sub.deliver(run("t.a", 4, 1))
    await sub.next_batch()
    assert sent == []  # the first batch is being handled
    await sub.next_batch()
    assert sent == [p.Ack(1, 3)]
    sub.finish_on_close()
    assert sent == [p.Ack(1, 3), p.Ack(1, 1)]


async def test_manual_ack_counts_a_batch_as_its_messages() -> None:
    sub, sent = subscription(auto_ack=False)
    sub.deliver(run("t.a", 1, 3))
    sub.deliver(run("t.a", 4, 2))
    await sub.next_batch()
    await sub.next_batch()
    assert sub.unacknowledged == 3  # the second batch is still in hand
    sub.ack(3, sub.current_generation)
    assert sent == [p.Ack(1, 3)]


async def test_re_deliveries_after_a_reconnect_are_left_out_of_the_batch() -> None:
    sub, sent = subscription()
    sub.deliver(run("t.a", 1, 3))
    await sub.next_batch()
    sub.reconnected(generation=2, epoch=1)  # same broker: a durable starts again at 2
    sub.deliver(run("t.a", 2, 4))
    batch = await sub.next_batch()
    assert list(batch.seqs) == [4, 5] and batch.gap is None
    assert sent == [p.Ack(1, 2)]  # the two it had already, acknowledged on the new connection


async def test_batches_ends_when_the_subscription_ends() -> None:
    sub, _ = subscription()
    sub.deliver(run("t.a", 1, 2))
    sub.end(StopAsyncIteration())
    assert [len(batch) async for batch in sub.batches()] == [2]


def test_the_outbox_takes_a_list_whole_when_it_fits_one_run_and_keeps_order() -> None:
    from broker.embedded.outbox import Outbox

    outbox: Outbox[None] = Outbox()
    outbox.add("t.a", b"0", 100, None)
    outbox.add_many("t.a", [b"1", b"2"], 100)
    outbox.add_many("t.b", [b"x" * 40, b"y" * 40, b"z" * 40], 100)  # over a run: split
    outbox.add_many("t.c", [], 100)  # nothing: no run
    frames, confirmations = outbox.frames(True, 1 << 20, iter(range(1, 9)).__next__)
    assert confirmations == [] and outbox.payload_bytes == 0
    decoded = p.FrameDecoder().feed(b"".join(frames))
    assert [(f.topic, f.payloads) for f in decoded if type(f) is p.Publish] == [
        ("t.a", [b"0", b"1", b"2"]), ("t.b", [b"x" * 40, b"y" * 40]), ("t.b", [b"z" * 40])]
