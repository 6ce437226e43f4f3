"""One benchmark process: a producer or a consumer, speaking through broker.client.

Run by bench/run.py; prints one JSON line of results on stdout. Times are
time.monotonic_ns(), one clock for every process on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broker.cli import run
from broker.client import Client
from producer.pub import synthetic_payloads


async def produce(args: argparse.Namespace) -> int:
    async with Client(args.broker, name="bench-producer") as client:
        payloads = synthetic_payloads(args.size)
        if not args.rate:  # as the peers do: one ready payload, no encoding per message
            payloads = itertools.repeat(next(payloads))
        started = time.monotonic_ns()
        if args.rate:
            await produce_paced(client, args, payloads)
        elif args.topics > 1:  # round-robin over bench.t0 .. bench.t{K-1}
            topics = [f"bench.t{index}" for index in range(args.topics)]
            for index in range(args.count):
                await client.publish_bytes(topics[index % args.topics], next(payloads))
        elif args.batch > 1:  # Client.publish_batch: what a producer with runs does
            for start in range(0, args.count, args.batch):
                await client.publish_batch(
                    "bench.data", [next(payloads) for _ in range(min(args.batch,
                                                                      args.count - start))])
        else:
            for _ in range(args.count):
                await client.publish_bytes("bench.data", next(payloads))
        await client.flush()
        finished = time.monotonic_ns()
        cpu = time.process_time()
    print(json.dumps({"started_ns": started, "finished_ns": finished, "cpu_s": cpu}))
    return 0


async def produce_paced(client: Client, args: argparse.Namespace, payloads: object) -> None:
    """Send each message at its scheduled time (stamped when actually sent)."""
    interval_ns = int(1e9 / args.rate)
    start = time.monotonic_ns()
    sent = 0
    while sent < args.count:
        due = min(args.count, (time.monotonic_ns() - start) // interval_ns + 1)
        while sent < due:
            await client.publish_bytes("bench.data", next(payloads))  # type: ignore[call-overload]
            sent += 1
        await asyncio.sleep(max(0.0, (start + sent * interval_ns - time.monotonic_ns()) / 1e9))


async def consume(args: argparse.Namespace) -> int:
    import msgpack

    async with Client(args.broker, name="bench-consumer") as client:
        sub = await client.subscribe(args.pattern, window=args.window, start=args.start)
        print("ready", flush=True)
        received = lost = 0
        latencies_us: list[int] = []
        first_ns = 0
        if args.per_message:
            async for message in sub:
                if not received:
                    first_ns = time.monotonic_ns()
                received += 1
                if message.gap is not None:
                    lost += message.gap.missed
                if args.latency:
                    sent_ns = msgpack.unpackb(message.payload)["sent_ns"]
                    latencies_us.append((time.monotonic_ns() - sent_ns) // 1000)
                if received + lost >= args.count:
                    break
        else:  # the fast way: a run of messages per step (sub.batches())
            async for batch in sub.batches():
                if not received:
                    first_ns = time.monotonic_ns()
                received += len(batch)
                if batch.gap is not None:
                    lost += batch.gap.missed
                if args.latency:
                    now_ns = time.monotonic_ns()
                    latencies_us += [(now_ns - msgpack.unpackb(payload)["sent_ns"]) // 1000
                                     for payload in batch.payloads]
                if received + lost >= args.count:
                    break
        last_ns = time.monotonic_ns()
        cpu = time.process_time()
    print(json.dumps({"received": received, "lost": lost, "first_ns": first_ns,
                      "last_ns": last_ns, "cpu_s": cpu, "latencies_us": latencies_us}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["produce", "consume"])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--topics", type=int, default=1, help="interleave this many topics")
    parser.add_argument("--window", type=int, default=8192)
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--batch", type=int, default=1,
                        help="publish with publish_batch, this many at a time")
    parser.add_argument("--per-message", action="store_true",
                        help="read with `async for message in sub` instead of sub.batches()")
    parser.add_argument("--pattern", default="bench.>")
    parser.add_argument("--from", dest="start", default="new", choices=["new", "earliest"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # losses are counted in the results instead
    return run("bench", lambda: produce(args) if args.role == "produce" else consume(args))


if __name__ == "__main__":
    sys.exit(main())
