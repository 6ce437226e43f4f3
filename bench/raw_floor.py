"""The brokerless floor, as ../shared/PEERS.md's raw-tcp-batch: the producer writes
length-prefixed frames straight into the consumer's socket, one write per batch. What
one asyncio process can push and take off a socket here; prints the same JSON lines as
bench/worker.py. Run by bench/run.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import time

import msgpack
import uvloop

BATCH_FRAMES = 1000
_length = struct.Struct(">I")


async def consume(args: argparse.Namespace) -> None:
    done = asyncio.Event()
    result: dict[str, object] = {}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = 0
        first_ns = 0
        latencies_us: list[int] = []
        buffer = b""
        while received < args.count:
            data = await reader.read(256 * 1024)
            if not data:
                break
            if not first_ns:
                first_ns = time.monotonic_ns()
            buffer += data
            position, end = 0, len(buffer)
            while end - position >= 4:
                (size,) = _length.unpack_from(buffer, position)
                if end - position - 4 < size:
                    break
                # Each message taken off as its own bytes, as any consumer must hand it on.
                frame = buffer[position + 4:position + 4 + size]
                if args.latency:
                    sent_ns = msgpack.unpackb(frame)["sent_ns"]
                    latencies_us.append((time.monotonic_ns() - sent_ns) // 1000)
                position += 4 + size
                received += 1
            buffer = buffer[position:]
        result.update(received=received, lost=args.count - received, first_ns=first_ns,
                      last_ns=time.monotonic_ns(), cpu_s=time.process_time(),
                      latencies_us=latencies_us)
        writer.close()
        done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await asyncio.wait_for(done.wait(), 300)
    print(json.dumps(result), flush=True)


async def produce(args: argparse.Namespace) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", args.port)
    pad = b"x" * (args.size - 40)
    started = time.monotonic_ns()
    if args.rate:
        interval_ns = int(1e9 / args.rate)
        sent = 0
        while sent < args.count:
            due = min(args.count, (time.monotonic_ns() - started) // interval_ns + 1)
            frames = []
            while sent < due:
                body = msgpack.packb({"n": sent, "sent_ns": time.monotonic_ns(), "pad": pad})
                frames.append(_length.pack(len(body)) + body)
                sent += 1
            writer.write(b"".join(frames))
            await writer.drain()
            await asyncio.sleep(max(0.0, (started + sent * interval_ns - time.monotonic_ns())
                                    / 1e9))
    else:
        body = msgpack.packb({"n": 0, "sent_ns": 0, "pad": pad})
        frame = _length.pack(len(body)) + body
        for start in range(0, args.count, BATCH_FRAMES):
            writer.write(frame * min(BATCH_FRAMES, args.count - start))
            await writer.drain()
    writer.close()
    await writer.wait_closed()  # drain() leaves up to its low-water mark unsent
    print(json.dumps({"started_ns": started, "finished_ns": time.monotonic_ns(),
                      "cpu_s": time.process_time()}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["produce", "consume"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--latency", action="store_true")
    args = parser.parse_args()
    uvloop.run(produce(args) if args.role == "produce" else consume(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
