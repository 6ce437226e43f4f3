"""`make bench`: the broker's three workloads, as PEERS.md measures its peers.

W1: 1 producer -> 1 consumer, 200,000 messages of 200 bytes, as fast as the
    client publishes; messages/s at the consumer.
W2: 5,000 messages/s offered for 5 s; send-to-receive latency percentiles.
W3: 1 producer -> 8 consumers, 50,000 messages; deliveries/s over all consumers.
Every run starts a fresh broker; producer, broker and consumers are separate
processes on loopback. Each workload runs --runs times: the median is shown,
with the spread (min..max) as the machine's noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    ROOT,
    Result,
    cpu_seconds,
    peer_result,
    run_workload,
    spread,
    start_broker,
    worker,
)

WORKLOADS: dict[str, dict[str, float | int | bool]] = {
    "W1": dict(consumers=1, count=200_000, rate=0.0, latency=False),
    "W2": dict(consumers=1, count=25_000, rate=5000.0, latency=True),
    "W3": dict(consumers=8, count=50_000, rate=0.0, latency=False),
}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--on-full", choices=["drop", "block"], default="drop")
    parser.add_argument("--only", choices=["W1", "W2", "W3", "K", "peers", "game-storage"],
                        action="append",
                        help="K: the interleaved-topics workload alone; peers: W1 and W2 "
                             "beside nats-server and the brokerless floor; game-storage: "
                             "the SQLite writer on game packets, compressed and as JSON")
    args = parser.parse_args()
    flags = ["--on-full", args.on_full]
    workloads = WORKLOADS
    print(f"slipstream broker benchmark: {os.cpu_count()} cores, Python "
          f"{sys.version.split()[0]}, on-full={args.on_full}, {args.runs} runs each "
          "(median [min..max])", flush=True)
    rows = []
    for name, spec in workloads.items():
        if args.only and name not in args.only:
            continue
        runs = [await run_workload(broker_flags=flags, **spec) for _ in range(args.runs)]  # type: ignore[arg-type]
        rows.append((name, runs))
        print(f"  {name} done", file=sys.stderr, flush=True)
    if rows:  # the W workloads' table, when any ran
        print()
        print("| workload | rate | lost | p50 µs | p99 µs | p99.9 µs | max µs "
              "| broker peak RSS MiB | broker CPU (cores) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        units = {"W1": "msgs/s", "W2": "msgs/s", "W3": "deliveries/s"}
        for name, runs in rows:
            latency = name == "W2"

            def col(attr: str, runs: list[Result] = runs, show: bool = latency) -> str:
                return spread([getattr(r, attr) for r in runs]) if show else "—"

            print(f"| {name} | {spread([r.rate for r in runs])} {units[name]} | "
                  f"{sum(r.lost for r in runs)} | {col('p50_us')} | {col('p99_us')} | "
                  f"{col('p999_us')} | {col('max_us')} | "
                  f"{max(r.broker_rss_mib for r in runs):.1f} | "
                  f"{statistics.median(r.broker_cpu for r in runs):.2f} |")
    if not args.only or "peers" in args.only:
        await beside_the_peers(args.runs, args.on_full)
    if not args.only or "K" in args.only:
        await interleaved_topics(args.runs)
    if not args.only or "game-storage" in args.only:
        await game_storage(args.runs)
    if not args.only:
        await replay_throughput(args.runs)
        await dashboard_fanout(args.runs)
        await sqlite_throughput(args.runs)
        game_decoding()
        await bridge_throughput(args.runs)
        await retention_bounds_memory(flags)
    return 0


INTERLEAVED_MESSAGES = 200_000


async def interleaved_topics(runs: int) -> None:
    """1 producer -> 1 subscriber on a pattern, 200,000 messages of 200 B published
    round-robin over K topics: slipstream (--on-full block) beside nats-server core
    pub/sub through nats-py, fresh servers each run, as PEERS.md measured them."""
    print("\n1 -> 1 with K interleaved topics, 200,000 x 200 B "
          f"({runs} runs each, median [min..max] msgs/s at the consumer)\n")
    print("| K | slipstream msgs/s | slipstream lost | nats + nats-py msgs/s | nats lost | "
          "slipstream / nats |")
    print("|---:|---:|---:|---:|---:|---:|")
    for topics in (1, 16, 1000):
        ours = [await run_workload(consumers=1, count=INTERLEAVED_MESSAGES, rate=0.0,
                                   latency=False, broker_flags=["--on-full", "block"],
                                   topics=topics) for _ in range(runs)]
        theirs = [await nats_core_run(topics) for _ in range(runs)]
        ratio = statistics.median(r.rate for r in ours) / statistics.median(
            r.rate for r in theirs)
        print(f"| {topics:,} | {spread([r.rate for r in ours])} | {sum(r.lost for r in ours)} | "
              f"{spread([r.rate for r in theirs])} | {sum(r.lost for r in theirs)} | "
              f"{ratio:.2f}x |", flush=True)


async def nats_core_run(topics: int = 1, count: int = INTERLEAVED_MESSAGES, rate: float = 0.0,
                        latency: bool = False, consumers: int = 1) -> Result:
    """One run of the peer: nats-server (no JetStream) and bench/nats_peer.py."""
    from nats_servers import free_port, nats_server

    port = free_port()
    server = await asyncio.create_subprocess_exec(
        nats_server(), "-a", "127.0.0.1", "-p", str(port), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    peer = str(ROOT / "bench" / "nats_peer.py")
    address = f"nats://127.0.0.1:{port}"
    options = ["--count", str(count), "--rate", str(rate), *(["--latency"] if latency else [])]
    readers: list[asyncio.subprocess.Process] = []
    try:
        await asyncio.sleep(0.3)
        for _ in range(consumers):
            readers.append(await asyncio.create_subprocess_exec(
                sys.executable, peer, "consume", "--server", address, *options,
                stdout=asyncio.subprocess.PIPE))
        for reader in readers:
            assert reader.stdout is not None
            assert (await asyncio.wait_for(reader.stdout.readline(), 15)).strip() == b"ready"
        producer = await asyncio.create_subprocess_exec(
            sys.executable, peer, "produce", "--server", address, *options,
            "--topics", str(topics), stdout=asyncio.subprocess.PIPE)
        return await peer_result(producer, *readers)
    finally:
        for process in (*readers, server):
            if process.returncode is None:
                process.terminate()
                await process.wait()


async def raw_floor_run(count: int, rate: float = 0.0, latency: bool = False) -> Result:
    """One run of the brokerless floor (bench/raw_floor.py): PEERS.md's raw-tcp-batch."""
    floor = str(ROOT / "bench" / "raw_floor.py")
    options = ["--count", str(count), "--rate", str(rate), *(["--latency"] if latency else [])]
    consumer = await asyncio.create_subprocess_exec(
        sys.executable, floor, "consume", *options, stdout=asyncio.subprocess.PIPE)
    try:
        assert consumer.stdout is not None
        ready = (await asyncio.wait_for(consumer.stdout.readline(), 15)).split()
        producer = await asyncio.create_subprocess_exec(
            sys.executable, floor, "produce", "--port", ready[1].decode(), *options,
            stdout=asyncio.subprocess.PIPE)
        return await peer_result(producer, consumer)
    finally:
        if consumer.returncode is None:
            consumer.terminate()
            await consumer.wait()


