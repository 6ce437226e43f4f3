"""`slipstream event [DIR]`: race night in one command.

It starts the broker on the event's directory with its users, one UDP
bridge per rig, the standings and the dashboard; says what to type into each
game and each screen's browser, and where the admin logs in; and on Ctrl-C
stops them all, in order. Run again with the same directory, it goes on with
the same event: the broker keeps the standings on disk, and the standings
are read back from it. docs/event.md walks through a night.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import Any

from broker import cli
from slipstream.event.children import Child, ChildFailed, Children
from slipstream.event.setup import EventDir, Secrets, Settings, rig_user

PROG = "slipstream event"
# Credentials a child must not take from the organiser's shell: each gets its own.
NOT_INHERITED = ("SLIPSTREAM_BROKER", "SLIPSTREAM_TOKEN", "SLIPSTREAM_USER",
                 "SLIPSTREAM_PASSWORD", "SLIPSTREAM_ADMIN_PASSWORD", "SLIPSTREAM_USERS")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Race night in one command: the broker (with users), a UDP "
        "bridge per rig, the standings and the dashboard, on the LAN. Prints what to type "
        "into each game and each screen; Ctrl-C stops everything; run again with the same "
        "directory to go on with the same event. Flags given are kept in DIR/event.toml "
        "for the next start.")
    parser.add_argument("directory", nargs="?", type=Path, default=Path("event"),
                        metavar="DIR", help="the event's directory: settings, passwords, "
                                            "the broker's data, exports, logs (default "
                                            "./event)")
    rigs = parser.add_mutually_exclusive_group()
    rigs.add_argument("--rigs", type=cli.positive_int, metavar="N",
                      help="N rigs named rig1..rigN (default: as before, else 1)")
    rigs.add_argument("--rig", action="append", metavar="NAME",
                      help="a rig by name (repeat for each: --rig left --rig right)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--local", dest="lan", action="store_false", default=None,
                       help="serve this machine only (loopback): a rehearsal")
    where.add_argument("--lan", dest="lan", action="store_true", default=None,
                       help="serve the rigs and screens on the network (the default)")
    for flag, what in (("--broker-port", "the broker's TCP port (default 20778)"),
                       ("--udp-port", "the first rig's UDP port; rig i listens on it + i "
                                      "(default 20777, the games' own default)"),
                       ("--standings-port", "the standings pages' HTTP port (default 8081)"),
                       ("--dashboard-port", "the dashboard's HTTP port (default 8080)")):
        parser.add_argument(flag, type=int, metavar="PORT", help=what)
    parser.add_argument("--points", metavar="P1,P2,...",
                        help="points for 1st, 2nd, ... (default 25,18,15,12,10,8,6,4,2,1)")
    return parser


def changes_from(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags change (those not given keep the event's)."""
    changes: dict[str, Any] = {}
    if args.rigs is not None:
        changes["rigs"] = tuple(f"rig{index}" for index in range(1, args.rigs + 1))
    if args.rig:
        changes["rigs"] = tuple(args.rig)
    for name in ("lan", "broker_port", "udp_port", "standings_port", "dashboard_port",
                 "points"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    return changes


def lan_address() -> str:
    """This machine's address on the network the games and screens are on: the one its
    default route leaves from (a UDP connect sends nothing); else its name."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere real
            address: str = probe.getsockname()[0]
            return address
        except OSError:
            return socket.gethostname()


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return cli.run(PROG, lambda: run_event(args))


async def run_event(args: argparse.Namespace) -> int:
    event = EventDir(args.directory.resolve())
    resumed = event.exists
    settings = event.settings(changes_from(args))
    secrets, made = event.secrets(settings)
    event.write_users(settings, secrets)
    bind = "0.0.0.0" if settings.lan else "127.0.0.1"
    shown = lan_address() if settings.lan else "127.0.0.1"
    broker = f"127.0.0.1:{settings.broker_port}"  # the children are on this machine
    children = Children()
    _say(f"{PROG}: {'going on with the event' if resumed else 'a new event'} in {event.path}"
        + (" (its standings are read back from the broker's data)" if resumed else ""))
    try:
        for child in plan(event, settings, secrets, bind, broker):
            await children.start(child)
        _addresses(event, settings, secrets if made else None, shown)
        stopped = await children.watch()
        raise ChildFailed(f"{stopped.name} stopped by itself (exit "
                          f"{stopped.process.returncode if stopped.process else '?'}); its "
                          f"log, {stopped.log}, ends:\n{stopped.last_words()}")
    except ChildFailed as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        _say("stopping the rest ...")
        await children.stop(_say)
        return cli.EXIT_FAILURE
    except asyncio.CancelledError:  # Ctrl-C or SIGTERM: the way an event ends
        _say("\nstopping ...")
        clean = await children.stop(_say)
        _say(_standings_summary(event) + f"\nthe event is kept in {event.path}: "
            f"`slipstream event {args.directory}` goes on with it.")
        return cli.EXIT_OK if clean else cli.EXIT_FAILURE


def plan(event: EventDir, settings: Settings, secrets: Secrets, bind: str,
         broker: str) -> list[Child]:
    """The processes, in the order they start (and the reverse of the one they stop)."""
    base = {key: value for key, value in os.environ.items() if key not in NOT_INHERITED}
    base["SLIPSTREAM_PROGRESS"] = "0"

    def python(name: str, log: str, ready: str, args: list[str],
               **env: str) -> Child:
        return Child(name, [sys.executable, "-m", *args], {**base, **env}, ready,
                     event.logs / f"{log}.log")

    def user(name: str, password: str) -> dict[str, str]:
        return {"SLIPSTREAM_USER": name, "SLIPSTREAM_PASSWORD": password}

    children = [
        python("the broker", "broker", "slipstream broker listening", [
            "broker", "--host", bind, "--port", str(settings.broker_port),
            "--users", str(event.users_file), "--data-dir", str(event.broker_data)]),
        python("the standings", "standings", "standings:", [
            "consumer", "standings", "--http", f"{bind}:{settings.standings_port}",
            "--source", "game", "--game-cars", "player", "--points", settings.points,
            "--export-dir", str(event.exports), "--broker", broker],
            **user("standings", secrets.standings),
            SLIPSTREAM_ADMIN_PASSWORD=secrets.admin),
        python("the dashboard", "dashboard", "dashboard:", [
            "consumer", "dashboard", "--http", f"{bind}:{settings.dashboard_port}",
            "--broker", broker]),  # as the screens are: anonymous, read only
    ]
    for rig, port in settings.rig_ports().items():
        children.append(python(f"{rig}'s bridge", f"udp-{rig}", "listening for game", [
            "producer", "udp", "--rig", rig, "--listen", f"{bind}:{port}",
            "--broker", broker], **user(rig_user(rig), secrets.rig(rig))))
    return children


def _addresses(event: EventDir, settings: Settings, new: Secrets | None, host: str) -> None:
    """What to type where: into each game, each screen, the admin's browser."""
    width = max(len(rig) for rig in settings.rigs)
    rigs = "\n".join(f"      {rig:<{width}}  UDP IP Address {host}, UDP Port {port}"
                     for rig, port in settings.rig_ports().items())
    password = f"password {new.admin}" if new is not None else "the admin password"
    _say(f"""
  in each rig's game (Settings, Telemetry Settings: UDP Telemetry On, Broadcast Off):
{rigs}
  on the screens:  http://{host}:{settings.standings_port}/   (standings)
                   http://{host}:{settings.dashboard_port}/   (dashboard)
  the admin:       http://{host}:{settings.standings_port}/admin   ({password}; it is kept in
                   {event.secrets_file})
  the broker:      {host}:{settings.broker_port}   (anyone may read; `--user admin` with the
                   admin password may do anything; users in {event.users_file})
  the data:        {event.broker_data}   (exports: {event.exports}, logs: {event.logs})
{"  (this machine only: --lan serves the network)" if not settings.lan else ""}
Ctrl-C stops everything; `slipstream event` with the same directory goes on with it.""")


def _standings_summary(event: EventDir) -> str:
    """The standings' own last word (drivers, times, laps), from their log."""
    try:
        lines = (event.logs / "standings.log").read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    return next((line for line in reversed(lines)
                 if line.startswith("standings: ") and " drivers, " in line), "")


def _say(text: str) -> None:
    print(text, flush=True)

