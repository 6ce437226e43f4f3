"""`make bench` (telemetry): what a game packet costs the broker, before and after issue 25.

For each packet type of a simulated 20-car session (format 2026): the game's
datagram, the msgpack map the bridge used to publish, and what it publishes now
(the datagram in msgpack extension 71, f1vocab/game/packed.py); then MB per rig-hour
at 60 Hz with the simulator's mix of packets, and how long a consumer takes to turn
a packed packet back into its map (the cost moved from the wire to `message.data`).
Then the broker alone: one publisher process per rig sending the simulator's packets
(packed, as the bridge publishes them, on game.<rig>.<packet>) as fast as it can, one
consumer of game.>: packets per second through the broker for 1 and 4 rigs, every
packet counted. Last, end to end: `udp-sim --rigs N` as fast as it can send into one
UDP bridge with a port per rig, a broker and a consumer of game.>: packets per second
for 1 and 4 rigs (there the simulator and the bridge, Python both, are the limit).

    python bench/telemetry.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import spread

from broker import Client
from f1vocab.game.decoder import GameDecoder, Packet
from f1vocab.game.packed import pack_datagram, unpack_datagram
from producer.game.simulator import SessionSimulator

SECONDS = 20  # of simulated session at 60 Hz: the mix of packet types an hour is made of
ROOT = Path(__file__).resolve().parents[1]
RIG_SECONDS = 20  # of simulated session per rig, end to end, at 60 Hz, 20 cars
BROKER_PACKETS = 60_000  # per rig, through the broker alone (about 2 minutes of a rig)


def sizes() -> None:
    decoder = GameDecoder()
    sizes: dict[str, tuple[int, int, int]] = {}
    per_type: Counter[str] = Counter()
    totals = Counter[str]()
    samples: list[bytes] = []
    for _, datagrams in SessionSimulator(2026, cars=20, hz=60, duration_s=SECONDS).frames():
        for datagram in datagrams:
            packet = decoder.decode(datagram)
            assert isinstance(packet, Packet)
            as_map, packed = len(msgpack.packb(packet.data)), len(pack_datagram(datagram))
            sizes[packet.name] = (len(datagram), as_map, packed)
            per_type[packet.name] += 1
            totals.update(datagram=len(datagram), map=as_map, packed=packed)
            if packet.name == "car_telemetry":
                samples.append(datagram)
    print(f"game packets of a simulated 20-car session, format 2026, {SECONDS} s at 60 Hz\n")
    print("| packet | datagram B | as a map B (before) | packed B (now) | now / datagram |")
    print("|---|---:|---:|---:|---:|")
    for name, (size, as_map, packed) in sorted(sizes.items()):
        print(f"| {name} | {size:,} | {as_map:,} | {packed:,} | {packed / size:.3f} |")
    hour = 3600 / SECONDS / 1e6
    print(f"\nper rig-hour at 60 Hz: datagrams {totals['datagram'] * hour:,.0f} MB, as maps "
          f"{totals['map'] * hour:,.0f} MB (before), packed {totals['packed'] * hour:,.0f} MB "
          f"(now): {totals['map'] / totals['packed']:.1f}x less")
    payloads = [pack_datagram(d) for d in samples]
    started = time.perf_counter()
    for payload in payloads:
        unpack_datagram(msgpack.unpackb(payload).data)
    each_us = (time.perf_counter() - started) / len(payloads) * 1e6
    maps = [msgpack.packb(decoder.decode(d).data) for d in samples]  # type: ignore[union-attr]
    started = time.perf_counter()
    for payload in maps:
        msgpack.unpackb(payload)
    before_us = (time.perf_counter() - started) / len(maps) * 1e6
    print(f"a consumer reading message.data of game.car_telemetry: {each_us:.1f} µs from the "
          f"packed datagram, {before_us:.1f} µs from the map before")


def free_ports(count: int) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port + count < 65536:
            return port
    raise RuntimeError("no UDP ports")


async def rigs_run(rigs: int) -> tuple[float, int, int]:
    """(packets/s at the consumer, packets the simulators sent, packets the consumer got)."""
    python = sys.executable
    broker = await asyncio.create_subprocess_exec(
        python, "-m", "broker", "--port", "0", "-q", cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    assert broker.stdout is not None
    address = "127.0.0.1:" + (await broker.stdout.readline()).decode().rsplit(":", 1)[1].strip()
    port = free_ports(rigs)
    listens = [arg for rig in range(rigs) for arg in ("--listen", f"127.0.0.1:{port + rig}=r{rig}")]
    bridge = await asyncio.create_subprocess_exec(
        python, "-m", "producer", "udp", *listens, "--broker", address, "-q", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert bridge.stdout is not None
        for _ in range(rigs):
            await bridge.stdout.readline()
        async with Client(address, name="bench-rigs") as client:
            sub = await client.subscribe("game.>")
            started = time.perf_counter()
            sim = await asyncio.create_subprocess_exec(
                python, "-m", "producer", "udp-sim", "--rigs", str(rigs), "--to",
                f"127.0.0.1:{port}", "--duration", str(RIG_SECONDS), "--as-fast-as-possible",
                cwd=ROOT, stderr=asyncio.subprocess.PIPE)
            _, err = await sim.communicate()
            sent = int(err.decode().split("sent ")[1].split(" ")[0].replace(",", ""))
            got, last = 0, time.perf_counter()
            try:
                async with asyncio.timeout(60):
                    async for batch in sub.batches():
                        got += len(batch)
                        last = time.perf_counter()
                        if got >= sent:
                            break
            except TimeoutError:
                pass
        return got / (last - started), sent, got
    finally:
        for process in (bridge, broker):
            if process.returncode is None:
                process.terminate()
                await process.wait()


def rig_packets(seconds: float = 2.0) -> list[tuple[str, bytes]]:
    """(packet name, what the bridge publishes) for `seconds` of a 20-car session."""
    decoder = GameDecoder()
    packets = []
    for _, datagrams in SessionSimulator(2026, cars=20, hz=60, duration_s=seconds).frames():
        for datagram in datagrams:
            packet = decoder.decode(datagram)
            assert isinstance(packet, Packet)
            packets.append((packet.name, pack_datagram(datagram)))
    return packets


async def publish_rig(address: str, rig: str, count: int) -> None:
    """One rig's publisher, in a process of its own: `count` packets, as fast as it can."""
    packets = rig_packets()
    async with Client(address, name=f"bench-{rig}") as client:
        for index in range(count):
            name, payload = packets[index % len(packets)]
            await client.publish_bytes(f"game.{rig}.{name}", payload)
        await client.flush()


