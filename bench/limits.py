"""`make bench` (limits): what hostile or careless clients cost the broker (issue 12).

Each scenario starts a fresh broker, does one thing that once knocked it over,
and reports the broker's peak memory (VmHWM) and how long a bystander's PING
waited meanwhile. `--root DIR` runs the broker of another checkout (the same
scenarios, to compare before and after). Frames are written by hand, so the
scenarios speak only what every version of the protocol understands.

    python bench/limits.py                 # this checkout
    python bench/limits.py --root /tmp/old # another one
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import memory_mib

ROOT = Path(__file__).resolve().parents[1]


def frame(*fields: object) -> bytes:
    body = msgpack.packb(list(fields))
    return struct.pack(">I", len(body)) + body


def hello(name: str, token: str | None = None) -> bytes:
    return frame(1, 1, name, token)


class Broker:
    def __init__(self, root: Path, flags: list[str]) -> None:
        self.root, self.flags = root, flags
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0

    async def __aenter__(self) -> Broker:
        known = await self._known_flags()
        # Pairs of flag and value; an older broker without a flag runs without it.
        flags = [part for flag, value in zip(self.flags[::2], self.flags[1::2], strict=True)
                 if flag in known for part in (flag, value)]
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broker", "--port", "0", "-q", *flags, cwd=self.root,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 15)
        self.port = int(line.decode().rsplit(":", 1)[1])
        return self

    async def _known_flags(self) -> str:
        helper = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broker", "--help", cwd=self.root,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await helper.communicate()
        return out.decode()

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def connect(self, name: str | None = "bench"
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        if name is not None:
            writer.write(hello(name))
            await reader.read(65536)  # WELCOME
        return reader, writer


class Pinger:
    """A bystander: PING, wait for PONG, again; the worst wait is the broker's stall."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.worst_s = 0.0
        self.answered = 0

    async def run(self, duration_s: float) -> None:
        reader, writer = await self.broker.connect("bystander")
        deadline = time.monotonic() + duration_s
        try:
            while time.monotonic() < deadline:
                started = time.monotonic()
                writer.write(frame(11, self.answered + 1))
                try:
                    data = await asyncio.wait_for(reader.read(65536), deadline + 30 - started)
                except TimeoutError:
                    self.worst_s = max(self.worst_s, time.monotonic() - started)
                    return
                if not data:
                    return
                self.worst_s = max(self.worst_s, time.monotonic() - started)
                self.answered += 1
                await asyncio.sleep(0.01)
        finally:
            writer.close()


async def flood_of_requests(root: Path) -> str:
    """Item 1: PING and STATS from a client that never reads."""
    async with Broker(root, ["--write-timeout", "2"]) as broker:
        _, writer = await broker.connect("flooder")
        pinger = Pinger(broker)
        ping = asyncio.create_task(pinger.run(8))
        flood = b"".join(frame(13, n) + frame(11, n) for n in range(20_000))
        for _ in range(40):  # 40 x 20,000 requests, 17 MB of them
            if writer.transport.is_closing():
                break  # the broker cut us off: what we measure has happened
            writer.write(flood)
            await asyncio.sleep(0.15)
        await ping
        writer.transport.abort()
        return (f"peak RSS {memory_mib(broker.pid, 'VmHWM'):,.0f} MiB, bystander's worst PING "
                f"{pinger.worst_s * 1000:,.0f} ms ({pinger.answered} answered)")


async def evicted_payloads(root: Path) -> str:
    """Item 2: 300 x 1 MB through a topic that keeps 64 MiB, then RSS at rest."""
    async with Broker(root, ["--max-frame", "2MiB"]) as broker:
        reader, writer = await broker.connect("big")
        payload = b"x" * 1_000_000
        for n in range(300):
            writer.write(frame(3, "big", [payload], None))
            if n % 10 == 9:
                await writer.drain()
        writer.write(frame(11, 1))
        await reader.read(65536)  # PONG: every PUB is in
        await asyncio.sleep(0.5)
        writer.close()
        return (f"RSS {memory_mib(broker.pid, 'VmRSS'):,.0f} MiB at rest for 64 MiB retained "
                f"(peak {memory_mib(broker.pid, 'VmHWM'):,.0f} MiB)")


