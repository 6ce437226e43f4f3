"""`make bench` (storage): the broker with --data-dir beside the broker in memory (issue 13).

- W1 (1 producer -> 1 consumer, 200,000 x 200 B) in memory and with --data-dir
  (--fsync interval), runs alternating; target: on disk >= 70% of in memory.
- Catch-up: 2,000,000 x 200 B published to a topic on disk, then a consumer
  reads them from `earliest` (from the segment files); target >= 200,000 msg/s,
  broker RSS during the catch-up < 150 MiB.
- Start-up: a broker restarted on a DIR holding about 1 GB of log; target < 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import memory_mib, peak_rss_mib, run_workload, spread, start_broker, worker

BIG = ["--retain-messages", "100000000", "--retain-bytes", "4GiB", "--max-memory", "4GiB"]


def log_mib(directory: str) -> float:
    return sum(p.stat().st_size for p in Path(directory).rglob("*.seg")) / 2**20


async def w1_both(runs: int) -> None:
    memory: list[float] = []
    disk: list[float] = []
    for _ in range(runs):
        memory.append((await run_workload(1, 200_000, 0.0, False, [])).rate)
        directory = tempfile.mkdtemp(prefix="slipstream-bench-")
        try:
            disk.append((await run_workload(1, 200_000, 0.0, False,
                                            ["--data-dir", directory])).rate)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    ratio = statistics.median(disk) / statistics.median(memory)
    print(f"| W1 in memory | {spread(memory)} msg/s | |")
    print(f"| W1 --data-dir, --fsync interval | {spread(disk)} msg/s | "
          f"{ratio:.0%} of in memory (target >= 70%) |", flush=True)


async def publish(address: str, count: int, size: int = 200) -> None:
    producer = await worker("produce", "--broker", address, "--count", str(count),
                            "--size", str(size))
    await asyncio.wait_for(producer.communicate(), 600)


async def catch_up(count: int) -> None:
    directory = tempfile.mkdtemp(prefix="slipstream-bench-")
    try:
        broker, address = await start_broker(["--data-dir", directory, *BIG])
        try:
            await publish(address, count)
            await asyncio.sleep(0.5)
            peak_before = peak_rss_mib(broker.pid)
            consumer = await worker("consume", "--broker", address, "--count", str(count),
                                    "--from", "earliest", "--window", "65536")
            assert consumer.stdout is not None
            await consumer.stdout.readline()  # ready
            highest = 0.0
            done = asyncio.create_task(consumer.communicate())
            while not done.done():  # RSS now, not the peak of the publishing before
                highest = max(highest, memory_mib(broker.pid))
                await asyncio.wait({done}, timeout=0.2)
            result = json.loads((await done)[0])
            rate = result["received"] / ((result["last_ns"] - result["first_ns"]) / 1e9)
        finally:
            broker.terminate()
            await broker.wait()
        size_mib = log_mib(directory)
        print(f"| catch-up from earliest, {count:,} on disk ({size_mib:,.0f} MiB) | "
              f"{rate:,.0f} msg/s, lost {result['lost']} | broker RSS during it {highest:.0f} "
              f"MiB (peak while publishing {peak_before:.0f}); targets 200,000 msg/s, "
              "< 150 MiB |", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def startup(size_gib: float) -> None:
    directory = tempfile.mkdtemp(prefix="slipstream-bench-")
    try:
        broker, address = await start_broker(["--data-dir", directory, *BIG])
        count = int(size_gib * 2**30 / (4 + 1000))  # 1,000 B each, in runs: ~4 B overhead
        try:
            await publish(address, count, size=1000)
        finally:
            broker.terminate()
            await broker.wait()
        size_mib = log_mib(directory)
        started = time.monotonic()
        broker, address = await start_broker(["--data-dir", directory, *BIG])
        elapsed = time.monotonic() - started
        resident = memory_mib(broker.pid)
        broker.terminate()
        await broker.wait()
        print(f"| start-up on {size_mib:,.0f} MiB of log | {elapsed:.2f} s "
              f"(process start included), broker RSS then {resident:.0f} MiB | target < 5 s; "
              "RSS well under 200 MiB |", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--catch-up", type=int, default=2_000_000, metavar="N")
    parser.add_argument("--startup-gib", type=float, default=1.0)
    args = parser.parse_args()
    print("\nstorage (--data-dir): median [min..max] of the runs")
    print("| what | figure | against |")
    print("|---|---:|---|")
    await w1_both(args.runs)
    await catch_up(args.catch_up)
    await startup(args.startup_gib)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