async def broker_run(rigs: int) -> tuple[float, float, int, int]:
    """(packets/s at the consumer, MB/s, packets sent, packets received)."""
    python = sys.executable
    broker = await asyncio.create_subprocess_exec(
        python, "-m", "broker", "--port", "0", "-q", cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    assert broker.stdout is not None
    address = "127.0.0.1:" + (await broker.stdout.readline()).decode().rsplit(":", 1)[1].strip()
    sent = rigs * BROKER_PACKETS
    try:
        async with Client(address, name="bench-rigs") as client:
            sub = await client.subscribe("game.>")
            publishers = [await asyncio.create_subprocess_exec(
                python, __file__, "--publish-rig", address, f"r{rig}", str(BROKER_PACKETS),
                cwd=ROOT) for rig in range(rigs)]
            got = size = 0
            started = last = 0.0
            try:
                async with asyncio.timeout(120):
                    async for batch in sub.batches():
                        if not got:
                            started = time.perf_counter()
                        got += len(batch)
                        size += sum(len(message.payload) for message in batch)
                        last = time.perf_counter()
                        if got >= sent:
                            break
            except TimeoutError:
                pass
            for publisher in publishers:
                await publisher.wait()
        seconds = max(last - started, 1e-9)
        return got / seconds, size / seconds / 1e6, sent, got
    finally:
        broker.terminate()
        await broker.wait()


async def broker_table(runs: int) -> None:
    print(f"\nthe broker alone: N publisher processes, one per rig, each sending "
          f"{BROKER_PACKETS:,} packed packets of a 20-car session (game.<rig>.<packet>, as the "
          "bridge publishes them) as fast as it can -> broker -> one consumer of game.> "
          f"({runs} runs, median [min..max])\n")
    print("| rigs | packets/s through the broker | MB/s | sent | received |")
    print("|---:|---:|---:|---:|---:|")
    for rigs in (1, 4):
        results = [await broker_run(rigs) for _ in range(runs)]
        rates = spread([rate for rate, _, _, _ in results])
        print(f"| {rigs} | {rates} | {statistics.median(r[1] for r in results):,.1f} | "
              f"{results[-1][2]:,} | {results[-1][3]:,} |", flush=True)
    print("(a rig sends about 540 packets/s at 60 Hz with 20 cars)")


async def rigs_table(runs: int) -> None:
    print(f"\nend to end, udp-sim --rigs N (20 cars, 60 Hz, {RIG_SECONDS} s each, as fast as "
          "it sends) -> one bridge, a port per rig -> broker -> one consumer of game.> "
          f"({runs} runs, median [min..max])\n")
    print("| rigs | packets/s at the consumer | sent | received (lost: dropped at the bridge) |")
    print("|---:|---:|---:|---:|")
    for rigs in (1, 4):
        results = [await rigs_run(rigs) for _ in range(runs)]
        rates = spread([rate for rate, _, _ in results])
        print(f"| {rigs} | {rates} | {results[-1][1]:,} | {results[-1][2]:,} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--publish-rig", nargs=3, metavar=("ADDRESS", "RIG", "COUNT"),
                        help=argparse.SUPPRESS)  # one rig's publisher, run by this script
    args = parser.parse_args()
    if args.publish_rig:
        address, rig, count = args.publish_rig
        asyncio.run(publish_rig(address, rig, int(count)))
        return 0
    sizes()
    asyncio.run(broker_table(args.runs))
    asyncio.run(rigs_table(args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
