"""`python -m producer`: the producer commands (each one a subcommand)."""

from __future__ import annotations

import argparse
import logging
import sys

from broker import cli
from producer import pub


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m producer",
        description="Bridge data sources into slipstream topics.")
    subparsers = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    pub.add_parser(subparsers)
    args = parser.parse_args(argv)
    cli.setup_logging(args, default=logging.WARNING)
    return cli.run(f"python -m producer {args.command.__module__.rsplit('.', 1)[-1]}",
                   lambda: args.command(args))


if __name__ == "__main__":
    sys.exit(main())
