"""The game UDP path with real processes: simulator -> UDP -> bridge -> broker -> consumers."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path
from typing import Any

from broker import Client, Message
from f1vocab.game.decoder import GameDecoder, Packet
from producer.game.capture import CaptureReport, read_capture
from producer.game.simulator import NAMES, SessionSimulator
from tests.helpers import (
    Processes,
    RunningProcess,
    free_udp_port,
    run_command,
    wait_udp_read,
)

DECODER = GameDecoder()


async def bridge(processes: Processes, broker: str, *flags: str) -> tuple[RunningProcess, int]:
    port = free_udp_port()
    process = await processes.command("-m", "producer", "udp", "--listen",
                                      f"127.0.0.1:{port}", "--broker", broker, *flags)
    out: Path = process.out_path  # type: ignore[attr-defined]
    async with asyncio.timeout(15):
        while "listening" not in out.read_text():
            await asyncio.sleep(0.05)
    return process, port


async def simulate(port: int, *flags: str) -> str:
    code, _, err = await run_command("-m", "producer", "udp-sim", "--to", f"127.0.0.1:{port}",
                                     "--hz", "10", "--duration", "60", "--cars", "20",
                                     "--as-fast-as-possible", *flags, timeout_s=120)
    assert code == 0, err
    return err


async def record(processes: Processes, broker: str, capture: Path, seconds: int) -> None:
    """A simulated session of `seconds` through a bridge that records it to `capture`."""
    udp, port = await bridge(processes, broker, "--record", str(capture))
    await simulate(port, "--duration", str(seconds))
    await wait_udp_read(port)  # the bridge has taken (and recorded) every datagram
    assert await udp.stop(signal.SIGINT) == 0


async def collect(client: Client, pattern: str, count: int) -> list[Message]:
    sub = await client.subscribe(pattern, start="earliest")
    async with asyncio.timeout(20):
        return [await anext(sub) for _ in range(count)]


def per_topic(items: list[tuple[str, Any]]) -> dict[str, list[Any]]:
    topics: dict[str, list[Any]] = {}
    for topic, data in items:
        topics.setdefault(topic, []).append(data)
    return topics


def decoded(capture: Path) -> list[tuple[str, Any]]:
    packets = [DECODER.decode(datagram) for _, datagram in read_capture(capture, CaptureReport())]
    assert all(isinstance(p, Packet) for p in packets)
    return [(f"game.{p.name}", p.data) for p in packets if isinstance(p, Packet)]


async def test_simulator_to_consumer_delivers_exactly_what_was_sent(
        processes: Processes, tmp_path: Path) -> None:
    broker = await processes.broker()
    capture = tmp_path / "session.cap"
    udp, port = await bridge(processes, broker.address, "--record", str(capture))
    err = await simulate(port, "--format", "2025", "--laps", "1")
    sent = int(err.split("sent ")[1].split()[0].replace(",", ""))
    async with Client(broker.address) as client:
        messages = await collect(client, "game.>", sent)
    assert await udp.stop(signal.SIGINT) == 0
    assert f"received {sent:,} datagrams, decoded {sent:,}" in udp.log()
    assert "undecodable 0, published" in udp.log() and "dropped 0" in udp.log()
    # Every datagram the bridge received (its capture) arrived, decoded, in order per topic.
    assert per_topic([(m.topic, m.data) for m in messages]) == per_topic(decoded(capture))
    events = [m.data["event_string_code"] for m in messages if m.topic == "game.event"]
    # The safety car in and out before the first lap is done; then each fastest lap.
    assert events[:4] == ["SSTA", "PENA", "SCAR", "SCAR"] and events[-1] == "SEND"
    assert set(events[4:-1]) == {"FTLP"}


async def test_a_capture_replays_to_the_same_messages(processes: Processes,
                                                      tmp_path: Path) -> None:
    broker = await processes.broker()
    capture = tmp_path / "session.cap"
    await record(processes, broker.address, capture, seconds=20)
    records = list(read_capture(capture, CaptureReport()))
    replayed = await processes.broker()
    code, _, err = await run_command("-m", "producer", "udp-replay", str(capture),
                                     "--speed", "20", "--broker", replayed.address)
    assert code == 0, err
    async with Client(broker.address) as live, Client(replayed.address) as again:
        first = await collect(live, "game.>", len(records))
        second = await collect(again, "game.>", len(records))
    assert per_topic([(m.topic, m.data) for m in second]) == \
        per_topic([(m.topic, m.data) for m in first])


async def test_udp_forward_re_emits_the_exact_datagrams(processes: Processes,
                                                        tmp_path: Path) -> None:
    broker = await processes.broker()
    capture = tmp_path / "session.cap"
    udp, port = await bridge(processes, broker.address, "--raw", "--record", str(capture))
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.1", 0))
    target.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    target.setblocking(False)
    forwarder = await processes.command("-m", "consumer", "udp-forward", "--to",
                                        f"127.0.0.1:{target.getsockname()[1]}",
                                        "--broker", broker.address)
    async with Client(broker.address) as client:
        async with asyncio.timeout(10):
            while "udp-forward" not in [c["name"] for c in (await client.stats())["connections"]]:
                await asyncio.sleep(0.05)
    await simulate(port, "--duration", "15")
    expected = [datagram for _, datagram in read_capture(capture, CaptureReport())]
    received: list[bytes] = []
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(20):
        while len(received) < len(expected):
            received.append(await loop.sock_recv(target, 65536))
    target.close()
    assert received == expected  # byte for byte, in order
    assert await forwarder.stop(signal.SIGINT) == 0
    assert await udp.stop(signal.SIGINT) == 0


async def test_a_torn_capture_replays_every_whole_record(processes: Processes,
                                                        tmp_path: Path) -> None:
    broker = await processes.broker()
    capture = tmp_path / "torn.cap"
    await record(processes, broker.address, capture, seconds=5)
    whole = len(list(read_capture(capture, CaptureReport())))
    capture.write_bytes(capture.read_bytes()[:-7])  # as if the machine died mid-write
    report = CaptureReport()
    assert len(list(read_capture(capture, report))) == whole - 1
    assert report.torn is not None and "torn record" in report.torn
    code, _, err = await run_command("-m", "producer", "udp-replay", str(capture),
                                     "--as-fast-as-possible", "--broker", broker.address)
    assert code == 0 and "torn record" in err
    assert f"received {whole - 1:,} datagrams" in err


async def test_undecodable_datagrams_are_counted_logged_once_and_forwarded_raw(
        processes: Processes) -> None:
    broker = await processes.broker()
    udp, port = await bridge(processes, broker.address, "--raw")
    junk = [b"\x00" * 3, b"\xe7\x07" + bytes(40), b"hello world, not telemetry",
            b"\xe9\x07" + bytes(4) + b"\x06" + bytes(10), b"\xe9\x07" + bytes(4) + b"\x06"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for datagram in junk:
            sender.sendto(datagram, ("127.0.0.1", port))
    async with Client(broker.address) as client:
        raw = await collect(client, "game.raw", len(junk))
    assert [m.data for m in raw] == junk
    assert await udp.stop(signal.SIGINT) == 0
    log = udp.log()
    assert "received 5 datagrams, decoded 0 (none), undecodable 5" in log
    assert "unknown packet format 2023" in log
    assert "car_telemetry (format 2025, id 6) must be 1352 bytes, got 17" in log
    assert log.count("(format 2025, id 6) must be") == 1  # once per (format, id)


async def test_the_bridge_keeps_receiving_with_no_broker(processes: Processes) -> None:
    udp, port = await bridge(processes, "127.0.0.1:1")
    err = await simulate(port, "--duration", "5")
    sent = int(err.split("sent ")[1].split()[0].replace(",", ""))
    await wait_udp_read(port)
    assert await udp.stop(signal.SIGINT) == 0
    assert f"received {sent:,} datagrams, decoded {sent:,}" in udp.log()
    assert f"published 0, dropped {sent:,}" in udp.log()
    assert "cannot reach broker at 127.0.0.1:1" in udp.log()


async def test_bad_addresses_name_their_flag_and_exit_2(processes: Processes) -> None:
    broker = await processes.broker()
    code, _, err = await run_command("-m", "producer", "udp-sim", "--to", "127.0.0.1:70000",
                                     "--duration", "1")
    assert code == 2 and "--to: port 70000 in '127.0.0.1:70000' is outside 0..65535" in err
    code, _, err = await run_command("-m", "consumer", "udp-forward", "--to", "host:port",
                                     "--broker", broker.address)
    assert code == 2 and "--to: address 'host:port' is not HOST:PORT" in err


async def test_a_flood_of_random_undecodable_datagrams_logs_a_few_lines(
        processes: Processes) -> None:
    broker = await processes.broker()
    udp, port = await bridge(processes, broker.address)
    flood = [n.to_bytes(2, "little") + bytes(4) + bytes([n % 256]) + bytes(n % 50)
             for n in range(5000)]  # every format and id the header can carry
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        for datagram in flood:
            sender.sendto(datagram, ("127.0.0.1", port))
    assert await udp.stop(signal.SIGINT) == 0
    log = udp.log()
    received = int(log.split("received ")[1].split()[0].replace(",", ""))
    assert received > 0 and f"undecodable {received:,}" in log
    warnings = [line for line in log.splitlines() if "undecodable datagram" in line]
    assert 1 <= len(warnings) <= 10, len(warnings)  # 13,960 lines before (one per id)


async def test_each_simulator_run_is_a_session_of_its_own(processes: Processes) -> None:
    """Issue 25: every run used one session uid, so a second driver's laps had the first
    one's lap ids and were dropped. Each run now draws its own, as the game does."""
    broker = await processes.broker()
    udp, port = await bridge(processes, broker.address)
    outputs = [await simulate(port, "--duration", "2", "--cars", "2") for _ in range(2)]
    outputs.append(await simulate(port, "--duration", "2", "--cars", "2", "--session-uid",
                                  "77"))
    await wait_udp_read(port)
    assert await udp.stop(signal.SIGINT) == 0
    said = [int(out.split("session uid ")[1].split(")")[0]) for out in outputs]
    assert said[0] != said[1] and said[2] == 77
    async with Client(broker.address) as client:
        sessions = await collect(client, "game.session", 9)  # 3 per run: at 0, 1 and 2 s
    assert [m.data["header"]["session_uid"] for m in sessions] == [
        uid for uid in said for _ in range(3)]


