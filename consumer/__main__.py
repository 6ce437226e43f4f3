"""`python -m consumer`: the built-in consumers (each one a subcommand)."""

from __future__ import annotations

import argparse
import logging
import sys

from broker import cli
from consumer import printer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m consumer",
        description="Subscribe to slipstream topics and act on each message.")
    subparsers = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    printer.add_parser(subparsers)
    args = parser.parse_args(argv)
    cli.setup_logging(args, default=logging.WARNING)
    return cli.run(f"python -m consumer {args.command.__module__.rsplit('.', 1)[-1]}",
                   lambda: args.command(args))


if __name__ == "__main__":
    sys.exit(main())