async def beside_the_peers(runs: int, on_full: str) -> None:
    """W1 and W2 for slipstream (three ways), nats-server + nats-py and the brokerless
    floor, interleaved run by run so that the machine's drift hits every one alike (the
    targets are ratios within this run); then W3 beside nats."""
    w1, w2 = WORKLOADS["W1"], WORKLOADS["W2"]
    flags = ["--on-full", on_full]
    # slipstream three ways: both ends batched (publish_batch of 1,000, sub.batches()),
    # as raw-tcp-batch is; publish_bytes per message into sub.batches(); and message
    # by message at both ends, as the nats peer is.
    clients = {"slipstream batched": (["--batch", "1000"], []), "slipstream": ([], []),
               "slipstream per-message": ([], ["--per-message"])}
    peers: dict[str, tuple[list[Result], list[Result]]] = {
        name: ([], []) for name in (*clients, "nats", "raw-tcp-batch")}
    for _ in range(runs):
        for name, (first, second) in peers.items():
            if name in clients:
                producing, consuming = clients[name]
                first.append(await run_workload(broker_flags=flags, consumer_flags=consuming,
                                                producer_flags=producing,
                                                **w1))  # type: ignore[arg-type]
                second.append(await run_workload(broker_flags=flags, consumer_flags=consuming,
                                                 **w2))  # type: ignore[arg-type]
            elif name == "nats":
                first.append(await nats_core_run(count=int(w1["count"])))
                second.append(await nats_core_run(count=int(w2["count"]), rate=float(w2["rate"]),
                                                  latency=True))
            else:
                first.append(await raw_floor_run(int(w1["count"])))
                second.append(await raw_floor_run(int(w2["count"]), float(w2["rate"]),
                                                  latency=True))
        print("  peers: one round done", file=sys.stderr, flush=True)
    w3 = WORKLOADS["W3"]
    w3_ours: list[Result] = []
    w3_nats: list[Result] = []
    for _ in range(runs):
        w3_ours.append(await run_workload(broker_flags=flags, consumer_flags=[],
                                          **w3))  # type: ignore[arg-type]
        w3_nats.append(await nats_core_run(count=int(w3["count"]),
                                           consumers=int(w3["consumers"])))
    print(f"\nW1 and W2 beside the peers, one run ({runs} rounds, median [min..max])\n")
    print("| peer | W1 msgs/s | W1 lost | W2 p50 µs | W2 p99 µs | W2 p99.9 µs | W2 lost |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (first, second) in peers.items():
        print(f"| {name} | {spread([r.rate for r in first])} | {sum(r.lost for r in first)} | "
              f"{spread([r.p50_us for r in second])} | {spread([r.p99_us for r in second])} | "
              f"{spread([r.p999_us for r in second])} | {sum(r.lost for r in second)} |")

    def median(name: str, index: int, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in peers[name][index]))

    floor = median("raw-tcp-batch", 0, "rate")
    nats_w1 = median("nats", 0, "rate")
    p99_ours, p99_nats = median("slipstream", 1, "p99_us"), median("nats", 1, "p99_us")
    print()
    for name in clients:
        ours = median(name, 0, "rate")
        print(f"W1 {name}: {ours / floor:.2f}x raw-tcp-batch (target >= 0.5), "
              f"{ours / nats_w1:.2f}x nats")
    w3_ratio = statistics.median(r.rate for r in w3_ours) / statistics.median(
        r.rate for r in w3_nats)
    print(f"W3 1 -> 8 (publish_bytes -> sub.batches()): slipstream "
          f"{spread([r.rate for r in w3_ours])} deliveries/s ({sum(r.lost for r in w3_ours)} "
          f"lost), nats {spread([r.rate for r in w3_nats])} ({sum(r.lost for r in w3_nats)} "
          f"lost): {w3_ratio:.2f}x (target >= 2)")
    print(f"W2 p99: slipstream {p99_ours:,.0f} µs, nats {p99_nats:,.0f} µs "
          f"({'within' if p99_ours <= p99_nats else 'over'} the target: <= nats)", flush=True)


