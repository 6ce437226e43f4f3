"""`python -m producer udp | udp-sim | udp-replay`: the F1 game telemetry commands."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

from broker import cli
from broker.errors import ConfigError
from broker.tasks import stop_task
from f1vocab.game.specs import SPECS
from f1vocab.game.topics import RigNameError, check_rig
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
                    "default; --listen 0.0.0.0:20777 receives from a console or PC on the LAN. "
                    "Several rigs: --rig NAME publishes on game.NAME.<packet>, or give one "
                    "--listen HOST:PORT=NAME per rig (each game sends to its own port).")
    udp.add_argument("--listen", action="append", metavar="HOST:PORT[=RIG]",
                     help=f"where a game sends to (default 127.0.0.1:{GAME_PORT}); again for "
                          "each further rig, each with =RIG")
    udp.add_argument("--rig", metavar="NAME",
                     help="the rig this bridge hears: its packets go to game.NAME.<packet> "
                          "(default: game.<packet>, one rig)")
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
                     help="session length in seconds (default 120; a lap of Silverstone "
                          "takes about 90 s, so the first timed lap lands after about 1:30)")
    sim.add_argument("--laps", type=cli.positive_int, metavar="N",
                     help="instead of --duration: run until every car has timed N laps "
                          "(about 1:30 each, plus the run to the line)")
    sim.add_argument("--as-fast-as-possible", action="store_true",
                     help="no pauses: the whole session at once (for tests and benchmarks)")
    sim.add_argument("--rigs", type=cli.positive_int, default=1, metavar="N",
                     help="simulate N rigs at once, each its own session: rig i sends to "
                          "--to's port + i (a bridge with one --listen PORT=RIG each)")
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
    replay.add_argument("--rig", metavar="NAME",
                        help="into the broker: as rig NAME's game (game.NAME.<packet>)")
    cli.add_command(replay, run_replay)


def listen_addresses(args: argparse.Namespace) -> list[tuple[str, int, str | None]]:
    """(host, port, rig) per --listen; ConfigError for a bad address, rig or mix."""
    texts = args.listen or [f"127.0.0.1:{GAME_PORT}"]
    listens = []
    for text in texts:
        address, _, rig = text.partition("=")
        host, port = cli.flag_address(address, "--listen")
        listens.append((host, port, rig or args.rig))
    if len(listens) > 1 and not all(rig for _, _, rig in listens):
        raise ConfigError("several --listen need a rig each (--listen HOST:PORT=RIG): their "
                          "packets would mix on game.<packet>")
    rigs = [rig for _, _, rig in listens if rig]
    if len(set(rigs)) != len(rigs):
        raise ConfigError(f"two --listen name the same rig: {', '.join(rigs)}")
    if len(listens) > 1 and args.rig:
        raise ConfigError("--rig names the rig of one --listen; with several, give each its "
                          "own (--listen HOST:PORT=RIG)")
    if len(listens) > 1 and args.record:
        raise ConfigError("--record keeps one rig's datagrams: run a bridge per rig to "
                          "record them")
    for rig in rigs:
        try:
            check_rig(rig)
        except RigNameError as exc:
            raise ConfigError(str(exc)) from None
    return listens


async def run_bridge(args: argparse.Namespace) -> int:
    listens = listen_addresses(args)
    client = cli.client_for(args, "game-udp")
    bridge = Bridge(client, args.raw, args.record, listens[0][2])
    loop = asyncio.get_running_loop()
    transports: list[asyncio.DatagramTransport] = []
    try:
        for index, (host, port, rig) in enumerate(listens):
            port_protocol = bridge if index == 0 else bridge.for_rig(rig or "")
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda p=port_protocol: p, local_addr=(host, port))  # type: ignore[misc]
            except OSError as exc:
                return cli.fail("udp", f"cannot listen on {host}:{port}: {exc.strerror or exc}")
            transports.append(transport)
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            heard = f" (rig {rig}: game.{rig}.<packet>)" if rig else ""
            print(f"listening for game telemetry on {host}:{sock.getsockname()[1]}{heard}",
                  flush=True)
        await client.connect(wait=True)  # the datagrams keep coming while we wait
        await bridge.publish_forever()
    finally:
        for transport in transports:
            transport.close()
        await bridge.drain()
        await client.close()
        print(f"udp: {bridge.stats.summary()}", file=sys.stderr)
    return cli.EXIT_OK


async def run_simulator(args: argparse.Namespace) -> int:
    host, port = cli.flag_address(args.to, "--to")
    if port + args.rigs - 1 > 65535:
        return cli.fail("udp-sim", f"--rigs {args.rigs} from port {port} go past 65535",
                        cli.EXIT_USAGE)
    if args.session_uid is not None and args.rigs > 1:
        return cli.fail("udp-sim", "--session-uid with --rigs: each rig is a session of its "
                        "own, with its own uid", cli.EXIT_USAGE)
    uids = [args.session_uid if args.session_uid is not None else secrets.randbits(63)
            for _ in range(args.rigs)]
    simulators = [SessionSimulator(args.format, args.cars, args.hz, args.duration, uid,
                                   laps=args.laps) for uid in uids]
    loop = asyncio.get_running_loop()
    transports = [(await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=(host, port + rig)))[0]
        for rig in range(args.rigs)]
    sent = 0
    pacer = Pacer(0.0 if args.as_fast_as_possible else 1.0)
    try:
        # The rigs' sessions side by side, frame by frame, as rigs at one event run.
        # (With --laps, a rig whose cars are done sends nothing more while the others go on.)
        for frames in itertools.zip_longest(*(simulator.frames() for simulator in simulators),
                                            fillvalue=(0.0, [])):
            await pacer.wait_until(max(now for now, _ in frames))
            for transport, (_, datagrams) in zip(transports, frames, strict=True):
                for datagram in datagrams:
                    transport.sendto(datagram)
                sent += len(datagrams)
            if args.as_fast_as_possible and sent % 200 < sum(len(d) for _, d in frames):
                await asyncio.sleep(0.001)  # let the receiver keep up on loopback
    finally:
        for transport in transports:
            transport.close()
        where = f"{host}:{port}" + (f"..{port + args.rigs - 1}" if args.rigs > 1 else "")
        length = f"{args.laps} lap{'s' if args.laps > 1 else ''}" if args.laps \
            else f"{args.duration:g} s"
        print(f"udp-sim: sent {sent:,} datagrams of format {args.format} "
              f"({args.cars} cars, {length} at {args.hz:g} Hz, "
              f"session uid {', '.join(map(str, uids))}) to {where}", file=sys.stderr)
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
    if args.rig is not None:
        try:
            check_rig(args.rig)
        except RigNameError as exc:
            return cli.fail("udp-replay", str(exc), cli.EXIT_USAGE)
    if args.to:
        sent = await _replay_to_udp(records, cli.flag_address(args.to, "--to"), speed)
        print(f"udp-replay: sent {sent:,} datagrams", file=sys.stderr)
        return cli.EXIT_OK
    async with cli.client_for(args, "game-replay") as client:
        bridge = Bridge(client, args.raw, None, rig=args.rig)
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
