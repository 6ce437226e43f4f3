"""Delivery through a real broker process: exact counts, order, fan-out, routing, loss."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from broker import Client, Message
from broker.errors import BrokerError, HandshakeRefusedError, ProtocolError
from broker.storage.records import encode_run
from tests.helpers import Processes, assert_nothing_more, take, wait_for


@pytest.fixture(autouse=True, params=["memory", "disk"])
def storage(request: pytest.FixtureRequest, processes: Processes) -> str:
    """Every delivery test runs against the broker in memory and on disk (--data-dir)."""
    processes.storage = request.param
    return str(request.param)


async def test_one_to_one_delivers_every_message_once_in_order(processes: Processes) -> None:
    broker = await processes.broker()
    async with Client(broker.address, name="sub") as consumer, \
               Client(broker.address, name="pub") as producer:
        sub = await consumer.subscribe("demo.counter")
        for n in range(20_000):
            await producer.publish("demo.counter", {"n": n})
        messages = await take(sub, 20_000)
        await assert_nothing_more(sub)
    assert [m.seq for m in messages] == list(range(1, 20_001))
    assert [m.data["n"] for m in messages] == list(range(20_000))
    assert all(m.gap is None for m in messages) and sub.gap_count == 0


async def test_payload_bytes_arrive_exactly_as_published(processes: Processes) -> None:
    broker = await processes.broker()
    raw = [bytes(range(256)) * 3, b"", b"\x00\xff" * 1000]
    async with Client(broker.address) as client:
        sub = await client.subscribe("game.raw")
        for payload in raw:
            await client.publish_bytes("game.raw", payload)
        assert [m.payload for m in await take(sub, 3)] == raw


async def test_fan_out_gives_every_subscriber_everything(processes: Processes) -> None:
    broker = await processes.broker()
    clients = [Client(broker.address, name=f"sub{i}") for i in range(5)]
    for client in clients:
        await client.connect()
    subs = [await client.subscribe("live.>") for client in clients]
    async with Client(broker.address, name="pub") as producer:
        for n in range(3000):
            await producer.publish("live.TimingData", n)
        results = await asyncio.gather(*(take(sub, 3000) for sub in subs))
    for messages in results:
        assert [m.data for m in messages] == list(range(3000))
    for client in clients:
        await client.close()


async def test_wildcards_route_each_topic_to_the_matching_patterns(processes: Processes) -> None:
    broker = await processes.broker()
    published = {"game.lap_data": 3, "game.event": 2, "live.TimingData": 4, "live.event": 1,
                 "game.car.telemetry": 5}
    wanted = {
        "game.*": {"game.lap_data": 3, "game.event": 2},
        "game.>": {"game.lap_data": 3, "game.event": 2, "game.car.telemetry": 5},
        "*.event": {"game.event": 2, "live.event": 1},
        "live.TimingData": {"live.TimingData": 4},
        ">": published,
    }
    async with Client(broker.address) as client:
        subs = {pattern: await client.subscribe(pattern) for pattern in wanted}
        for topic, count in published.items():
            for n in range(count):
                await client.publish(topic, n)
        for pattern, expected in wanted.items():
            messages = await take(subs[pattern], sum(expected.values()))
            counts: dict[str, int] = {}
            for message in messages:
                counts[message.topic] = counts.get(message.topic, 0) + 1
            assert counts == expected, pattern
            await assert_nothing_more(subs[pattern], 0.1)


async def test_stalled_subscriber_gets_gap_notice_fast_one_gets_all(processes: Processes) -> None:
    broker = await processes.broker("--retain-messages", "100")
    async with Client(broker.address, name="fast") as fast_client, \
               Client(broker.address, name="stalled") as stalled_client, \
               Client(broker.address, name="pub") as producer:
        fast = await fast_client.subscribe("t")
        stalled = await stalled_client.subscribe("t", window=10)
        got_fast: list[Message] = []
        for burst in range(20):  # bursts smaller than retention, paced by the fast reader
            for n in range(burst * 50, burst * 50 + 50):
                await producer.publish("t", n)
            got_fast += await take(fast, 50)
        # The stalled one has 10 in hand and read nothing else.
        await wait_for(lambda: _in_hand(producer, "stalled", 10), "10 sent to the stalled one")
        got_stalled = await take(stalled, 110)
        await assert_nothing_more(stalled)
    assert [m.data for m in got_fast] == list(range(1000))
    assert [m.seq for m in got_stalled] == list(range(1, 11)) + list(range(901, 1001))
    gap = got_stalled[10].gap
    assert gap is not None and (gap.first_seq, gap.missed) == (11, 890)
    assert "evicted" in gap.reason
    assert (stalled.gap_count, stalled.missed, fast.missed) == (1, 890, 0)
    assert list(stalled.recent_gaps) == [gap]


async def test_block_policy_slows_the_publisher_and_loses_nothing(processes: Processes) -> None:
    broker = await processes.broker("--retain-messages", "50", "--on-full", "block")
    async with Client(broker.address, name="slow") as consumer, \
               Client(broker.address, name="pub") as producer:
        sub = await consumer.subscribe("t", window=10)
        received: list[int] = []

        async def slow_reader() -> None:
            async for message in sub:
                received.append(message.data)
                await asyncio.sleep(0.001)
                if len(received) == 400:
                    return

        reader = asyncio.create_task(slow_reader())
        for n in range(399):
            await producer.publish("t", n)
        last_seq = await producer.publish("t", 399, confirm=True)
        assert last_seq == 400
        # The broker could only take the last message once the reader had caught up
        # to within retention of it.
        assert len(received) >= 400 - 50 - 10
        await asyncio.wait_for(reader, 10)
        stats = await producer.stats()
    assert received == list(range(400))
    assert sub.gap_count == 0 and sub.missed == 0
    assert stats["topics"]["t"]["published"] == 400


async def test_start_positions_earliest_and_seq(processes: Processes) -> None:
    broker = await processes.broker("--retain-messages", "50")
    async with Client(broker.address) as client:
        for n in range(80):
            await client.publish("t", n)
        await client.flush()
        await client.ping()  # the broker has handled everything before the ping
        earliest = await client.subscribe("t", start="earliest")
        from_seq = await client.subscribe("t", start=70)
        too_old = await client.subscribe("t", start=5)
        new = await client.subscribe("t")
        await client.publish("t", 80)
        assert [m.seq for m in await take(earliest, 51)] == list(range(31, 82))
        assert [m.seq for m in await take(from_seq, 12)] == list(range(70, 82))
        old = await take(too_old, 51)
        assert old[0].seq == 31 and old[0].gap is not None and old[0].gap.missed == 26
        assert [m.seq for m in await take(new, 1)] == [81]


@pytest.mark.usefixtures("engine")
async def test_durable_resumes_right_after_the_last_acknowledged(processes: Processes) -> None:
    """On either engine: a durable resumes right after what its last holder finished,
    including what was published while nobody held it."""
    broker = await processes.any_broker()
    async with Client(broker.address, name="pub") as producer:
        for n in range(100):
            await producer.publish("live.RaceControlMessages", n)
        await producer.flush()
        await producer.ping()
        async with Client(broker.address, name="writer-1") as first:
            sub = await first.subscribe("live.>", start="earliest", durable="sqlite")
            assert [m.data for m in await take(sub, 30)] == list(range(30))
        async with Client(broker.address, name="writer-2") as second:
            sub = await second.subscribe("live.>", durable="sqlite")
            assert [m.data for m in await take(sub, 70)] == list(range(30, 100))
        for n in range(100, 120):  # published while nobody holds the durable
            await producer.publish("live.RaceControlMessages", n)
        await producer.flush()
        async with Client(broker.address, name="writer-3") as third:
            sub = await third.subscribe("live.>", durable="sqlite")
            assert [m.data for m in await take(sub, 20)] == list(range(100, 120))
            await assert_nothing_more(sub)


async def test_a_durable_in_use_is_refused_for_a_second_client(processes: Processes) -> None:
    broker = await processes.broker()
    async with Client(broker.address, name="a") as first, Client(broker.address, name="b") as b:
        held = await first.subscribe("x.>", durable="d")
        with pytest.raises(BrokerError, match=r"durable 'd' is in use by connection #1 'a'"):
            await b.subscribe("x.>", durable="d")
        await held.unsubscribe()
        await first.ping()  # frames are acted on in order: the UNSUB is done once PONG is back
        with pytest.raises(BrokerError, match=r"created for pattern 'x\.>', not 'y\.>'"):
            await b.subscribe("y.>", durable="d")
        await b.subscribe("x.>", durable="d")  # released: the second client may take it


async def test_publisher_confirms_return_consecutive_seqs(processes: Processes) -> None:
    broker = await processes.broker()
    async with Client(broker.address) as client:
        seqs = await asyncio.gather(*(client.publish("t", n, confirm=True) for n in range(10)))
        assert seqs == list(range(1, 11))
        with pytest.raises(ProtocolError, match=r"bad topic 'a\.\.b'"):  # checked before sending
            await client.publish_bytes("a..b", b"x", confirm=True)


async def test_token_is_required_when_the_broker_has_one(processes: Processes) -> None:
    broker = await processes.broker("--token", "pit-wall")
    with pytest.raises(HandshakeRefusedError, match=r"\[auth\]: token required"):
        await Client(broker.address).connect()
    with pytest.raises(HandshakeRefusedError, match=r"\[auth\]: token missing or wrong"):
        await Client(broker.address, token="garage").connect()
    async with Client(broker.address, token="pit-wall") as client:
        assert await client.ping() < 1.0


async def test_stats_count_topics_and_connections(processes: Processes, storage: str) -> None:
    broker = await processes.broker("--retain-messages", "10")
    async with Client(broker.address, name="watcher") as client:
        sub = await client.subscribe("s.*", window=5)
        for n in range(25):  # all in one PUB frame: no await in between yields
            await client.publish("s.a", b"x" * n)
        await take(sub, 1)  # the first run (the whole window of 5) has arrived; none acked
        stats = await client.stats()
    topic = stats["topics"]["s.a"]
    assert (topic["published"], topic["retained"], topic["evicted"], topic["subscribers"]) == (
        25, 10, 15, 1)
    payload_bytes = sum(len(msgpack.packb(b"x" * n)) for n in range(15, 25))
    if storage == "memory":
        assert topic["retained_bytes"] == payload_bytes
    else:  # on disk: the segment file, the one PUB as one run record, evicted ones too
        assert topic["retained_bytes"] == len(encode_run(1, 0, [msgpack.packb(b"x" * n)
                                                                for n in range(25)]))
    (mine,) = stats["connections"]
    assert (mine["name"], mine["published"], mine["delivered"], mine["unacked"]) == (
        "watcher", 25, 5, 5)
    # Eviction came first: the run it got was seqs 16..20 after a gap of 15.
    assert (mine["pending"], mine["gaps"], mine["missed"]) == (5, 1, 15)


async def test_a_tight_publish_loop_still_lets_other_tasks_run(processes: Processes) -> None:
    """publish() and flush() rarely suspend when the socket keeps up; the client must still
    yield now and then, or a producer loop would starve signals, acks and errors."""
    broker = await processes.broker()
    async with Client(broker.address) as client:
        other_ran = asyncio.Event()
        asyncio.get_running_loop().call_soon(other_ran.set)
        published = 0
        while not other_ran.is_set() and published < 100_000:
            await client.publish_bytes("t", b"x" * 100)
            await client.flush()
            published += 1
    assert other_ran.is_set()
    assert published < 10_000  # within 256 KiB of payload


async def _in_hand(client: Client, name: str, count: int) -> bool:
    stats = await client.stats()
    return any(c["name"] == name and c["delivered"] == count == c["unacked"]
               for c in stats["connections"])