SESSION = ROOT / "samples" / "livetiming" / "2020-08-07_70th-anniversary-fp2"
SESSION_MESSAGES = 17_979
REPLAY_MESSAGES = SESSION_MESSAGES + 1  # and the live.session_start announcing it


async def replay_throughput(runs: int) -> None:
    """The bundled real session replayed as fast as possible: producer -> broker -> consumer."""
    rates = []
    for _ in range(runs):
        broker, address = await start_broker([])
        try:
            consumer = await worker("consume", "--broker", address, "--pattern", "live.>",
                                    "--count", str(REPLAY_MESSAGES))
            assert consumer.stdout is not None
            assert (await asyncio.wait_for(consumer.stdout.readline(), 15)).strip() == b"ready"
            started_ns = time.monotonic_ns()
            producer = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "producer", "replay", str(SESSION),
                "--as-fast-as-possible", "--broker", address, "-q", cwd=ROOT,
                stderr=asyncio.subprocess.DEVNULL)
            await asyncio.wait_for(producer.wait(), 120)
            out, _ = await asyncio.wait_for(consumer.communicate(), 120)
            result = json.loads(out)
            assert result["received"] == REPLAY_MESSAGES and result["lost"] == 0
            rates.append(REPLAY_MESSAGES / ((result["last_ns"] - started_ns) / 1e9))
        finally:
            broker.terminate()
            await broker.wait()
    print()
    print("Live-timing replay of the bundled real session (17,979 messages), as fast as "
          "possible, producer start (reading and parsing included) to the consumer's last "
          f"message: {spread(rates)} msgs/s")


