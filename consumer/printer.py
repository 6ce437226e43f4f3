"""`python -m consumer printer`: print what arrives, for people or for jq.

The readable form is one line per message: time, topic, seq and a compact
rendering of the data cut to one line. Gap notices are printed in place, so
a loss is seen where it happened.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from broker import cli
from broker.client import Message
from broker.subscription import UNKNOWN_COUNT
from broker.wire.protocol import Gap
from consumer.api import Consumer, json_text
from consumer.summaries import summarise

LINE_CHARS = 160


def format_json(message: Message) -> str:
    record: dict[str, Any] = {"topic": message.topic, "seq": message.seq,
                              "ts": message.timestamp_us / 1e6, "data": message.data}
    if message.gap is not None:
        record["gap"] = {"first_seq": message.gap.first_seq, "missed": message.gap.missed,
                         "reason": message.gap.reason}
    return json_text(record)


def format_line(message: Message) -> str:
    stamp = datetime.fromtimestamp(message.timestamp_us / 1e6, UTC).strftime("%H:%M:%S.%f")[:-3]
    line = f"{stamp} {message.topic} #{message.seq} {summarise(message.topic, message.data)}"
    return line if len(line) <= LINE_CHARS else line[: LINE_CHARS - 3] + "..."


def format_gap(gap: Gap) -> str:
    if gap.missed == UNKNOWN_COUNT:
        return f"!! messages of {gap.topic} after #{gap.first_seq - 1} may be lost: {gap.reason}"
    last = gap.first_seq + gap.missed - 1
    return f"!! {gap.missed} messages of {gap.topic} lost (#{gap.first_seq}..#{last}): {gap.reason}"


app = Consumer("printer", description="Print the messages of the topics matching PATTERN "
                                       "('>' for all), readable or as JSON lines.")


@app.arguments
def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("patterns", nargs="*", default=[">"], metavar="PATTERN",
                        type=cli.pattern_arg,
                        help="topic patterns: '*' is one token, '>' the rest (default '>')")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line: topic, seq, ts, data")
    parser.add_argument("--count", type=cli.positive_int, metavar="N",
                        help="exit 0 after N messages")


@app.startup
async def _subscribe() -> None:
    printer = Printer(app.args.json, app.args.count, app.stop)
    for pattern in app.args.patterns:
        app.add_handler(pattern, printer.print_message)


class Printer:
    """Prints each message (and each gap before it); stops after `count`, if given."""

    def __init__(self, as_json: bool, count: int | None, stop: Callable[[], None]) -> None:
        self.as_json = as_json
        self.count = count
        self.stop = stop
        self.printed = 0

    async def print_message(self, message: Message) -> None:
        if self.count and self.printed >= self.count:
            return  # with several patterns, another subscription may be one message ahead
        if message.gap is not None and not self.as_json:
            print(format_gap(message.gap), flush=True)
        print(format_json(message) if self.as_json else format_line(message), flush=True)
        self.printed += 1
        if self.count and self.printed >= self.count:
            self.stop()
