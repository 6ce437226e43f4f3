"""`python -m consumer printer`: print what arrives, for people or for jq.

The readable form is one line per message: time, topic, seq and a compact
rendering of the data cut to one line. Gap notices are printed in place, so
a loss is seen where it happened.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from broker import cli
from broker.client import Message, Subscription
from broker.protocol import Gap

LINE_CHARS = 160


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "printer", help="print messages as they arrive",
        description="Print the messages of the topics matching PATTERN ('>' for all).")
    parser.add_argument("patterns", nargs="*", default=[">"], metavar="PATTERN",
                        help="topic patterns: '*' is one token, '>' the rest (default '>')")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line: topic, seq, ts, data")
    parser.add_argument("--count", type=cli.positive_int, metavar="N",
                        help="exit 0 after N messages")
    parser.add_argument("--from", dest="start", type=cli.start_position, default="new",
                        metavar="new|earliest|SEQ", help="where to start (default new)")
    parser.add_argument("--durable", metavar="NAME",
                        help="resume where the last consumer with this name stopped")
    cli.add_connection_args(parser)
    cli.add_logging_args(parser)
    parser.set_defaults(command=run)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def format_json(message: Message) -> str:
    record: dict[str, Any] = {"topic": message.topic, "seq": message.seq,
                              "ts": message.timestamp_us / 1e6, "data": message.data}
    if message.gap is not None:
        record["gap"] = {"first_seq": message.gap.first_seq, "missed": message.gap.missed,
                         "reason": message.gap.reason}
    return json.dumps(record, default=_jsonable, separators=(",", ":"))


def format_line(message: Message) -> str:
    stamp = datetime.fromtimestamp(message.timestamp_us / 1e6, UTC).strftime("%H:%M:%S.%f")[:-3]
    data = message.data
    tag = ""
    if message.topic.startswith("live.") and isinstance(data, dict) and "data" in data:
        tag = "snapshot " if data.get("snapshot") else ""  # live timing: show F1's part
        data = data["data"]
    text = json.dumps(data, default=_jsonable, separators=(",", ":"))
    line = f"{stamp} {message.topic} #{message.seq} {tag}{text}"
    return line if len(line) <= LINE_CHARS else line[: LINE_CHARS - 3] + "..."


def format_gap(gap: Gap) -> str:
    last = gap.first_seq + gap.missed - 1
    return f"!! {gap.missed} messages of {gap.topic} lost (#{gap.first_seq}..#{last}): {gap.reason}"


class _Done(Exception):
    """--count reached: unwinds the per-subscription tasks."""


async def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    printed = 0
    subs: list[Subscription] = []

    async def print_all(sub: Subscription) -> None:
        nonlocal printed
        async for message in sub:
            if message.gap is not None and not args.json:
                print(format_gap(message.gap), file=out)
            print(format_json(message) if args.json else format_line(message), file=out,
                  flush=True)
            printed += 1
            if args.count and printed >= args.count:
                raise _Done

    async with cli.client_for(args, "printer") as client:
        try:
            for index, pattern in enumerate(args.patterns):
                durable = f"{args.durable}.{index}" if args.durable and index else args.durable
                subs.append(await client.subscribe(pattern, start=args.start, durable=durable))
            async with asyncio.TaskGroup() as tasks:
                for sub in subs:
                    tasks.create_task(print_all(sub))
        except* _Done:
            pass
        finally:
            print(f"printer: {printed:,} messages, {sum(s.gap_count for s in subs)} gaps "
                  f"({sum(s.missed for s in subs):,} messages missed)", file=sys.stderr)
    return cli.EXIT_OK
