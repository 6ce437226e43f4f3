"""NATS servers for the benchmarks: fresh JetStream nodes (a cluster when more than one)
with the stream set up as an operator would (bench/jetstream.py, bench/run.py)."""

from __future__ import annotations

import asyncio
import atexit
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from harness import ROOT


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
