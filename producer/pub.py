"""`python -m producer pub`: publish one message, JSON lines from stdin, or N synthetic ones.

The synthetic mode is a load generator: each message is a msgpack map with
its index and send time, padded to --size bytes, published at --rate per
second (or as fast as the client can) and the achieved rate is reported.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import msgpack

from broker import cli
from broker.client import Client
from broker.errors import ConnectionLostError
from producer.pacing import Pacer

log = logging.getLogger("slipstream.pub")

DESCRIPTION = """\
Publish to a topic. With JSON, publishes that one message; with --count N,
publishes N synthetic messages of --size bytes at --rate per second and
reports the rate; with neither, publishes each JSON line read from stdin."""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("pub", help="publish one message or a synthetic stream",
                                   description=DESCRIPTION)
    parser.add_argument("topic", type=cli.topic_arg, help="topic to publish to, e.g. demo.hello")
    parser.add_argument("json", nargs="?", help="message as JSON, e.g. '{\"lap\": 3}'")
    parser.add_argument("--count", type=cli.positive_int, help="publish N synthetic messages")
    parser.add_argument("--size", type=cli.parse_size, default=200,
                        help="bytes per synthetic message (default %(default)s)")
    parser.add_argument("--rate", type=float, default=0.0, metavar="PER_S",
                        help="synthetic messages per second (default: as fast as possible)")
    parser.add_argument("--confirm", action="store_true",
                        help="wait for the broker to confirm each message and print its seq; "
                             "a publish whose connection is lost before its confirmation is "
                             "'in doubt' (it may or may not be stored): stop with exit 1")
    parser.add_argument("--retry", action="store_true",
                        help="with --confirm: publish an in-doubt message again after "
                             "reconnecting (it may then be stored twice), and count them")
    cli.add_command(parser, run, logging.WARNING)


class InDoubt:
    """Publishes whose outcome a lost connection hid, and what --retry does about them."""

    def __init__(self, retry: bool) -> None:
        self.retry = retry
        self.count = 0

    async def publish(self, client: Client, topic: str, payload: bytes,
                      confirm: bool) -> int | None:
        while True:
            try:
                return await client.publish_bytes(topic, payload, confirm=confirm)
            except ConnectionLostError as exc:
                self.count += 1
                if not self.retry:
                    raise ConnectionLostError(
                        f"{exc}; 1 publish in doubt (to {topic}): it may or may not be stored "
                        "(use --retry to publish it again after reconnecting)") from None
                log.warning("publish to %s in doubt (%s): publishing it again once "
                            "reconnected", topic, exc)

    def summary(self) -> str:
        if not self.count:
            return ""
        return (f"; {self.count} publishes were in doubt after a lost connection and were "
                "published again (each may be stored twice)")


def synthetic_payloads(size: int) -> Iterator[bytes]:
    """msgpack maps {"n", "sent_ns", "pad"} padded to about `size` bytes each (never more).

    `sent_ns` is time.monotonic_ns() at encoding, for latency measurements on
    one machine.
    """
    biggest_head = len(msgpack.packb({"n": 2**63, "sent_ns": 2**63, "pad": b""}))
    bin_header = 1 if size < 256 else 2 if size < 65536 else 4
    pad = b"x" * max(0, size - biggest_head - bin_header)
    for index in itertools.count():
        yield msgpack.packb({"n": index, "sent_ns": time.monotonic_ns(), "pad": pad})


async def run(args: argparse.Namespace) -> int:
    if args.json is not None and args.count:
        return cli.fail("pub", "give either a JSON message or --count, not both", cli.EXIT_USAGE)
    if args.retry and not args.confirm:
        return cli.fail("pub", "--retry needs --confirm (only a confirmed publish can be "
                               "known to be in doubt)", cli.EXIT_USAGE)
    message = parse_json(args.json, "the JSON argument") if args.json is not None else None
    in_doubt = InDoubt(args.retry)
    async with cli.client_for(args, "pub") as client:
        if args.count:
            await publish_synthetic(client, args, in_doubt)
        elif args.json is not None:  # one message: confirmed, so its seq can be shown
            await publish_one(client, args, message, in_doubt, confirm=True)
        else:
            for number, line in enumerate(sys.stdin, 1):
                if line.strip():
                    await publish_one(client, args, parse_json(line, f"stdin line {number}"),
                                      in_doubt)
    return cli.EXIT_OK


def parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(cli.fail("pub", f"{where} is not valid JSON: {exc}",
                                  cli.EXIT_USAGE)) from None


async def publish_one(client: Client, args: argparse.Namespace, data: Any,
                      in_doubt: InDoubt, confirm: bool = False) -> None:
    seq = await in_doubt.publish(client, args.topic, msgpack.packb(data),
                                 confirm or args.confirm)
    if seq is not None:
        print(f"published {args.topic} #{seq}{in_doubt.summary()}")


async def publish_synthetic(client: Client, args: argparse.Namespace,
                            in_doubt: InDoubt) -> None:
    interval_s = 1.0 / args.rate if args.rate > 0 else 0.0
    pacer = Pacer(1.0 if interval_s else 0.0)
    payloads = synthetic_payloads(args.size)
    sent = 0
    try:
        for index in range(args.count):
            await pacer.wait_until(index * interval_s)
            await in_doubt.publish(client, args.topic, next(payloads), args.confirm)
            sent = index + 1
        await client.flush()
    finally:  # Ctrl-C too: say how far it got
        elapsed = max(time.monotonic() - pacer.started, 1e-3)
        stopped = "" if sent == args.count else f" (stopped after {sent:,} of {args.count:,})"
        print(f"published {sent:,} messages of {args.size} bytes to {args.topic} in "
              f"{elapsed:.3f} s: {sent / elapsed:,.0f} msg/s{in_doubt.summary()}{stopped}",
              file=sys.stderr)
