"""The nats-py peers, run as PEERS.md runs them (a producer and consumer processes, uvloop):
nats-server core pub/sub for W1, W2 and the interleaved-topics workload, and with
--jetstream nats-py's own JetStream client used the fast way (`js.publish_async`
pipelined, an ordered push consumer per reader, file storage) for bench/jetstream.py.
Prints the same JSON lines as bench/worker.py."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time

import msgpack
import nats
import uvloop
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError

STREAM = "PEER"  # --jetstream: the peer's own stream, file storage


async def jetstream(nc: NATS) -> JetStreamContext:
    js = nc.jetstream(publish_async_max_pending=8192)
    with contextlib.suppress(BadRequestError):  # made by the first process to ask
        await js.add_stream(StreamConfig(name=STREAM, subjects=["t.>"],
                                         storage=StorageType.FILE))
    return js


async def produce(args: argparse.Namespace) -> None:
    nc = await nats.connect(args.server, pending_size=8 * 1024 * 1024)
    payload = os.urandom(args.size)
    subjects = [f"t.{index}" for index in range(args.topics)]
    started = time.monotonic_ns()
    if args.rate:  # paced, each message stamped when sent (as bench/worker.py does)
        pad = b"x" * (args.size - 40)
        interval_ns = int(1e9 / args.rate)
        sent = 0
        while sent < args.count:
            due = min(args.count, (time.monotonic_ns() - started) // interval_ns + 1)
            while sent < due:
                await nc.publish(subjects[0], msgpack.packb(
                    {"n": sent, "sent_ns": time.monotonic_ns(), "pad": pad}))
                sent += 1
            await nc.flush()
            await asyncio.sleep(max(0.0, (started + sent * interval_ns - time.monotonic_ns())
                                    / 1e9))
    elif args.jetstream:
        js = await jetstream(nc)
        for index in range(args.count):
            await js.publish_async(subjects[index % args.topics], payload)
        await js.publish_async_completed()
    else:
        for index in range(args.count):
            await nc.publish(subjects[index % args.topics], payload)
    await nc.flush()
    print(json.dumps({"started_ns": started, "finished_ns": time.monotonic_ns(),
                      "cpu_s": time.process_time()}), flush=True)
    await nc.close()


async def consume(args: argparse.Namespace) -> None:
    nc = await nats.connect(args.server)
    done = asyncio.Event()
    received = 0
    first_ns = 0
    latencies_us: list[int] = []

    async def on_message(msg: Msg) -> None:
        nonlocal received, first_ns
        if not received:
            first_ns = time.monotonic_ns()
        received += 1
        if args.latency:
            sent_ns = msgpack.unpackb(msg.data)["sent_ns"]
            latencies_us.append((time.monotonic_ns() - sent_ns) // 1000)
        if received >= args.count:
            done.set()

    if args.jetstream:
        await (await jetstream(nc)).subscribe(
            "t.>", cb=on_message, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW,
            pending_msgs_limit=args.count + 1, pending_bytes_limit=0)
    else:
        await nc.subscribe("t.>", cb=on_message, pending_msgs_limit=args.count + 1,
                           pending_bytes_limit=0)
    await nc.flush()
    print("ready", flush=True)
    with contextlib.suppress(TimeoutError):  # counted as lost below
        await asyncio.wait_for(done.wait(), 120)
    print(json.dumps({"received": received, "lost": args.count - received, "first_ns": first_ns,
                      "last_ns": time.monotonic_ns(), "cpu_s": time.process_time(),
                      "latencies_us": latencies_us}), flush=True)
    await nc.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["produce", "consume"])
    parser.add_argument("--server", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--topics", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.0, help="msgs/s; 0: as fast as it can")
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--jetstream", action="store_true",
                        help="through JetStream: publish_async, an ordered push consumer")
    args = parser.parse_args()
    uvloop.run(produce(args) if args.role == "produce" else consume(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
