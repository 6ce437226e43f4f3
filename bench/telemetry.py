"""`make bench` (telemetry): what a game packet costs the broker, before and after issue 25.

For each packet type of a simulated 20-car session (format 2026): the game's
datagram, the msgpack map the bridge used to publish, and what it publishes now
(the datagram in msgpack extension 71, f1vocab/game/packed.py); then MB per rig-hour
at 60 Hz with the simulator's mix of packets, and how long a consumer takes to turn
a packed packet back into its map (the cost moved from the wire to `message.data`).

    python bench/telemetry.py
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from f1vocab.game.decoder import GameDecoder, Packet
from f1vocab.game.packed import pack_datagram, unpack_datagram
from producer.game.simulator import SessionSimulator

SECONDS = 20  # of simulated session at 60 Hz: the mix of packet types an hour is made of


def main() -> int:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