async def dashboard_fanout(runs: int, viewers: int = 20) -> None:
    """The real session replayed as fast as possible into the dashboard, with `viewers`
    WebSocket clients: how fast the dashboard takes it, and what each viewer got."""
    import aiohttp

    rates, frames, dropped, cpu = [], [], 0, []
    for _ in range(runs):
        broker, address = await start_broker([])
        dashboard = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "consumer", "dashboard", "--http", "127.0.0.1:0",
            "--broker", address, "-q", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        try:
            assert dashboard.stdout is not None
            url = (await asyncio.wait_for(dashboard.stdout.readline(), 15)).decode().split()[1]
            counts = [0] * viewers
            async with aiohttp.ClientSession() as session:
                tasks = [asyncio.create_task(_count_frames(session, url + "ws", counts, i))
                         for i in range(viewers)]
                while True:  # polling another process: its own /api/stats says when
                    stats = await _get_json(session, url + "api/stats")
                    if stats["viewers"]["total"] >= viewers:
                        break
                    await asyncio.sleep(0.05)
                before = cpu_seconds(dashboard.pid)
                started = time.monotonic()
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "producer", "replay", str(SESSION),
                    "--as-fast-as-possible", "--broker", address, "-q", cwd=ROOT,
                    stderr=asyncio.subprocess.DEVNULL)
                while True:
                    stats = await _get_json(session, url + "api/stats")
                    if sum(stats["handled"].values()) >= REPLAY_MESSAGES:
                        break
                    await asyncio.sleep(0.01)
                elapsed = time.monotonic() - started
                cpu.append((cpu_seconds(dashboard.pid) - before) / elapsed)
                rates.append(REPLAY_MESSAGES / elapsed)
                await asyncio.sleep(0.5)  # the last refresh reaches the viewers
                stats = await _get_json(session, url + "api/stats")
                dropped += sum(client["dropped"] for client in stats["clients"])
                frames.append(statistics.median(counts))
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for process in (dashboard, broker):
                process.terminate()
                await process.wait()
    print()
    print(f"Dashboard: the bundled session replayed as fast as possible into the dashboard "
          f"with {viewers} WebSocket viewers: {spread(rates)} msgs/s taken from the broker "
          f"(the replay above is the ceiling), {spread(frames)} frames per viewer, {dropped} "
          f"events dropped, dashboard {statistics.median(cpu):.2f} cores busy")


async def _count_frames(session: Any, url: str, counts: list[int], index: int) -> None:
    async with session.ws_connect(url) as ws:
        async for _ in ws:
            counts[index] += 1  # count only: a browser's parsing is not the dashboard's cost


async def _get_json(session: Any, url: str) -> Any:
    async with session.get(url) as response:
        return await response.json()


# Packets per second the game sends in a race, by packet (the specification's rates).
GAME_RATES_HZ = {"motion": 60, "lap_data": 60, "car_telemetry": 60, "car_status": 60,
                 "motion_ex": 60, "car_telemetry_2": 60, "car_damage": 10, "session": 2,
                 "car_setups": 2, "participants": 0.2, "session_history": 20, "tyre_sets": 20,
                 "lap_positions": 1, "event": 1}


