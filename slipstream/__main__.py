"""`slipstream COMMAND ...`: one command for everything, shaped like the NATS CLI.

Each subcommand hands its arguments to the entry point that already exists
(`python -m broker`, `python -m producer`, `python -m consumer`), so flags,
help and exit codes are the same either way. This package sits above the three
others and is the only one that imports them all.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from broker import cli

Main = Callable[[list[str]], int]


def _broker(argv: list[str], prog: str = "slipstream broker") -> int:
    from broker.__main__ import main

    return main(argv, prog=prog)


def _producer(argv: list[str]) -> int:
    from producer.__main__ import main

    return main(argv, prog="slipstream")


def _consumer(argv: list[str], prog: str = "slipstream consumer") -> int:
    from consumer.__main__ import main

    return main(argv, prog=prog)


def _event(argv: list[str]) -> int:
    from slipstream.event.command import main

    return main(argv)


def _sub(argv: list[str]) -> int:
    from consumer.__main__ import load_installed

    return load_installed("printer").run(argv, prog="slipstream sub")


# name: (what it does, how it is run)
COMMANDS: dict[str, tuple[str, Main]] = {
    "broker": ("run the broker (or, with --broker nats://..., set up its JetStream stream)",
               _broker),
    "stats": ("show a running broker's statistics",
              lambda a: _broker(["stats", *a], prog="slipstream")),
    "passwd": ("make a user's password hash for the broker's --users file",
               lambda a: _broker(["passwd", *a], prog="slipstream")),
    "users": ("check a --users file and say who may do what",
              lambda a: _broker(["users", *a], prog="slipstream")),
    "pub": ("publish one message, or a synthetic stream with --count",
            lambda a: _producer(["pub", *a])),
    "sub": ("print the messages of topics matching a pattern (the printer consumer)", _sub),
    "replay": ("replay a live-timing recording or archive folder into live.* topics",
               lambda a: _producer(["replay", *a])),
    "live": ("bridge F1's live timing (SignalR) into live.* topics",
             lambda a: _producer(["live", *a])),
    "archive": ("list or replay sessions from F1's static archive",
                lambda a: _producer(["archive", *a])),
    "udp": ("bridge the F1 game's UDP telemetry into game.* topics",
            lambda a: _producer(["udp", *a])),
    "udp-sim": ("send a simulated game session as UDP datagrams",
                lambda a: _producer(["udp-sim", *a])),
    "udp-replay": ("replay a game capture into the broker or as UDP datagrams",
                   lambda a: _producer(["udp-replay", *a])),
    "event": ("race night in one command: broker, rigs' bridges, standings, dashboard",
              _event),
    "consumer": ("run an installed consumer: sqlite, alerter, dashboard, ... (NAME --help)",
                 _consumer),
    "run": ("run a consumer written in a Python file",
            lambda a: _consumer(["run", *a], prog="slipstream")),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (text, _) in COMMANDS.items()]
    return ("usage: slipstream COMMAND [options]    (slipstream COMMAND --help for its options)\n\n"
            "commands:\n" + "\n".join(lines) + "\n\n"
            "The same commands run as python -m broker | producer | consumer.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return cli.EXIT_OK if argv else cli.EXIT_USAGE
    command = COMMANDS.get(argv[0])
    if command is None:
        close = [name for name in COMMANDS if name.startswith(argv[0][:2])]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        print(f"slipstream: no command {argv[0]!r}{hint}\n\n{usage()}", file=sys.stderr)
        return cli.EXIT_USAGE
    return command[1](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