def session_uids(said: str) -> list[int]:
    """The session uids `udp-sim` says it used (one per rig)."""
    return [int(uid) for uid in said.split("session uid ")[1].split(")")[0].split(", ")]


def laps_of_every_car(laps_each: int, hz: float, cars: int, uid: int) -> dict[str, list[int]]:
    """Per car index, the valid laps (ms) the simulator completes: what laps.game must say."""
    laps: dict[str, list[int]] = {}
    before: dict[int, int] = {}
    simulator = SessionSimulator(cars=cars, hz=hz, session_uid=uid, laps=laps_each)
    for _, datagrams in simulator.frames():
        for datagram in datagrams:
            packet = DECODER.decode(datagram)
            if isinstance(packet, Packet) and packet.name == "lap_data":
                for index, car in enumerate(packet.data["lap_data"][:cars]):
                    if before.get(index, car["current_lap_num"]) < car["current_lap_num"] \
                            and car["last_lap_time_in_ms"]:
                        laps.setdefault(str(index), []).append(car["last_lap_time_in_ms"])
                    before[index] = car["current_lap_num"]
    return laps


async def test_the_bridge_publishes_every_completed_lap_once_on_laps_game(
        processes: Processes) -> None:
    """Issue 25: one lap vocabulary: the game's laps in the shape of live timing's, derived
    once at the bridge, each car's every lap with its driver's name, per rig."""
    broker = await processes.broker()
    udp, port = await bridge(processes, broker.address, "--rig", "a")
    said = await simulate(port, "--laps", "2", "--cars", "3", "--hz", "4")
    await wait_udp_read(port)
    assert await udp.stop(signal.SIGINT) == 0
    expected = laps_of_every_car(2, 4, 3, session_uids(said)[0])
    async with Client(broker.address) as client:
        laps = await collect(client, "laps.>", sum(map(len, expected.values())))
        stats = await client.stats(topics="laps.>")
    assert {m.topic for m in laps} == {"laps.game.a"}
    assert stats["topics"]["laps.game.a"]["published"] == len(laps)  # none more
    got: dict[str, list[int]] = {}
    for message in laps:
        got.setdefault(message.data["number"], []).append(message.data["time_ms"])
    assert got == expected and len(expected) == 3
    lap = laps[0].data
    assert (lap["source"], lap["rig"], lap["track"], lap["valid"]) == (
        "game", "a", "Silverstone", True)
    assert lap["name"] == NAMES[int(lap["number"])]