def game_decoding() -> None:
    """Datagrams decoded per second, per packet type, on the simulator's 22-car datagrams."""
    from f1vocab.game.decoder import GameDecoder, Packet
    from producer.game.simulator import SessionSimulator

    decoder = GameDecoder()
    samples: dict[str, bytes] = {}
    for _, datagrams in SessionSimulator(2025, cars=22, hz=10, duration_s=12).frames():
        for datagram in datagrams:
            packet = decoder.decode(datagram)
            assert isinstance(packet, Packet)
            samples.setdefault(packet.name, datagram)
    print()
    print("Game UDP decoding (format 2025, 22 cars), one core, best of 5 x 2,000 decodes:")
    print()
    print("| packet | bytes | datagrams/s | µs each |")
    print("|---|---:|---:|---:|")
    cost_s = 0.0
    for name, datagram in sorted(samples.items()):
        best = min(_time_decodes(decoder, datagram, 2000) for _ in range(5))
        cost_s += GAME_RATES_HZ.get(name, 1) * best
        print(f"| {name} | {len(datagram):,} | {1 / best:,.0f} | {best * 1e6:.1f} |")
    print()
    print(f"A full 22-car race at the game's rates (60 Hz for the per-car packets) costs "
          f"{cost_s:.1%} of one core to decode.")


