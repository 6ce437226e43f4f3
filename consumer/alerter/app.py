"""`python -m consumer alerter --rules rules.toml`: alerts to the console, a file and the broker.

Each alert is printed (coloured by severity on a terminal), appended to a
JSON-lines file with --log, and published on `alerts.<severity>` so other
consumers (the SQLite writer, a dashboard) see it too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from broker.client import Message
from consumer.alerter.names import Drivers
from consumer.alerter.rules import Alert, Rule, load_rules, patterns_of
from consumer.api import Consumer
from f1vocab.timing import FeedError, parse_utc

SHIPPED_RULES = Path(__file__).with_name("rules.toml")
COLOURS = {"info": "\033[36m", "warning": "\033[33m", "critical": "\033[1;31m"}
RESET = "\033[0m"

app = Consumer("alerter", description="Watch topics against alert rules (TOML) and report "
                                      "each alert on the console, in a JSON-lines file and "
                                      "on alerts.<severity>.")


@app.arguments
def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rules", type=Path, default=SHIPPED_RULES,
                        help="rules file (default: the shipped consumer/alerter/rules.toml)")
    parser.add_argument("--log", type=Path, metavar="FILE",
                        help="also append each alert to FILE as one JSON object per line")
    parser.add_argument("--no-publish", action="store_true",
                        help="do not publish alerts on alerts.<severity>")
    parser.add_argument("--no-color", action="store_true", help="plain console output")


@app.lifespan
async def _watching() -> AsyncIterator[None]:
    rules = load_rules(app.args.rules)  # a bad file stops us here: exit 2, with the line
    colour = not app.args.no_color and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    alerts = Alerts(colour, app.args.log.open("a", encoding="utf-8") if app.args.log else None)
    try:
        by_pattern: dict[str, list[Rule]] = {}
        for rule in rules:
            for pattern in patterns_of(rule):  # a game rule also watches every rig
                by_pattern.setdefault(pattern, []).append(rule)
        for pattern in alerts.drivers.patterns():  # who is who, for {driver}
            by_pattern.setdefault(pattern, [])
        for pattern, watching in sorted(by_pattern.items()):
            app.add_handler(pattern, alerts.checker(watching, pattern))
        yield
    finally:
        if alerts.log is not None:
            alerts.log.close()
        print(f"alerter: {alerts.count} alerts", file=sys.stderr)


class Alerts:
    """Where alerts go: the console, the --log file, and alerts.<severity>."""

    def __init__(self, colour: bool, log: TextIO | None) -> None:
        self.colour = colour
        self.log = log
        self.count = 0
        self.drivers = Drivers()

    def checker(self, rules: list[Rule], pattern: str) -> Any:
        async def check(message: Message) -> None:
            self.drivers.observe(message.topic, message.data)
            when_us = source_time_us(message.data) or message.timestamp_us
            for rule in rules:
                for alert in rule.evaluate(message.topic, message.seq, when_us, message.data,
                                           message.timestamp_us, self.drivers.name):
                    await self.emit(alert)
        check.__name__ = f"rules for {pattern}"
        return check

    async def emit(self, alert: Alert) -> None:
        self.count += 1
        print(format_alert(alert, self.colour), flush=True)
        if self.log is not None:
            self.log.write(json.dumps(alert.as_dict(), default=str) + "\n")
            self.log.flush()
        if not app.args.no_publish and app.client is not None:
            await app.client.publish(f"alerts.{alert.severity}", alert.as_dict())


def source_time_us(data: Any) -> int | None:
    """The source's own clock, when the message has one: replays alert as live did."""
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("offset_s"), int | float):
        return int(data["offset_s"] * 1e6)
    if isinstance(data.get("timestamp"), str):
        try:
            return int(parse_utc(data["timestamp"]).timestamp() * 1e6)
        except FeedError:
            return None
    return None


def format_alert(alert: Alert, colour: bool) -> str:
    stamp = datetime.now(UTC).strftime("%H:%M:%S")
    text = f"{stamp} {alert.severity.upper():<8} {alert.message}  [{alert.rule}, {alert.topic} " \
           f"#{alert.seq}]"
    return f"{COLOURS[alert.severity]}{text}{RESET}" if colour else text
