"""`make bench`, NATS JetStream part: W1 and W3 through one JetStream node and a 3-node
R3 cluster, beside slipstream's own broker, all through slipstream's client.

Every client connects to the first server; in the cluster the stream has three
replicas, so each publish is confirmed only once two of three servers stored it.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import ROOT, Result, run_workload, spread

WORKLOADS: dict[str, dict[str, Any]] = {
    "W1": dict(consumers=1, count=100_000, rate=0.0, latency=False),
    "W3": dict(consumers=8, count=25_000, rate=0.0, latency=False),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def nats_server() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.exists() else "nats-server"


async def start_nats(nodes: int) -> tuple[list[asyncio.subprocess.Process], str]:
    """`nodes` fresh JetStream servers (routed into a cluster when more than one)."""
    import nats

    store = Path(tempfile.mkdtemp(prefix="slipstream-bench-nats-"))
    atexit.register(shutil.rmtree, store, ignore_errors=True)
    ports = [free_port() for _ in range(nodes)]
    cluster = [free_port() for _ in range(nodes)] if nodes > 1 else []
    servers = []
    for index in range(nodes):
        args = ["-js", "-a", "127.0.0.1", "-p", str(ports[index]), "-n", f"bench{index}",
                "-sd", str(store / f"n{index}")]
        if cluster:
            args += ["--cluster_name", "bench", "--cluster",
                     f"nats://127.0.0.1:{cluster[index]}", "--routes",
                     ",".join(f"nats://127.0.0.1:{port}" for port in cluster)]
        servers.append(await asyncio.create_subprocess_exec(
            nats_server(), *args, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL))
    address = f"nats://127.0.0.1:{ports[0]}"

    async def quiet(exc: Exception) -> None:
        pass

    async with asyncio.timeout(30):
        while True:  # until JetStream answers (in a cluster: a meta leader is elected)
            await asyncio.sleep(0.2)
            try:
                nc = await nats.connect(address, allow_reconnect=False, error_cb=quiet)
            except Exception:
                continue
            try:
                await nc.jetstream(timeout=1).account_info()
                break
            except Exception:
                continue
            finally:
                await nc.close()
    # The stream first, as an operator would (python -m broker --broker nats://...):
    # not nine clients racing to create it.
    setup = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "--broker", address, "-q",
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL)
    assert await setup.wait() == 0, "could not set up the JetStream stream"
    return servers, address


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
