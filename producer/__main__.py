"""`python -m producer`: the producer commands (each one a subcommand)."""

from __future__ import annotations

import argparse
import logging
import sys

from broker import cli
from producer import pub
from producer.game import commands as game
from producer.livetiming import commands as livetiming


def main(argv: list[str] | None = None, prog: str = "python -m producer") -> int:
    """`prog` names the command in help and errors (`slipstream` runs these too)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Bridge data sources into slipstream topics.")
    subparsers = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    pub.add_parser(subparsers)
    livetiming.add_parsers(subparsers)
    game.add_parsers(subparsers)
    args = parser.parse_args(argv)
    args.command_name = (argv if argv is not None else sys.argv[1:] or ["?"])[0]
    cli.setup_logging(args, default=getattr(args, "log_level", logging.WARNING))
    return cli.run(f"{prog} {args.command_name}", lambda: args.command(args))


if __name__ == "__main__":
    sys.exit(main())