def _time_decodes(decoder: Any, datagram: bytes, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        decoder.decode(datagram)
    return (time.perf_counter() - started) / count


async def bridge_throughput(runs: int) -> None:
    """The UDP bridge end to end: simulator as fast as it sends -> bridge -> broker -> consumer."""
    import socket

    rates, received_all, sent_all = [], [], []
    for _ in range(runs):
        broker, address = await start_broker([])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        bridge = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "producer", "udp", "--listen", f"127.0.0.1:{port}",
            "--broker", address, "-q", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            assert bridge.stdout is not None
            await asyncio.wait_for(bridge.stdout.readline(), 15)
            started = time.monotonic()
            sim = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "producer", "udp-sim", "--to", f"127.0.0.1:{port}",
                "--format", "2025", "--cars", "22", "--hz", "60", "--duration", "30",
                "--as-fast-as-possible", cwd=ROOT, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(sim.communicate(), 300)
            sent = int(err.decode().split("sent ")[1].split()[0].replace(",", ""))
            elapsed = time.monotonic() - started
            await asyncio.sleep(1.0)
            bridge.send_signal(2)
            _, bridge_err = await asyncio.wait_for(bridge.communicate(), 30)
            summary = bridge_err.decode()
            received = int(summary.split("received ")[1].split()[0].replace(",", ""))
            rates.append(received / elapsed)
            received_all.append(received)
            sent_all.append(sent)
        finally:
            broker.terminate()
            await broker.wait()
    print()
    print(f"UDP bridge end to end (simulator, 22 cars, format 2025, as fast as it sends -> "
          f"bridge -> broker): {spread(rates)} datagrams/s; received "
          f"{min(received_all):,} of {max(sent_all):,} sent (loopback UDP may drop under a "
          f"flood; every drop the bridge itself makes is counted)")


SQLITE_ROWS = 200_000


async def rows_per_second(db: Path, count_sql: str, total: int) -> float:
    """Poll a database another process writes until `count_sql` reaches `total`: the rate
    from the first row seen to the last."""
    import sqlite3

    first_at = last_at = 0.0
    rows = first_rows = 0
    while rows < total:
        await asyncio.sleep(0.02)
        try:
            with sqlite3.connect(db) as connection:
                rows = connection.execute(count_sql).fetchone()[0]
        except sqlite3.OperationalError:
            continue  # not created yet
        now = time.monotonic()
        if rows and not first_at:
            first_at, first_rows = now, rows
        last_at = now
    return (total - first_rows) / (last_at - first_at)


async def sqlite_throughput(runs: int) -> None:
    """The SQLite writer draining 200,000 retained 200-byte messages: rows/s it sustains."""
    import tempfile

    rates = []
    for _ in range(runs):
        broker, address = await start_broker(["--retain-messages", str(SQLITE_ROWS)])
        folder = Path(tempfile.mkdtemp(prefix="slipstream-bench-"))
        db = folder / "bench.db"
        try:
            producer = await worker("produce", "--broker", address, "--count", str(SQLITE_ROWS))
            await asyncio.wait_for(producer.communicate(), 120)
            writer = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "consumer", "sqlite", "bench.>", "--db", str(db),
                "--from", "earliest", "--broker", address, "-q", cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            rates.append(await rows_per_second(db, "SELECT count(*) FROM messages",
                                               SQLITE_ROWS))
            writer.send_signal(2)
            await asyncio.wait_for(writer.wait(), 30)
        finally:
            broker.terminate()
            await broker.wait()
    print()
    print(f"SQLite writer, {SQLITE_ROWS:,} retained 200-byte messages drained into a fresh "
          f"database (WAL, batches of 2,000), first row to last: {spread(rates)} rows/s")


GAME_CAPTURE = ROOT / "samples" / "game" / "session-2026.cap"
GAME_ROUNDS = 10  # the bundled capture published this many times: 21,320 packets


async def game_storage(runs: int) -> None:
    """The SQLite writer draining the bundled game capture (published GAME_ROUNDS times):
    packets/s and database bytes per packet, compressed (the default) and --game-json."""
    import sqlite3
    import tempfile

    packets = 2132 * GAME_ROUNDS
    print(f"\nSQLite writer, the bundled game capture x{GAME_ROUNDS} ({packets:,} packets, "
          f"retained) drained into a fresh database, {runs} runs:\n")
    print("| storage | packets/s, first row to last | database MB | bytes per packet |")
    print("|---|---:|---:|---:|")
    for flags in ([], ["--game-json"]):
        rates, sizes = [], []
        for _ in range(runs):
            broker, address = await start_broker([])
            folder = Path(tempfile.mkdtemp(prefix="slipstream-bench-"))
            db = folder / "game.db"
            try:
                for _ in range(GAME_ROUNDS):
                    replay = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "producer", "udp-replay", str(GAME_CAPTURE),
                        "--as-fast-as-possible", "--broker", address, "-q", cwd=ROOT,
                        stderr=asyncio.subprocess.DEVNULL)
                    assert await asyncio.wait_for(replay.wait(), 60) == 0
                writer = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "consumer", "sqlite", "game.>", "--db", str(db),
                    "--from", "earliest", "--broker", address, "-q", *flags, cwd=ROOT,
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                rates.append(await rows_per_second(
                    db, "SELECT (SELECT count(*) FROM messages) + "
                        "(SELECT count(*) FROM game_packets)", packets))
                writer.send_signal(2)
                await asyncio.wait_for(writer.wait(), 30)
                with sqlite3.connect(db) as connection:
                    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                sizes.append(db.stat().st_size)
            finally:
                broker.terminate()
                await broker.wait()
        size = statistics.median(sizes)
        print(f"| {' '.join(flags) or 'compressed (default)'} | {spread(rates)} | "
              f"{size / 1e6:.1f} | {size / packets:,.0f} |")


async def retention_bounds_memory(flags: list[str]) -> None:
    """Broker peak RSS at one retention setting, for 2x and 4x the traffic of W1."""
    print()
    print("Broker peak RSS is set by retention, not traffic (W1 shape, 200-byte payloads):")
    print()
    print("| --retain-messages | messages published | broker peak RSS MiB |")
    print("|---:|---:|---:|")
    for retain in (10_000, 100_000):
        for count in (400_000, 800_000):
            result = await run_workload(1, count, 0.0, False,
                                        [*flags, "--retain-messages", str(retain)])
            print(f"| {retain:,} | {count:,} | {result.broker_rss_mib:.1f} |", flush=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
