"""`make bench` (websocket): the protocol over WebSocket, and what --ws costs TCP (issue 26).

1. W1 over WebSocket from Node: the JavaScript client (clients/js) as a browser page
   uses it, in Node (bench/ws_node.mjs), one producer process and one consumer
   process, 200,000 messages of 200 B as fast as the client publishes; msgs/s at the
   consumer, from the first publish to the last delivery. Goal: at least 100,000.
2. W1 over TCP with the Python client, on a broker without --ws and on one with --ws
   (a WebSocket listener beside it, unused), run by run in turn and each first in turn,
   so the machine's drift hits both alike. Goal: the same, within the noise.

    python bench/websocket.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ROOT, spread, w1_side_by_side

NODE_SIDE = ROOT / "bench" / "ws_node.mjs"
COUNT, SIZE = 200_000, 200


async def node_w1() -> tuple[float, int]:
    """(msgs/s at the consumer, messages lost) for one Node run over WebSocket."""
    broker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "--port", "0", "-q", "--ws", "0", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert broker.stdout is not None
    await broker.stdout.readline()
    url = (await broker.stdout.readline()).decode().split("websocket on ", 1)[1].strip()
    node = ["node", "--experimental-websocket", str(NODE_SIDE)]
    try:
        consumer = await asyncio.create_subprocess_exec(
            *node, "consume", url, str(COUNT), cwd=ROOT, stdout=asyncio.subprocess.PIPE)
        assert consumer.stdout is not None
        assert (await asyncio.wait_for(consumer.stdout.readline(), 15)).strip() == b"ready"
        producer = await asyncio.create_subprocess_exec(
            *node, "produce", url, str(COUNT), str(SIZE), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE)
        produced = json.loads((await asyncio.wait_for(producer.communicate(), 120))[0])
        consumed = json.loads((await asyncio.wait_for(consumer.communicate(), 120))[0])
        elapsed_s = (consumed["finished_ns"] - produced["started_ns"]) / 1e9
        return consumed["received"] / elapsed_s, consumed["lost"]
    finally:
        if broker.returncode is None:
            broker.terminate()
            await broker.wait()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("node") is None or not (ROOT / "clients" / "js" / "node_modules").is_dir():
        print("websocket: node or clients/js/node_modules is missing (make test installs "
              "the dependency): the Node figures are left out")
    else:
        runs = [await node_w1() for _ in range(args.runs)]
        print(f"\nW1 over WebSocket, the JavaScript client in Node (node {NODE_SIDE.name}; "
              f"{COUNT:,} x {SIZE} B, {args.runs} runs, median [min..max] msgs/s at the "
              "consumer)\n")
        print("| client | W1 msgs/s | lost |")
        print("|---|---:|---:|")
        print(f"| JavaScript, Node, ws:// | {spread([rate for rate, _ in runs])} | "
              f"{sum(lost for _, lost in runs)} |")
        median = statistics.median(rate for rate, _ in runs)
        print(f"\ngoal: at least 100,000 msgs/s: median {median:,.0f}")
    await w1_side_by_side("W1 over TCP (the Python client), the broker without and with --ws",
                          args.runs, ("TCP only", {"broker_flags": []}),
                          ("with --ws", {"broker_flags": ["--ws", "0"]}),
                          "the same, within the noise")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
