"""`python -m producer udp`: the game's UDP telemetry, decoded once, published for everyone.

The receive path never waits for the broker: each datagram is decoded and
queued at once, and a publisher task drains the queue. If the broker is
slow or away, the queue fills and further datagrams are dropped, counted
and reported; the client reconnects by itself. Each decoded packet goes to
`game.<packet>` (header included); with --raw the untouched datagram also
goes to `game.raw`. A bridge told which rig it hears (`--rig NAME`, or one
`--listen PORT=NAME` per rig) publishes on `game.<rig>.<packet>` instead
(f1vocab/game/topics.py), so several rigs share one broker without mixing.
Each lap a car completes is published once more on `laps.game` (`laps.game.<rig>`),
in the shape of live timing's laps (f1vocab/laps.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from broker.client import Client
from broker.limits import LogThrottle
from f1vocab.game.decoder import GameDecoder, Packet
from f1vocab.game.packed import pack_datagram
from f1vocab.game.topics import RAW, game_topic
from f1vocab.laps import GameLapTracker, game_laps_topic
from producer.game.capture import CaptureWriter

log = logging.getLogger("slipstream.game")
QUEUE_DATAGRAMS = 10_000  # about three seconds of a full 22-car session


@dataclass
class BridgeStats:
    received: int = 0
    decoded: Counter[str] = field(default_factory=Counter)
    undecodable: Counter[str] = field(default_factory=Counter)  # by kind, a bounded set
    published: int = 0
    dropped: int = 0
    by_rig: Counter[str] = field(default_factory=Counter)  # datagrams received, per rig

    def summary(self) -> str:
        kinds = ", ".join(f"{name} {count}" for name, count in sorted(self.decoded.items()))
        rigs = "".join(f", {rig} {count:,}" for rig, count in sorted(self.by_rig.items()))
        return (f"received {self.received:,} datagrams{rigs}, decoded "
                f"{sum(self.decoded.values()):,} ({kinds or 'none'}), undecodable "
                f"{sum(self.undecodable.values()):,}, published {self.published:,}, dropped "
                f"{self.dropped:,}")


class Bridge(asyncio.DatagramProtocol):
    """One publisher for one or several UDP ports: as a protocol itself, the datagrams of
    `rig` (None: the one rig, on game.<packet>); `for_rig(name)` for each further port."""

    def __init__(self, client: Client, raw: bool, record: Path | None,
                 rig: str | None = None) -> None:
        self.client = client
        self.raw = raw
        self.rig = rig
        self.decoder = GameDecoder()
        self.stats = BridgeStats()
        self.capture = CaptureWriter(record) if record else None
        # (topic, payload): the payload already encoded, as the broker will hold it.
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_DATAGRAMS)
        self.warnings = LogThrottle(log)
        self.laps: dict[str | None, GameLapTracker] = {}  # per rig: laps completed, for laps.game

    def for_rig(self, rig: str) -> asyncio.DatagramProtocol:
        """The protocol for a port that hears `rig`'s game: into this bridge's queue."""
        return _RigPort(self, rig)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received(data, addr, self.rig)

    def received(self, data: bytes, addr: tuple[str | Any, int], rig: str | None) -> None:
        """The hot path: decode and queue, never wait."""
        self.stats.received += 1
        if rig is not None:
            self.stats.by_rig[rig] += 1
        if self.capture is not None:
            self.capture.write(time.time(), data)
        packet = self.decoder.decode(data)
        if isinstance(packet, Packet):
            self.stats.decoded[packet.name] += 1
            for lap in self._game_laps(rig).observe(packet.name, packet.data):
                self._queue(game_laps_topic(rig), msgpack.packb(lap))  # laps.game[.rig]
            # The datagram itself, not its map: 1x its size instead of 5-17x
            # (f1vocab/game/packed.py); consumers still read message.data as the map.
            self._queue(game_topic(packet.name, rig), pack_datagram(data))
        else:
            key = self.decoder.kind_of(packet)  # bounded: a flood of random ids is one key
            self.stats.undecodable[key] += 1
            self.warnings.warning(
                f"undecodable:{key}", "undecodable datagram from %s:%s: %s (%s; logged once "
                "per kind, then counted every 10 s)", addr[0], addr[1], packet.reason, key)
        if self.raw:
            self._queue(game_topic(RAW, rig), msgpack.packb(data))

    def _game_laps(self, rig: str | None) -> GameLapTracker:
        laps = self.laps.get(rig)
        if laps is None:
            laps = self.laps[rig] = GameLapTracker(rig)
        return laps

    def _queue(self, topic: str, payload: bytes) -> None:
        try:
            self.queue.put_nowait((topic, payload))
        except asyncio.QueueFull:
            self.stats.dropped += 1
            if self.stats.dropped in (1, 100, 10_000) or self.stats.dropped % 100_000 == 0:
                log.warning("broker not keeping up: %d messages dropped so far",
                            self.stats.dropped)

    async def publish_forever(self) -> None:
        while True:
            topic, payload = await self.queue.get()
            await self.client.publish_bytes(topic, payload)
            self.stats.published += 1
            self.queue.task_done()

    async def drain(self, timeout_s: float = 2.0) -> None:
        """On the way out: publish what is queued (briefly), then flush."""
        if not self.client.connected:
            self.stats.dropped += self.queue.qsize()  # never reached the broker: say so
            self.queue = asyncio.Queue(QUEUE_DATAGRAMS)
        try:
            async with asyncio.timeout(timeout_s):
                while not self.queue.empty():
                    topic, payload = self.queue.get_nowait()
                    await self.client.publish_bytes(topic, payload)
                    self.stats.published += 1
                await self.client.flush()
        except TimeoutError:
            self.stats.dropped += self.queue.qsize()
        if self.capture is not None:
            self.capture.close()


class _RigPort(asyncio.DatagramProtocol):
    """One more UDP port of a bridge: its datagrams are `rig`'s."""

    def __init__(self, bridge: Bridge, rig: str) -> None:
        self.bridge = bridge
        self.rig = rig

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.bridge.received(data, addr, self.rig)
