"""The broker on disk (--data-dir): what it confirmed survives SIGKILL, durables resume,
damage is found and named, a full disk refuses publishes without losing anything, and
retention deletes whole segments (issue 13). Real brokers, real files."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from broker import BrokerError, Client, ConnectionLostError
from broker.storage.records import HEADER, scan
from broker.wire.protocol import Gap
from tests.helpers import Processes, RunningBroker, remount, run_command, small_tmpfs, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def on_disk(processes: Processes, data: Path, port: int, *flags: str) -> RunningBroker:
    return await processes.broker("--data-dir", str(data), *flags, port=port)


async def everything(address: str, topic: str,
                     gaps: list[Gap] | None = None) -> list[tuple[int, bytes]]:
    """(seq, payload) of every retained message of `topic`, read from the earliest; the
    gaps the broker reported on the way go into `gaps` (none are expected without it)."""
    async with Client(address, name="reader") as client:
        stats = (await client.stats())["topics"].get(topic, {})
        first_seq, next_seq = stats.get("first_seq", 1), stats.get("next_seq", 1)
        sub = await client.subscribe(topic, start="earliest")
        got: list[tuple[int, bytes]] = []
        while (got[-1][0] if got else first_seq - 1) < next_seq - 1:
            message = await anext(sub)
            if message.gap is not None:
                assert gaps is not None, f"unexpected gap {message.gap}"
                gaps.append(message.gap)
            got.append((message.seq, message.payload))
        return got


async def test_confirmed_messages_survive_twenty_kills_as_a_gap_free_log(
        processes: Processes, tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    broker = await on_disk(processes, data, port)
    confirmed: dict[int, bytes] = {}
    counter = 0
    stop = asyncio.Event()

    async def publish() -> None:
        nonlocal counter
        client = Client(broker.address, name="fast", reconnect_max_delay_s=0.1)
        await client.connect(wait=True)
        try:
            while not stop.is_set():
                batch = []
                for _ in range(50):  # 50 confirmed publishes in flight at once
                    counter += 1
                    payload = counter.to_bytes(8, "big")
                    batch.append((payload, client.publish_bytes("t", payload, confirm=True)))
                for payload, pending in batch:
                    try:
                        seq = await pending
                    except ConnectionLostError:
                        continue  # in doubt: may or may not be stored, either is right
                    assert seq is not None
                    confirmed[seq] = payload
        finally:
            await client.close()

    publisher = asyncio.create_task(publish())
    rng = random.Random(13)
    for _ in range(20):
        await asyncio.sleep(rng.uniform(0.05, 0.3))
        await broker.kill()  # SIGKILL, at a random moment of a fast publish
        broker = await on_disk(processes, data, port)
    await wait_for(lambda: _grew(confirmed, 100), "publishing after the last restart")
    stop.set()
    await publisher
    log = await everything(broker.address, "t")
    seqs = [seq for seq, _ in log]
    assert seqs == list(range(1, len(log) + 1))  # a gap-free prefix, in order
    stored = dict(log)
    assert all(stored.get(seq) == payload for seq, payload in confirmed.items())
    assert len(confirmed) > 1000


async def _grew(confirmed: dict[int, bytes], by: int, _seen: list[int] = []) -> bool:  # noqa: B006
    if not _seen:
        _seen.append(len(confirmed))
    return len(confirmed) >= _seen[0] + by


async def test_the_epoch_and_seqs_are_kept_and_a_new_dir_gets_a_new_epoch(
        processes: Processes, tmp_path: Path) -> None:
    port = free_port()
    broker = await on_disk(processes, tmp_path / "a", port)
    async with Client(broker.address) as client:
        epoch = client.epoch
        assert await client.publish("t", 1, confirm=True) == 1
    await broker.stop()
    broker = await on_disk(processes, tmp_path / "a", port)
    async with Client(broker.address) as client:
        assert client.epoch == epoch
        assert await client.publish("t", 2, confirm=True) == 2
    await broker.stop()
    other = await on_disk(processes, tmp_path / "b", port)
    async with Client(other.address) as client:
        assert client.epoch != epoch


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
async def test_a_durable_resumes_right_after_its_last_ack_across_a_kill(
        processes: Processes, tmp_path: Path, fsync: str) -> None:
    data, port = tmp_path / "data", free_port()
    broker = await on_disk(processes, data, port, "--fsync", fsync)
    async with Client(broker.address) as client:
        for n in range(1000):
            await client.publish("t", n)
        await client.flush()
        sub = await client.subscribe("t", start="earliest", durable="d", auto_ack=False,
                                     window=1000)
        got = [await anext(sub) for _ in range(300)]
        assert got[-1].seq == 300 and sub.unacknowledged == 299  # #300 is being handled
        sub.ack(299, client.generation)

        async def stored() -> bool:
            path = data / "durables.bin"
            return path.exists() and msgpack.unpackb(path.read_bytes()).get(
                "d", {}).get("acked", {}).get("t") == 300
        await wait_for(stored, "the durable position on disk")
        await broker.kill()
    broker = await on_disk(processes, data, port, "--fsync", fsync)
    async with Client(broker.address) as client:
        assert (await client.stats())["topics"]["t"]["next_seq"] == 1001  # all 1,000 kept
        sub = await client.subscribe("t", durable="d")
        first = await anext(sub)
        assert (first.seq, first.data, first.gap) == (300, 299, None)  # right after #299


async def test_a_torn_tail_is_cut_and_the_broker_starts(processes: Processes,
                                                        tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    broker = await on_disk(processes, data, port)
    async with Client(broker.address) as client:
        for n in range(100):
            await client.publish("t", n, confirm=n == 99)
        await client.publish("t", "last", confirm=True)  # a PUB, so a record, of its own
    await broker.kill()
    (segment,) = (data / "topics" / "t").glob("*.seg")
    segment.write_bytes(segment.read_bytes()[:-3])  # a crash in the middle of a write
    broker = await on_disk(processes, data, port)
    log = await everything(broker.address, "t")
    assert [seq for seq, _ in log] == list(range(1, 101))
    assert "cut a torn tail" in broker.log()


async def test_corruption_in_a_segment_stops_the_start_unless_repaired(
        processes: Processes, tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    broker = await on_disk(processes, data, port)
    async with Client(broker.address) as client:
        for n in range(100):  # confirmed one by one: a PUB, so a record, each
            await client.publish_bytes("t", b"%05d" % n, confirm=True)
        await client.publish_bytes("t", b"last", confirm=True)
    await broker.stop()
    (segment,) = (data / "topics" / "t").glob("*.seg")
    damaged = bytearray(segment.read_bytes())
    record_51 = scan(bytes(damaged), 0, 1).offsets[50]
    damaged[record_51 + HEADER.size + 10] ^= 0xFF
    segment.write_bytes(bytes(damaged))
    code, _, err = await run_command("-m", "broker", "--port", "0", "--data-dir", str(data))
    assert code == 2, err
    reason = err.strip().splitlines()[-1]
    assert segment.name in reason and f"offset {record_51:,}" in reason and "--repair" in reason
    broker = await on_disk(processes, data, port, "--repair")
    gaps: list[Gap] = []
    log = await everything(broker.address, "t", gaps)
    # Every intact record is kept; the damaged one is a gap that says why.
    assert [seq for seq, _ in log] == [*range(1, 51), *range(52, 102)]
    assert [(g.first_seq, g.missed) for g in gaps] == [(51, 1)]
    assert "unreadable" in gaps[0].reason


async def test_a_second_broker_on_the_same_dir_refuses_to_start(
        processes: Processes, tmp_path: Path) -> None:
    broker = await on_disk(processes, tmp_path / "data", free_port())
    code, _, err = await run_command("-m", "broker", "--port", "0", "--data-dir",
                                     str(tmp_path / "data"))
    assert code == 2
    assert f"is in use by another broker (pid {broker.pid})" in err.strip().splitlines()[-1]


async def test_retention_on_disk_deletes_whole_segments(processes: Processes,
                                                        tmp_path: Path) -> None:
    data = tmp_path / "data"
    broker = await on_disk(processes, data, free_port(), "--retain-bytes", "4MiB",
                           "--max-frame", "1MiB")
    async with Client(broker.address) as client:
        for _ in range(1000):
            await client.publish_bytes("t", b"x" * 10_000)  # 10 MB through 4 MiB
        await client.publish_bytes("t", b"last", confirm=True)
        topic = (await client.stats())["topics"]["t"]
    segments = sorted((data / "topics" / "t").glob("*.seg"))
    # 1 MiB segments, rolled between appends: a client's burst arrives as runs of up to
    # max-frame each, so a segment holds one or two of them.
    assert 3 <= len(segments) <= 6
    assert topic["first_seq"] == int(segments[0].stem) > 1
    assert topic["next_seq"] == 1002 and topic["retained_bytes"] <= 5 * 2**20
    log = await everything(broker.address, "t")
    assert log[0][0] == topic["first_seq"] and log[-1] == (1001, b"last")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", "2m") as mount_point:
        yield mount_point


async def test_a_full_disk_refuses_publishes_keeps_serving_reads_and_recovers(
        processes: Processes, small_disk: Path) -> None:
    broker = await on_disk(processes, small_disk / "data", free_port())
    confirmed = 0
    async with Client(broker.address) as client:
        with pytest.raises(BrokerError) as refused:
            for _ in range(1000):  # 10 MB into 2 MiB
                await client.publish_bytes("t", b"y" * 10_000, confirm=True)
                confirmed += 1
        assert refused.value.code == "storage" and "No space left" in str(refused.value)
        assert 100 < confirmed < 250
        log = await everything(broker.address, "t")
        assert [seq for seq, _ in log] == list(range(1, confirmed + 1))  # reads still work
        remount(small_disk, "size=64m")
        assert await client.publish_bytes("t", b"again", confirm=True) == confirmed + 1
    assert broker.log().count("not stored: No space left") == 1  # logged once
    assert "storage works again" in broker.log()


async def test_flush_returns_once_the_broker_has_stored_what_was_published(
        processes: Processes, tmp_path: Path) -> None:
    """flush() means the same on both engines: stored, not only written to the socket."""
    data, port = tmp_path / "data", free_port()
    broker = await on_disk(processes, data, port)
    async with Client(broker.address) as client:
        for n in range(20_000):
            await client.publish_bytes("t", n.to_bytes(4, "big"))  # none confirmed
        await client.flush()
        await broker.kill()  # at once: the kernel has what the broker wrote
    broker = await on_disk(processes, data, port)
    log = await everything(broker.address, "t")
    assert [payload for _, payload in log] == [n.to_bytes(4, "big") for n in range(20_000)]
