"""`sub.batches()` and `client.publish_batch()` against real engines: every message once, in
order per topic, with the payloads exact, and on the embedded broker in runs."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import msgpack
import pytest

from broker import Client
from broker.subscription import Batch
from tests.helpers import Processes

TOPICS = ("demo.a", "demo.b", "demo.c")
PER_TOPIC = 2_000


@pytest.mark.usefixtures("engine")
async def test_batches_deliver_every_message_once_in_order_per_topic(
        processes: Processes) -> None:
    broker = await processes.any_broker()
    batches: list[Batch] = []
    async with Client(broker.address, name="sub") as consumer, \
               Client(broker.address, name="pub") as producer:
        sub = await consumer.subscribe("demo.>")
        for n in range(0, PER_TOPIC, 100):  # interleaved, as the game's packet types are
            for topic in TOPICS:
                if n % 200:  # half message by message, half as a batch
                    for m in range(n, n + 100):
                        await producer.publish(topic, {"n": m})
                else:
                    await producer.publish_batch(
                        topic, [msgpack.packb({"n": m}) for m in range(n, n + 100)])
        await producer.flush()
        received = 0
        async with asyncio.timeout(30):
            async for batch in sub.batches():
                batches.append(batch)
                received += len(batch)
                if received >= PER_TOPIC * len(TOPICS):
                    break
    seqs: dict[str, list[int]] = defaultdict(list)
    numbers: dict[str, list[int]] = defaultdict(list)
    for batch in batches:
        assert len(batch.seqs) == len(batch.timestamps_us) == len(batch.payloads) > 0
        assert batch.gap is None
        seqs[batch.topic] += batch.seqs
        numbers[batch.topic] += [msgpack.unpackb(payload)["n"] for payload in batch.payloads]
    assert received == PER_TOPIC * len(TOPICS)
    for topic in TOPICS:
        assert numbers[topic] == list(range(PER_TOPIC)), topic
        assert seqs[topic] == sorted(set(seqs[topic])), topic
    if processes.engine == "embedded":  # one MSG run per batch: far fewer than messages
        assert len(batches) < received / 10


@pytest.mark.usefixtures("engine")
@pytest.mark.parametrize("leave", ["close", "unsubscribe"])
async def test_breaking_out_of_the_loop_finishes_the_message_in_hand(
        processes: Processes, leave: str) -> None:
    """The rule for a durable: a message is finished when the next is asked for, or when
    the reader leaves (the client closed, or the subscription unsubscribed) while holding
    it. So after `break` on message 3, the durable resumes at 4, on either engine."""
    broker = await processes.any_broker()
    async with Client(broker.address, name="pub") as producer:
        for n in range(1, 7):
            await producer.publish("demo.d", n)
        await producer.flush()
    async with Client(broker.address, name="reader") as reader:
        sub = await reader.subscribe("demo.d", durable="breaker", start="earliest")
        async for message in sub:
            if message.data == 3:
                break
        if leave == "unsubscribe":
            await sub.unsubscribe()
    async with Client(broker.address, name="reader") as reader:
        sub = await reader.subscribe("demo.d", durable="breaker")
        async with asyncio.timeout(20):
            assert [(await anext(sub)).data for _ in range(3)] == [4, 5, 6]
