"""`make bench`, the broker's core alone: messages per second through `Session.act()` and
`send_pass()` (publish, store in memory, fan out to one subscriber, acknowledge) with no
socket and no event loop, for K interleaved topics and runs of N messages.

What the broker's own CPU costs per run and per message, apart from the kernel, the event
loop and the clients that the end-to-end figures of bench/run.py include: where the
1,000-topic workload spends its time (issue 23's K figures).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgpack

from broker.server.config import BrokerConfig, OnFull
from broker.server.core import BrokerCore
from broker.server.session import Session, Wait
from broker.wire import protocol as p

PAYLOAD = b"x" * 200
ROUNDS = 20


def opened(core: BrokerCore, number: int) -> Session:
    session = Session(core, number, f"bench:{number}")
    session.receive_data(p.encode(p.Hello(2, "bench")))
    session.act()
    session.data_to_send()
    return session


def pubm_frames(topics: int, per_run: int) -> bytes:
    """PUBM frames holding one run of `per_run` messages for each of `topics` topics."""
    per_frame = max(1, 100_000 // (per_run * len(PAYLOAD)))  # well under max-frame
    frames = []
    for start in range(0, topics, per_frame):
        runs = [[f"t.{k}", [PAYLOAD] * per_run]
                for k in range(start, min(topics, start + per_frame))]
        body = msgpack.packb([int(p.FrameType.PUBM), runs])
        frames.append(len(body).to_bytes(4, "big") + body)
    return b"".join(frames)


def one_run(on_full: OnFull, topics: int, per_run: int) -> tuple[float, float]:
    """Messages/s through the core, and µs per run, for ROUNDS rounds of every topic."""
    core = BrokerCore(replace(BrokerConfig(), on_full=on_full))
    publisher, subscriber = opened(core, 1), opened(core, 2)
    subscriber.receive_data(p.encode(p.Subscribe(1, "t.>", "new", None, 1_000_000)))
    subscriber.act()
    subscriber.data_to_send()
    data = pubm_frames(topics, per_run)
    started = time.perf_counter()
    for _ in range(ROUNDS):
        publisher.receive_data(data)
        while (wait := publisher.act()) is Wait.TURN:
            pass
        assert wait is Wait.READ, wait
        publisher.data_to_send()
        while subscriber.delivery.dirty:
            subscriber.send_pass()
        subscriber.data_to_send()
        subscriber.receive_data(p.encode(p.Ack(1, topics * per_run)))
        subscriber.act()
        subscriber.data_to_send()
    elapsed = time.perf_counter() - started
    return ROUNDS * topics * per_run / elapsed, elapsed / (ROUNDS * topics) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"\nThe broker core alone, no sockets ({args.runs} runs each, median [min..max])\n")
    print("| policy | topics K | messages per run | msgs/s | µs per run |")
    print("|---|---:|---:|---:|---:|")
    for on_full in ("drop", "block"):
        for topics, per_run in ((1, 4000), (16, 250), (1000, 20)):
            results = [one_run(on_full, topics, per_run) for _ in range(args.runs)]
            rates = [rate for rate, _ in results]
            print(f"| {on_full} | {topics:,} | {per_run:,} | {statistics.median(rates):,.0f} "
                  f"[{min(rates):,.0f}..{max(rates):,.0f}] | "
                  f"{statistics.median(us for _, us in results):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
