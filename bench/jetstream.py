"""`make bench`, NATS JetStream part: W1 and W3 through one JetStream node and a 3-node
R3 cluster, beside slipstream's own broker, all through slipstream's client.

Every client connects to the first server; in the cluster the stream has three
replicas, so each publish is confirmed only once two of three servers stored it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Result, run_workload, spread

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
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
