"""Damage a real broker finds while serving, and what --verify and --repair do with it;
a durable that is on disk before its SUBACK (issue 22). Real brokers, real files."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import msgpack

from broker import Client
from broker.storage.records import HEADER, scan
from broker.wire.protocol import Gap
from tests.helpers import Processes, run_command
from tests.integration.test_storage import everything, free_port, on_disk

PAYLOAD_BYTES = 1000
MESSAGES = 3000  # 3 MB: three 1 MiB segments with --retain-bytes 4MiB


async def filled(processes: Processes, data: Path, port: int) -> None:
    broker = await on_disk(processes, data, port, "--retain-bytes", "4MiB")
    async with Client(broker.address) as client:
        for n in range(1, MESSAGES + 1):
            await client.publish_bytes("t", b"%08d" % n + b"." * (PAYLOAD_BYTES - 8),
                                       confirm=n == MESSAGES)
    await broker.stop()


async def test_damage_found_while_serving_is_a_gap_with_its_reason_and_is_counted(
        processes: Processes, tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    await filled(processes, data, port)
    first = sorted((data / "topics" / "t").glob("*.seg"))[0]
    content = bytearray(first.read_bytes())
    # The first record (one PUB's run) of the oldest segment: start-up reads only the
    # tail after its last index mark. The client sent runs, so the record holds several.
    found = scan(bytes(content), 0, 1)
    assert len(set(found.offsets)) >= 2  # so start-up reads only the last record's tail
    offset = 0
    damaged = [seq for seq, at in zip(found.seqs, found.offsets, strict=True) if at == offset]
    damaged_seq, missed = damaged[0], len(damaged)
    content[offset + HEADER.size + 100] ^= 0x04
    first.write_bytes(bytes(content))

    broker = await on_disk(processes, data, port, "--retain-bytes", "4MiB",
                           "--http", "127.0.0.1:0")
    gaps: list[Gap] = []
    log = await everything(broker.address, "t", gaps)
    assert [seq for seq, _ in log] == [*range(1, damaged_seq),
                                       *range(damaged_seq + missed, MESSAGES + 1)]
    assert all(payload.startswith(b"%08d" % seq) for seq, payload in log)
    assert [(g.first_seq, g.missed) for g in gaps] == [(damaged_seq, missed)]
    assert gaps[0].reason.startswith("unreadable: damaged") and first.name in gaps[0].reason
    async with aiohttp.ClientSession() as session, \
            session.get(broker.http_url + "metrics") as response:
        assert f"slipstream_unreadable_total {missed}.0" in await response.text()
    again = await everything(broker.address, "t", gaps)  # a second reader: the same answer
    assert len(again) == MESSAGES - missed and gaps[1] == gaps[0]
    await broker.stop()
    text = broker.log()
    assert text.count("cannot be read: damaged") == 1  # logged once, not per reader
    assert "Traceback" not in text and "Unhandled exception" not in text

    code, _, err = await run_command("-m", "broker", "--port", "0", "--data-dir", str(data),
                                     "--verify")
    assert code == 2 and first.name in err and "--repair" in err.strip().splitlines()[-1]
    broker = await on_disk(processes, data, port, "--retain-bytes", "4MiB", "--repair")
    gaps = []
    log = await everything(broker.address, "t", gaps)
    assert len(log) == MESSAGES - missed and [(g.first_seq, g.missed) for g in gaps] == [
        (damaged_seq, missed)]
    assert f"records from seq {damaged_seq + missed:,}" in broker.log()


async def test_a_new_durable_is_on_disk_before_its_suback_and_survives_a_kill(
        processes: Processes, tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    broker = await on_disk(processes, data, port)
    async with Client(broker.address) as client:
        await client.publish("t", 0, confirm=True)
        sub = await client.subscribe("t", durable="d", auto_ack=False)
        # No wait: the SUBACK came after the position was written.
        saved = msgpack.unpackb((data / "durables.bin").read_bytes())
        assert saved["d"]["acked"] == {"t": 2}
        for n in range(1, 601):
            await client.publish("t", n, confirm=n == 600)
        assert (await anext(sub)).seq == 2
        await broker.kill()  # at once: nothing acknowledged, within the 100 ms interval
    broker = await on_disk(processes, data, port)
    async with Client(broker.address) as client:
        sub = await client.subscribe("t", durable="d")
        first = await anext(sub)
        assert (first.seq, first.data) == (2, 1)  # not 'new': none of the 600 is skipped
