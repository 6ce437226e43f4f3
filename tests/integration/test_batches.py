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
