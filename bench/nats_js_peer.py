"""The JetStream peer: nats-py's own JetStream client used the fast way, as PEERS.md runs
it (`js.publish_async` pipelined, an ordered push consumer per reader, file storage).
Prints the same JSON lines as bench/worker.py, so bench/jetstream.py reads both alike."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time

import nats
import uvloop
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError

STREAM = "PEER"
SUBJECT = "peer.t"


async def jetstream(server: str) -> tuple[NATS, JetStreamContext]:
    nc = await nats.connect(server, pending_size=8 * 1024 * 1024)
    js = nc.jetstream(publish_async_max_pending=8192)
    with contextlib.suppress(BadRequestError):  # made by the first process to ask
        await js.add_stream(StreamConfig(name=STREAM, subjects=["peer.>"],
                                         storage=StorageType.FILE))
    return nc, js


async def produce(args: argparse.Namespace) -> None:
    nc, js = await jetstream(args.server)
    payload = os.urandom(args.size)
    started = time.monotonic_ns()
    for _ in range(args.count):
        await js.publish_async(SUBJECT, payload)
    await js.publish_async_completed()
    print(json.dumps({"started_ns": started, "finished_ns": time.monotonic_ns(),
                      "cpu_s": time.process_time()}), flush=True)
    await nc.close()


async def consume(args: argparse.Namespace) -> None:
    nc, js = await jetstream(args.server)
    done = asyncio.Event()
    received = 0
    first_ns = 0

    async def on_message(msg: Msg) -> None:
        nonlocal received, first_ns
        if not received:
            first_ns = time.monotonic_ns()
        received += 1
        if received >= args.count:
            done.set()

    await js.subscribe(SUBJECT, cb=on_message, ordered_consumer=True,
                       deliver_policy=DeliverPolicy.NEW, pending_msgs_limit=args.count + 1,
                       pending_bytes_limit=0)
    await nc.flush()
    print("ready", flush=True)
    with contextlib.suppress(TimeoutError):  # counted as lost below
        await asyncio.wait_for(done.wait(), 120)
    print(json.dumps({"received": received, "lost": args.count - received, "first_ns": first_ns,
                      "last_ns": time.monotonic_ns(), "cpu_s": time.process_time(),
                      "latencies_us": []}), flush=True)
    await nc.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["produce", "consume"])
    parser.add_argument("--server", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--size", type=int, default=200)
    args = parser.parse_args()
    uvloop.run(produce(args) if args.role == "produce" else consume(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