async def evicted_small_payloads(root: Path) -> str:
    """Item 2 again: 150,000 x 1,000 B at the default retention (64 MiB kept)."""
    async with Broker(root, []) as broker:
        reader, writer = await broker.connect("small")
        payloads = [b"y" * 1000] * 100
        for n in range(1500):
            writer.write(frame(3, "small", payloads, None))
            if n % 50 == 49:
                await writer.drain()
        writer.write(frame(11, 1))
        await reader.read(65536)
        await asyncio.sleep(0.5)
        writer.close()
        return f"RSS {memory_mib(broker.pid, 'VmRSS'):,.0f} MiB at rest for 64 MiB retained"


async def before_hello(root: Path) -> str:
    """Item 3: 300 connections that start a 1 MiB frame and never finish HELLO."""
    async with Broker(root, ["--token", "s3cret", "--handshake-timeout", "30"]) as broker:
        writers = []
        for _ in range(300):
            _, writer = await broker.connect(None)
            writer.write(struct.pack(">I", 1_000_000) + b"\x94" + b"x" * 999_000)
            writers.append(writer)
        await asyncio.sleep(2)
        peak = memory_mib(broker.pid, "VmHWM")
        for writer in writers:
            writer.transport.abort()
        return f"peak RSS {peak:,.0f} MiB with 300 connections before HELLO"


async def many_topics(root: Path) -> str:
    """Item 5: 200,000 one-message topics, and 100,000 SUBs on one connection."""
    async with Broker(root, []) as broker:
        reader, writer = await broker.connect("topics")
        answers = asyncio.create_task(read_until_pong(reader, frame(12, 1)))
        for start in range(0, 200_000, 10_000):
            writer.write(b"".join(frame(3, f"t.{n}", [b"x" * 100], None)
                                  for n in range(start, start + 10_000)))
            await writer.drain()
        writer.write(b"".join(frame(5, sid, f"s.{sid}", "new", None, 10)
                              for sid in range(1, 100_001)))
        writer.write(frame(11, 1))
        await writer.drain()
        await answers
        writer.close()
        return f"peak RSS {memory_mib(broker.pid, 'VmHWM'):,.0f} MiB"


async def read_until_pong(reader: asyncio.StreamReader, pong: bytes) -> None:
    """Read (and drop) every answer, as a client should, until the closing PONG."""
    tail = b""
    while not tail.endswith(pong):
        chunk = await reader.read(1 << 20)
        if not chunk:
            return
        tail = (tail + chunk)[-len(pong):]


async def subscribe_storm(root: Path) -> str:
    """Item 6: 20,000 SUBs over 2,000 topics while a bystander pings."""
    async with Broker(root, ["--max-subscriptions", "100000", "--max-topics", "100000"]
                      ) as broker:
        _, publisher = await broker.connect("topics")
        publisher.write(b"".join(frame(3, f"t.{n}.x", [b"x"], None) for n in range(2000)))
        await publisher.drain()
        await asyncio.sleep(0.5)
        _, subscriber = await broker.connect("subscriber")
        pinger = Pinger(broker)
        ping = asyncio.create_task(pinger.run(4))
        await asyncio.sleep(0.2)
        subscriber.write(b"".join(frame(5, sid, f"t.{sid % 2000}.*", "new", None, 10)
                                  for sid in range(1, 20_001)))
        await ping
        subscriber.transport.abort()
        publisher.close()
        return f"bystander's worst PING {pinger.worst_s * 1000:,.0f} ms"


SCENARIOS: dict[str, Callable[[Path], Awaitable[str]]] = {
    "1 flood of PING/STATS, never reading": flood_of_requests,
    "2 evicted 1 MB payloads": evicted_payloads,
    "2 150,000 x 1,000 B at the defaults": evicted_small_payloads,
    "3 connections before HELLO": before_hello,
    "5 200,000 topics + 100,000 SUBs": many_topics,
    "6 20,000 SUBs x 2,000 topics": subscribe_storm,
}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="checkout whose broker to run (default: this one)")
    args = parser.parse_args()
    print(f"limits: the broker of {args.root}")
    for name, scenario in SCENARIOS.items():
        try:
            result = await asyncio.wait_for(scenario(args.root), 180)
        except (TimeoutError, OSError, ValueError) as exc:
            result = f"did not finish: {type(exc).__name__} {exc}"
        print(f"  {name:<40} {result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
