"""`python -m producer udp | udp-sim | udp-replay`: the F1 game telemetry commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

from broker import cli
from broker.tasks import stop_task
from f1vocab.game.specs import SPECS
from producer.game.bridge import Bridge
from producer.game.capture import CaptureReport, read_capture
from producer.game.simulator import SessionSimulator
from producer.pacing import Pacer

log = logging.getLogger("slipstream.game")
GAME_PORT = 20777


def add_parsers(subparsers: Any) -> None:
    udp = subparsers.add_parser(
        "udp", help="bridge the F1 game's UDP telemetry into game.* topics",
        description="Receive the F1 game's UDP telemetry (formats 2024, 2025, 2026), decode "
                    "it and publish each packet on game.<packet>. Listens on loopback by "
                    "default; --listen 0.0.0.0:20777 receives from a console or PC on the LAN.")
    udp.add_argument("--listen", default=f"127.0.0.1:{GAME_PORT}", metavar="HOST:PORT",
                     help="where the game sends to (default %(default)s)")
    udp.add_argument("--raw", action="store_true",
                     help="also publish each untouched datagram on game.raw")
    udp.add_argument("--record", type=Path, metavar="FILE",
                     help="append every datagram, with its receive time, to a capture file")
    cli.add_command(udp, run_bridge)

    sim = subparsers.add_parser(
        "udp-sim", help="send a simulated game session as UDP datagrams",
        description="Emit specification-valid datagrams of a plausible session: cars "
                    "lapping, tyres wearing, a fastest lap, a penalty and a safety car.")
    sim.add_argument("--to", default=f"127.0.0.1:{GAME_PORT}", metavar="HOST:PORT",
                     help="where to send the datagrams: the port `udp` listens on "
                          "(default %(default)s)")
    sim.add_argument("--format", type=int, choices=sorted(SPECS), default=2026,
                     help="which game's UDP format to speak (default %(default)s)")
    sim.add_argument("--cars", type=cli.positive_int, default=20,
                     help="cars in the simulated session (default %(default)s)")
    sim.add_argument("--hz", type=float, default=60.0, help="frames per second (default 60)")
    sim.add_argument("--duration", type=float, default=120.0, metavar="S",
                     help="session length in seconds (default 120)")
    sim.add_argument("--as-fast-as-possible", action="store_true",
                     help="no pauses: the whole session at once (for tests and benchmarks)")
    sim.add_argument("--session-uid", type=int, metavar="N",
                     help="the session's uid (default: a new one each run, as the game does; "
                          "two runs with one uid look like one session, and the standings "
                          "take the second run's laps for the first's)")
    cli.add_logging_args(sim)
    sim.set_defaults(command=run_simulator, log_level=logging.INFO)

    replay = subparsers.add_parser(
        "udp-replay", help="replay a capture into the broker or as UDP datagrams",
        description="Replay a capture file (from `udp --record`), keeping its timing.")
    replay.add_argument("capture", type=Path, metavar="FILE",
                        help="a capture written by `udp --record` (samples/game/ has one)")
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, metavar="X",
                      help="X times the captured pace (default 1)")
    pace.add_argument("--as-fast-as-possible", action="store_true",
                      help="no pauses at all")
    replay.add_argument("--to", metavar="HOST:PORT",
                        help="send the datagrams to this UDP port instead of the broker")
    replay.add_argument("--raw", action="store_true", help="into the broker: also game.raw")
    cli.add_command(replay, run_replay)


async def run_bridge(args: argparse.Namespace) -> int:
    host, port = cli.flag_address(args.listen, "--listen")
    client = cli.client_for(args, "game-udp")
    bridge = Bridge(client, args.raw, args.record)
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_datagram_endpoint(lambda: bridge,
                                                           local_addr=(host, port))
    except OSError as exc:
        return cli.fail("udp", f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    print(f"listening for game telemetry on {host}:{sock.getsockname()[1]}", flush=True)
    try:
        await client.connect(wait=True)  # the datagrams keep coming while we wait
        await bridge.publish_forever()
    finally:
        transport.close()
        await bridge.drain()
        await client.close()
        print(f"udp: {bridge.stats.summary()}", file=sys.stderr)
    return cli.EXIT_OK


async def run_simulator(args: argparse.Namespace) -> int:
    host, port = cli.flag_address(args.to, "--to")
    uid = args.session_uid if args.session_uid is not None else secrets.randbits(63)
    simulator = SessionSimulator(args.format, args.cars, args.hz, args.duration, uid)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                       remote_addr=(host, port))
    sent = 0
    pacer = Pacer(0.0 if args.as_fast_as_possible else 1.0)
    try:
        for now, datagrams in simulator.frames():
            await pacer.wait_until(now)
            for datagram in datagrams:
                transport.sendto(datagram)
            sent += len(datagrams)
            if args.as_fast_as_possible and sent % 200 < len(datagrams):
                await asyncio.sleep(0.001)  # let the receiver keep up on loopback
    finally:
        transport.close()
        print(f"udp-sim: sent {sent:,} datagrams of format {args.format} "
              f"({len(simulator.cars)} cars, {args.duration:g} s at {args.hz:g} Hz, "
              f"session uid {uid}) "
              f"to {host}:{port}", file=sys.stderr)
    return cli.EXIT_OK


async def run_replay(args: argparse.Namespace) -> int:
    if not args.capture.is_file():
        return cli.fail("udp-replay", f"no such file: {args.capture}", cli.EXIT_USAGE)
    report = CaptureReport()
    try:
        records = list(read_capture(args.capture, report))
    except ValueError as exc:
        return cli.fail("udp-replay", str(exc), cli.EXIT_USAGE)
    if not records:
        return cli.fail("udp-replay", f"{args.capture} holds no whole record"
                        f"{': ' + report.torn if report.torn else ''}", cli.EXIT_USAGE)
    if report.torn:
        log.warning("%s: %s", args.capture, report.torn)
    speed = 0.0 if args.as_fast_as_possible else args.speed
    if args.to:
        sent = await _replay_to_udp(records, cli.flag_address(args.to, "--to"), speed)
        print(f"udp-replay: sent {sent:,} datagrams", file=sys.stderr)
        return cli.EXIT_OK
    async with cli.client_for(args, "game-replay") as client:
        bridge = Bridge(client, args.raw, None)
        publisher = asyncio.create_task(bridge.publish_forever())
        try:
            await _pace(records, speed, lambda datagram: bridge.datagram_received(
                datagram, ("capture", 0)), yield_every=64)
            await bridge.queue.join()  # everything handed to the client
        finally:
            await stop_task(publisher)
            await bridge.drain()
            print(f"udp-replay: {bridge.stats.summary()}", file=sys.stderr)
    return cli.EXIT_OK


async def _replay_to_udp(records: list[tuple[float, bytes]], target: tuple[str, int],
                         speed: float) -> int:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                       remote_addr=target)
    try:
        await _pace(records, speed, transport.sendto, yield_every=200)
    finally:
        transport.close()
    return len(records)


async def _pace(records: list[tuple[float, bytes]], speed: float, send: Any,
                yield_every: int) -> None:
    """Call send(datagram) for each record, at the recorded spacing divided by `speed`."""
    if not records:
        return
    first = records[0][0]
    pacer = Pacer(speed)
    for index, (received_s, datagram) in enumerate(records):
        await pacer.wait_until(received_s - first)
        if speed <= 0 and index % yield_every == yield_every - 1:
            await asyncio.sleep(0.001)  # as fast as possible, but let the others breathe
        send(datagram)
