"""What every benchmark shares: a broker and worker processes started fresh, one run of a
workload through them, and the figures read from /proc (bench/run.py, bench/jetstream.py,
bench/storage.py and bench/limits.py use it; none of them imports another)."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "bench" / "worker.py")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    rate: float = 0.0
    lost: int = 0
    p50_us: float = 0.0
    p99_us: float = 0.0
    p999_us: float = 0.0
    max_us: float = 0.0
    broker_rss_mib: float = 0.0
    broker_cpu: float = 0.0  # cores busy over the run
    elapsed_s: float = 0.0  # first publish to last delivery


def memory_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory now (VmRSS) or its peak so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib(pid: int) -> float:
    return memory_mib(pid, "VmHWM")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


async def start_broker(flags: list[str]) -> tuple[asyncio.subprocess.Process, str]:
    broker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "--port", "0", "-q", *flags, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert broker.stdout is not None
    line = (await asyncio.wait_for(broker.stdout.readline(), 15)).decode()
    return broker, "127.0.0.1:" + line.rsplit(":", 1)[1].strip()


async def worker(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, WORKER, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, **env} if env else None)


async def run_workload(consumers: int, count: int, rate: float, latency: bool,
                       broker_flags: list[str], nats_nodes: int = 0, topics: int = 1,
                       consumer_flags: list[str] | None = None,
                       producer_flags: list[str] | None = None,
                       client_env: dict[str, str] | None = None) -> Result:
    """One run; `nats_nodes` > 0 runs it through that many JetStream servers instead
    (bench/jetstream.py), the figures for the one every client connects to."""
    if nats_nodes:
        from nats_servers import start_nats

        servers, address = await start_nats(nats_nodes)
        broker = servers[0]
    else:
        servers = []
        broker, address = await start_broker(broker_flags)
    subs: list[asyncio.subprocess.Process] = []
    try:
        cpu_before = cpu_seconds(broker.pid)
        subs += [await worker("consume", "--broker", address, "--count", str(count),
                             *(["--latency"] if latency else []), *(consumer_flags or []),
                             env=client_env)
                 for _ in range(consumers)]
        for sub in subs:
            assert sub.stdout is not None
            assert (await asyncio.wait_for(sub.stdout.readline(), 15)).strip() == b"ready"
        producer = await worker("produce", "--broker", address, "--count", str(count),
                                "--rate", str(rate), "--topics", str(topics),
                                *(producer_flags or []), env=client_env)
        result = await peer_result(producer, *subs)
        result.broker_rss_mib = peak_rss_mib(broker.pid)
        result.broker_cpu = (cpu_seconds(broker.pid) - cpu_before) / result.elapsed_s
        return result
    finally:
        for process in [*subs, *(servers or [broker])]:  # a failed run leaves no process
            if process.returncode is None:
                process.terminate()
                await process.wait()


def spread(values: list[float]) -> str:
    """The median, with the whole min-max range of the runs: the machine's noise, unhidden."""
    median = statistics.median(values)
    if len(values) < 2:
        return f"{median:,.0f}"
    return f"{median:,.0f} [{min(values):,.0f}..{max(values):,.0f}]"


def set_latencies(result: Result, latencies_us: list[int]) -> None:
    samples = sorted(latencies_us)
    if samples:
        result.p50_us = samples[len(samples) // 2]
        result.p99_us = samples[int(len(samples) * 0.99)]
        result.p999_us = samples[int(len(samples) * 0.999)]
        result.max_us = samples[-1]


async def peer_result(producer: asyncio.subprocess.Process,
                       *consumers: asyncio.subprocess.Process) -> Result:
    """Deliveries per second summed over the consumers, from the first publish to the last
    delivery (run_workload's figures, and every peer's)."""
    out, _ = await asyncio.wait_for(producer.communicate(), 300)
    produced = json.loads(out)
    results = [json.loads((await asyncio.wait_for(c.communicate(), 300))[0])
               for c in consumers]
    elapsed_s = (max(r["last_ns"] for r in results) - produced["started_ns"]) / 1e9
    outcome = Result(rate=sum(r["received"] for r in results) / elapsed_s,
                     lost=sum(r["lost"] for r in results), elapsed_s=elapsed_s)
    set_latencies(outcome, [x for r in results for x in r["latencies_us"]])
    return outcome


W1 = dict(consumers=1, count=200_000, rate=0.0, latency=False)


async def w1_side_by_side(title: str, runs: int, base: tuple[str, dict[str, Any]],
                          other: tuple[str, dict[str, Any]], goal: str) -> float:
    """W1 on two brokers (each a label and run_workload's broker_flags / client_env), run
    by run in turn and each first in turn, so the machine's drift and the second run of a
    pair (which tends to be slower) hit both alike; prints the two side by side and
    returns other / base, medians."""
    results: dict[str, list[Result]] = {base[0]: [], other[0]: []}
    for run in range(runs):
        pair = [base, other] if run % 2 == 0 else [other, base]
        for label, options in pair:
            results[label].append(await run_workload(**W1, **options))  # type: ignore[arg-type]
    ratio = statistics.median(r.rate for r in results[other[0]]) / statistics.median(
        r.rate for r in results[base[0]])
    print(f"\n{title} ({runs} runs each, interleaved; median [min..max] msgs/s at the "
          "consumer)\n")
    print("| broker | W1 msgs/s | lost |")
    print("|---|---:|---:|")
    for label, measured in results.items():
        print(f"| {label} | {spread([r.rate for r in measured])} | "
              f"{sum(r.lost for r in measured)} |")
    print(f"\n{other[0]} / {base[0]}: {ratio:.3f} (goal: {goal})")
    return ratio
