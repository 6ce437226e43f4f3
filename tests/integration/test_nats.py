"""slipstream on NATS JetStream: real nats-server processes, the same client interface.

One JetStream node for the rules, a 3-node R3 cluster with one node SIGKILLed
mid-replay for the guarantee: every message is stored once and every consumer
gets each exactly once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sqlite3

import nats
import pytest
from nats.js.api import DiscardPolicy, StreamConfig

from broker import Client, Message
from broker.errors import ConfigError
from broker.jetstream.client import JetStreamClient
from broker.jetstream.stream import StreamSpec
from broker.jetstream.subscription import JetStreamSubscription
from tests.helpers import (
    REPLAY_MESSAGES,
    SESSION,
    Processes,
    assert_nothing_more,
    nats_address,
    run_command,
    take,
    wait_drained,
    wait_for,
)


async def test_the_address_picks_the_engine(processes: Processes) -> None:
    node = await processes.nats()
    client = Client(node.address, name="t")
    assert isinstance(client, JetStreamClient)
    with pytest.raises(ConfigError, match="is for NATS"):
        Client("127.0.0.1:1,nats://127.0.0.1:2")
    with pytest.raises(ConfigError, match="not a nats:// address"):
        Client("nats://127.0.0.1:1,http://127.0.0.1:2")
    with pytest.raises(ConfigError, match="names no host"):
        Client("nats://")
    with pytest.raises(ConfigError, match="--stream"):
        Client("nats://127.0.0.1:4222/STREAM")


async def test_one_to_one_delivers_every_message_once_in_order(processes: Processes) -> None:
    node = await processes.nats()
    async with Client(node.address, name="sub") as consumer, \
               Client(node.address, name="pub") as producer:
        sub = await consumer.subscribe("demo.counter")
        for n in range(20_000):
            await producer.publish("demo.counter", {"n": n})
        messages = await take(sub, 20_000)
        await assert_nothing_more(sub)
    assert [m.data["n"] for m in messages] == list(range(20_000))
    seqs = [m.seq for m in messages]
    assert seqs == sorted(set(seqs))  # the stream's seq: increasing, never repeated
    assert {m.epoch for m in messages} == {consumer.epoch} and consumer.epoch == producer.epoch
    assert all(m.gap is None for m in messages) and sub.gap_count == 0


async def test_payloads_arrive_exactly_and_confirm_returns_the_seq(
        processes: Processes) -> None:
    node = await processes.nats()
    raw = [bytes(range(256)) * 3, b"", b"\x00\xff" * 1000]
    async with Client(node.address) as client:
        sub = await client.subscribe("game.raw")
        seqs = [await client.publish_bytes("game.raw", payload, confirm=True) for payload in raw]
        messages = await take(sub, 3)
    assert [m.payload for m in messages] == raw
    assert [m.seq for m in messages] == seqs


async def test_patterns_route_and_fan_out_to_every_subscriber(processes: Processes) -> None:
    node = await processes.nats()
    async with Client(node.address) as client:
        every = await client.subscribe(">")
        cars = await client.subscribe("t.car.*")
        one = await client.subscribe("t.car.7")
        topics = ["t.car.7", "t.car.8", "t.lap", "other"]
        for index in range(400):
            await client.publish(topics[index % 4], index)
        assert len(await take(every, 400)) == 400
        car_messages = await take(cars, 200)
        assert {m.topic for m in car_messages} == {"t.car.7", "t.car.8"}
        assert [m.data for m in await take(one, 100)] == list(range(0, 400, 4))
        for sub in (every, cars, one):
            await assert_nothing_more(sub)


async def test_a_durable_with_another_pattern_is_a_clear_error(processes: Processes) -> None:
    node = await processes.nats()
    async with Client(node.address) as client:
        await (await client.subscribe("t.a", durable="mine")).unsubscribe()
        with pytest.raises(ConfigError, match=r"exists .* with pattern 't\.a', not 't\.b'"):
            await client.subscribe("t.b", durable="mine")


async def test_messages_retention_discarded_are_a_gap_with_the_count(
        processes: Processes) -> None:
    """A reader that falls 1,000 behind a topic keeping 10 is told exactly what it lost.

    (JetStream drops discarded messages from a consumer's pending count, so it goes on
    delivering while retention discards: the losses come in several gaps.)"""
    node = await processes.nats()
    spec = StreamSpec(max_msgs_per_subject=10)
    async with JetStreamClient(node.address, spec=spec) as reader, \
               Client(node.address) as producer:
        sub = await reader.subscribe("t.r", window=10)
        first = await producer.publish("t.r", -1, confirm=True)
        assert (await take(sub, 1))[0].seq == first
        for n in range(1000):
            await producer.publish("t.r", n)
        await producer.flush()
        received: list[Message] = []
        async with asyncio.timeout(20):
            async for message in sub:
                received.append(message)
                if message.data == 999:
                    break
    assert len(received) + sub.missed == 1000
    assert sub.gap_count >= 1 and sub.missed >= 900
    assert isinstance(sub, JetStreamSubscription) and not sub._queue
    assert len(received) <= 1000 - 900
    gap_message = next(m for m in received if m.gap is not None)
    assert gap_message.gap is not None and "retention" in gap_message.gap.reason
    assert [m.data for m in received] == sorted(m.data for m in received)


async def test_an_incompatible_stream_is_reported_not_changed(processes: Processes) -> None:
    node = await processes.nats()
    nc = await nats.connect(node.address)
    await nc.jetstream().add_stream(StreamConfig(name="SLIPSTREAM", subjects=["x.>"],
                                                 discard=DiscardPolicy.NEW))
    try:
        with pytest.raises(ConfigError, match="discard is new"):
            async with Client(node.address):
                pass
        code, _, err = await run_command("-m", "consumer", "printer", "x.>",
                                         "--broker", node.address)
        assert code == 2 and "discard is new" in err and "left as it is" in err
        info = await nc.jetstream().stream_info("SLIPSTREAM")
        assert info.config.discard == DiscardPolicy.NEW  # untouched
    finally:
        await nc.close()


async def test_a_wrong_token_exits_2_with_one_line(processes: Processes) -> None:
    node = await processes.nats("--auth", "right-token")
    code, _, err = await run_command("-m", "producer", "pub", "demo.x", "1",
                                     "--broker", node.address, "--token", "wrong")
    assert code == 2
    assert err.strip().count("\n") == 0 and "refused" in err, err
    code, out, err = await run_command("-m", "producer", "pub", "demo.x", "1", "--confirm",
                                       "--broker", node.address, "--token", "right-token")
    assert code == 0, err
    assert out.startswith("published demo.x #1"), out


async def test_user_and_password_in_the_address(processes: Processes) -> None:
    node = await processes.nats("--user", "pit", "--pass", "wall")
    code, out, err = await run_command("-m", "producer", "pub", "demo.x", "1", "--confirm",
                                       "--broker", f"nats://pit:wall@127.0.0.1:{node.port}")
    assert code == 0 and out.startswith("published demo.x #1"), err
    code, _, err = await run_command("-m", "producer", "pub", "demo.x", "1",
                                     "--broker", f"nats://pit:nope@127.0.0.1:{node.port}")
    assert code == 2 and "refused" in err and "nope" not in err, err


async def test_the_setup_command_makes_and_checks_the_stream(processes: Processes) -> None:
    node = await processes.nats()
    code, out, err = await run_command("-m", "broker", "--broker", node.address,
                                       "--retain-messages", "500", "--stream", "RACE")
    assert code == 0, err
    assert "'RACE'" in out and "500 messages per topic" in out
    code, _, err = await run_command("-m", "broker", "--broker", node.address,
                                     "--retain-messages", "900", "--stream", "RACE")
    assert code == 2 and "--retain-messages is 900 but the stream has 500" in err
    code, _, err = await run_command("-m", "producer", "pub", "demo.x", "1", "--stream", "RACE",
                                     "--broker", node.address)
    assert code == 0, err
    code, out, err = await run_command("-m", "broker", "stats", "--stream", "RACE",
                                       "--broker", node.address)
    assert code == 0, err
    assert "JetStream stream RACE" in out and "keeps 500 messages per topic" in out
    assert "demo.x" in out


async def test_a_subscriber_rides_out_a_server_restart(
        processes: Processes, caplog: pytest.LogCaptureFixture) -> None:
    """The one node goes away and comes back on the same store: nothing lost, none twice,
    and the outage is logged once per client, not once per attempt."""
    caplog.set_level(logging.INFO, logger="slipstream.client")
    node = await processes.nats()
    async with Client(node.address, name="sub") as consumer, \
               Client(node.address, name="pub") as producer:
        sub = await consumer.subscribe("t.restart", start="earliest")
        for n in range(500):
            await producer.publish("t.restart", n)
        await producer.flush()
        assert len(await take(sub, 500)) == 500
        await node.stop(signal.SIGKILL)

        async def both_cut_off() -> bool:
            return not consumer.connected and not producer.connected

        await wait_for(both_cut_off, "both clients to notice the server is gone")
        node = await processes.restart_nats(node)
        for n in range(500, 1000):
            await producer.publish("t.restart", n)
        await producer.flush()
        rest = await take(sub, 500, timeout_s=40)
        await assert_nothing_more(sub, 1.0)
    assert [m.data for m in rest] == list(range(500, 1000))
    lost = [r for r in caplog.records if "lost the connection to NATS" in r.getMessage()]
    assert len(lost) == 2  # the consumer's and the producer's, each once
    assert sum("reconnected to NATS" in r.getMessage() for r in caplog.records) == 2


async def test_a_cluster_without_quorum_is_said_once_and_its_recovery_too(
        processes: Processes, caplog: pytest.LogCaptureFixture) -> None:
    """Two of three nodes down: the stream has no leader. The publisher says so once,
    retries quietly (JetStream's "duplicate message id is in process" is not an error),
    says when publishes are confirmed again, and every message is stored once."""
    caplog.set_level(logging.DEBUG, logger="slipstream.client")
    nodes = await processes.nats_cluster(3)
    async with Client(nodes[0].address, name="pub") as producer, \
               Client(nodes[0].address, name="sub") as consumer:
        sub = await consumer.subscribe("t.quorum", start="earliest")
        for n in range(100):
            await producer.publish("t.quorum", n)
        await producer.flush()
        await nodes[1].stop(signal.SIGKILL)
        await nodes[2].stop(signal.SIGKILL)
        for n in range(100, 600):
            await producer.publish("t.quorum", n)

        def said(words: str) -> int:
            return sum(words in r.getMessage() for r in caplog.records)

        async def outage_said() -> bool:
            return said("JetStream is not confirming publishes") > 0

        await wait_for(outage_said, "the publisher to say JetStream is not confirming", 30)
        await asyncio.sleep(6)  # the watchdog resends at least once meanwhile, quietly
        for node in nodes[1:]:
            await processes.restart_nats(node)

        async def recovery_said() -> bool:
            return said("JetStream confirms publishes again") > 0

        await wait_for(recovery_said, "the publisher to say publishes are confirmed again", 90)
        await producer.flush()
        got = await take(sub, 600, timeout_s=60)
        await assert_nothing_more(sub, 1.0)
    assert sorted(m.data for m in got) == list(range(600))  # every one, none twice
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                and "JetStream" in r.getMessage()]
    assert said("JetStream is not confirming publishes") == 1, warnings
    assert said("JetStream confirms publishes again") == 1, warnings
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], warnings
    assert producer.errors == []


async def test_replay_and_consumers_work_unchanged_on_nats(processes: Processes) -> None:
    """The bundled session, replayed into NATS: the SQLite writer stores every message once
    and the printer prints each once."""
    node = await processes.nats()
    db = processes.directory / "race.db"
    writer = await processes.command("-m", "consumer", "sqlite", "live.>", "--db", str(db),
                                     "--from", "earliest", "--broker", node.address)
    printer = await processes.command("-m", "consumer", "printer", "live.>", "--json",
                                      "--from", "earliest", "--broker", node.address)
    code, _, err = await run_command("-m", "producer", "replay", str(SESSION),
                                     "--as-fast-as-possible", "--broker", node.address,
                                     timeout_s=120)
    assert code == 0, err

    async def stored() -> bool:
        with sqlite3.connect(db) as conn:
            try:
                return bool(conn.execute("SELECT count(*) FROM messages").fetchone()[0]
                            == REPLAY_MESSAGES)
            except sqlite3.OperationalError:
                return False

    await wait_for(stored, f"{REPLAY_MESSAGES} rows", 60)
    await wait_for(lambda: _lines_at_least(printer.out_path, REPLAY_MESSAGES),  # type: ignore[attr-defined]
                   "the printer", 60)
    assert await writer.stop() == 0 and await printer.stop() == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT seq) FROM messages").fetchone() \
            == (REPLAY_MESSAGES, REPLAY_MESSAGES)
    lines = printer.out_path.read_text().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == REPLAY_MESSAGES


async def _lines_at_least(path: object, count: int) -> bool:
    from pathlib import Path

    assert isinstance(path, Path)
    return path.exists() and path.read_bytes().count(b"\n") >= count


async def test_killing_a_node_of_a_3_node_cluster_loses_nothing_and_repeats_nothing(
        processes: Processes) -> None:
    """R3 across three real servers; one is SIGKILLed mid-replay. The replay finishes, the
    SQLite writer stores every message exactly once, a plain reader gets each once."""
    nodes = await processes.nats_cluster(3)
    seeds = nats_address(nodes)
    async with Client(seeds, name="setup") as setup:
        info = await setup.stats()
        assert info["server"]["replicas"] == 3
    # Everyone starts on the node that will die; nats-py learns the others from it.
    doomed = nodes[0].address
    db = processes.directory / "race.db"
    writer = await processes.command("-m", "consumer", "sqlite", "live.>", "--db", str(db),
                                     "--from", "earliest", "--broker", doomed)
    reader = await processes.command("-m", "consumer", "printer", "live.>", "--json",
                                     "--from", "earliest", "--broker", doomed)
    replay = await processes.command("-m", "producer", "replay", str(SESSION), "--speed",
                                     "400", "--broker", doomed)
    async def under_way() -> bool:
        with sqlite3.connect(db) as conn:
            try:
                return bool(conn.execute("SELECT count(*) FROM messages").fetchone()[0] >= 2000)
            except sqlite3.OperationalError:
                return False

    await wait_for(under_way, "the replay to be under way", 30)
    assert replay.process.returncode is None, "the replay ended before the node was killed"
    await nodes[0].stop(signal.SIGKILL)
    async with asyncio.timeout(180):
        assert await replay.process.wait() == 0, replay.log()

    async def stored() -> bool:
        with sqlite3.connect(db) as conn:
            try:
                return bool(conn.execute("SELECT count(*) FROM messages").fetchone()[0]
                            >= REPLAY_MESSAGES)
            except sqlite3.OperationalError:
                return False

    await wait_for(stored, f"{REPLAY_MESSAGES} rows", 90)
    await wait_for(lambda: _lines_at_least(reader.out_path, REPLAY_MESSAGES),  # type: ignore[attr-defined]
                   "the reader", 90)
    # Nothing pending or unacknowledged: nothing can be delivered again after this.
    await wait_drained(nodes[1].address, "sqlite")
    await wait_drained(nodes[1].address, "printer")
    assert await writer.stop() == 0 and await reader.stop() == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == REPLAY_MESSAGES
    records = [json.loads(line) for line in
               reader.out_path.read_text().splitlines()]  # type: ignore[attr-defined]
    assert len(records) == REPLAY_MESSAGES  # none twice
    assert len({(r["topic"], r["seq"]) for r in records}) == REPLAY_MESSAGES  # none missing
    for process in (writer, reader, replay):  # each of them really lost its node
        assert "lost the connection to NATS" in process.log(), process.log()


async def test_a_killed_durable_writer_resumes_and_stores_everything_once(
        processes: Processes) -> None:
    """SIGKILL leaves deliveries unacknowledged; the next run under the same durable starts
    right after what was acknowledged, so nothing is skipped and nothing is stored twice."""
    node = await processes.nats()
    code, _, err = await run_command("-m", "producer", "replay", str(SESSION),
                                     "--as-fast-as-possible", "--broker", node.address,
                                     timeout_s=120)
    assert code == 0, err
    db = processes.directory / "race.db"
    args = ("-m", "consumer", "sqlite", "live.>", "--db", str(db), "--durable", "w",
            "--from", "earliest", "--broker", node.address)
    first = await processes.command(*args)

    async def rows() -> int:
        with sqlite3.connect(db) as conn:
            try:
                return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
            except sqlite3.OperationalError:
                return 0

    async def some_rows() -> bool:
        return await rows() >= 2000

    await wait_for(some_rows, "the first run to store some rows", 30)
    await first.stop(signal.SIGKILL)
    assert await rows() < REPLAY_MESSAGES, "the first run finished before it was killed"
    nc = await nats.connect(node.address)
    try:
        (info,) = await nc.jetstream().consumers_info("SLIPSTREAM")
    finally:
        await nc.close()
    assert info.delivered is not None and info.ack_floor is not None
    assert info.delivered.stream_seq > info.ack_floor.stream_seq  # left unacknowledged
    again = await processes.command(*args)

    async def all_rows() -> bool:
        return await rows() >= REPLAY_MESSAGES

    await wait_for(all_rows, f"{REPLAY_MESSAGES} rows", 60)
    await wait_drained(node.address, "sqlite")  # nothing left to deliver again
    assert await again.stop() == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT seq) FROM messages").fetchone() \
            == (REPLAY_MESSAGES, REPLAY_MESSAGES)
    assert "0 gaps" in again.log()
