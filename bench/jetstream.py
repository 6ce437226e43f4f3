"""`make bench`, NATS JetStream part: W1 and W3 through one JetStream node and a 3-node
R3 cluster, beside slipstream's own broker, all through slipstream's client.

Every client connects to the first server; in the cluster the stream has three
replicas, so each publish is confirmed only once two of three servers stored it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ROOT, Result, peer_result, run_workload, spread
from nats_servers import start_nats

WORKLOADS: dict[str, dict[str, Any]] = {
    "W1": dict(consumers=1, count=100_000, rate=0.0, latency=False),
    "W3": dict(consumers=8, count=25_000, rate=0.0, latency=False),
}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    engines = {"slipstream (embedded)": 0, "JetStream, 1 node": 1, "JetStream, 3 nodes R3": 3}
    print(f"\nslipstream on NATS JetStream ({args.runs} runs each, median [min..max]); "
          "the first server's peak RSS and CPU")
    print()
    print("| engine | W1 1->1 msgs/s | W1 lost | W3 1->8 deliveries/s | W3 lost | "
          "server peak RSS MiB | server CPU (cores, W1) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    ours: dict[str, list[Result]] = {}
    for label, nodes in engines.items():
        results: dict[str, list[Result]] = {}
        for name, spec in WORKLOADS.items():
            results[name] = [await run_workload(broker_flags=[], nats_nodes=nodes,
                                                **spec) for _ in range(args.runs)]
        w1, w3 = results["W1"], results["W3"]
        print(f"| {label} | {spread([r.rate for r in w1])} | {sum(r.lost for r in w1)} | "
              f"{spread([r.rate for r in w3])} | {sum(r.lost for r in w3)} | "
              f"{max(r.broker_rss_mib for r in w1 + w3):.1f} | "
              f"{sorted(r.broker_cpu for r in w1)[len(w1) // 2]:.2f} |", flush=True)
        if nodes == 1:
            ours = {"W1": w1, "W3": w3}
    # The peer: nats-py's own JetStream client, used the fast way, on one node.
    theirs = {name: [await nats_js_run(int(spec["consumers"]), int(spec["count"]))
                     for _ in range(args.runs)] for name, spec in WORKLOADS.items()}
    print(f"| nats-py JetStream (publish_async, ordered push), 1 node | "
          f"{spread([r.rate for r in theirs['W1']])} | {sum(r.lost for r in theirs['W1'])} | "
          f"{spread([r.rate for r in theirs['W3']])} | {sum(r.lost for r in theirs['W3'])} "
          "| | |")
    print()
    for name in WORKLOADS:
        ratio = statistics.median(r.rate for r in ours[name]) / statistics.median(
            r.rate for r in theirs[name])
        print(f"{name} on one JetStream node: slipstream's client {ratio:.2f}x nats-py's "
              "JetStream client (target >= 1.0)", flush=True)
    return 0


async def nats_js_run(consumers: int, count: int) -> Result:
    """One run of nats-py's JetStream client (bench/nats_peer.py --jetstream), fresh node."""
    servers, address = await start_nats(1)
    peer = str(ROOT / "bench" / "nats_peer.py")
    options = ["--server", address, "--count", str(count), "--jetstream"]
    readers: list[asyncio.subprocess.Process] = []
    try:
        for _ in range(consumers):
            readers.append(await asyncio.create_subprocess_exec(
                sys.executable, peer, "consume", *options, stdout=asyncio.subprocess.PIPE))
        for reader in readers:
            assert reader.stdout is not None
            assert (await asyncio.wait_for(reader.stdout.readline(), 30)).strip() == b"ready"
        producer = await asyncio.create_subprocess_exec(
            sys.executable, peer, "produce", *options, stdout=asyncio.subprocess.PIPE)
        return await peer_result(producer, *readers)
    finally:
        for process in (*readers, *servers):
            if process.returncode is None:
                process.terminate()
                await process.wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
