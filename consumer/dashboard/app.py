"""`python -m consumer dashboard`: the live web dashboard, as a consumer plugin.

It subscribes to live timing, alerts and the game packets it shows, keeps
their state (model.py), and serves the page and its streams (web.py) on
127.0.0.1:8080 by default. It starts at the earliest retained message, so a
dashboard opened mid-session still has the drivers and the state F1 sent at
the start.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import AsyncIterator

from broker import cli
from broker.client import Message
from broker.errors import ConfigError
from consumer.api import Consumer
from consumer.dashboard.hub import Hub
from consumer.dashboard.model import GAME_PACKETS, Dashboard
from consumer.dashboard.web import DEFAULT_GAME_LABEL, DashboardWeb, Limits
from consumer.website import add_site_arguments, http_address, start_site
from f1vocab.game.topics import packet_patterns

log = logging.getLogger("slipstream.dashboard")

# The game's packets from the single rig (game.<packet>) and from each named one
# (game.<rig>.<packet>): a panel per rig.
PATTERNS = ("live.>", "alerts.>", *(pattern for packet in GAME_PACKETS
                                     for pattern in packet_patterns(packet)),
            "standings.table")

app = Consumer("dashboard", description="Serve a live web dashboard (timing tower, track "
                                        "status, race control, alerts, game telemetry) over "
                                        "HTTP, WebSocket and Server-Sent Events.",
               # A dashboard opened mid-session needs the state F1 sent at the start.
               start="earliest")


@app.arguments
def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--game-label", default=DEFAULT_GAME_LABEL, metavar="TEXT",
                        help="title of the game panel (default %(default)r; make run says "
                             "'Simulated F1 game' for the simulator)")
    add_site_arguments(parser, 8080)
    parser.add_argument("--refresh", type=float, default=0.1, metavar="SECONDS",
                        help="how often changed views are sent to browsers (default 0.1)")
    parser.add_argument("--history", type=int, default=50, metavar="N",
                        help="race control messages, alerts and game events a new browser "
                             "gets first, per feed (default 50)")
    parser.add_argument("--max-clients", type=int, default=64, metavar="N",
                        help="browsers and SSE clients at once (default 64)")
    parser.add_argument("--max-events", type=int, default=256, metavar="N",
                        help="events queued per client before its oldest are dropped "
                             "and counted (default 256)")
    parser.add_argument("--send-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="disconnect a client that takes nothing for this long (default 30)")


@app.lifespan
async def _serve() -> AsyncIterator[None]:
    """Check the flags, serve the site, refresh the views in the background; on the way
    out close every browser's connection and say how many there were."""
    args = app.args
    host, port = http_address(args.http)
    for flag in ("refresh", "send_timeout"):
        if getattr(args, flag) <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be more than 0")
    for flag in ("history", "max_clients", "max_events"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1")
    if not cli.is_loopback(host) and not args.token:
        log.warning("serving on %s without a token: anyone who can reach it can watch "
                    "(give --token to require one)", host)
    hub = Hub(Dashboard(history=args.history), max_events=args.max_events,
              broker_connected=lambda: app.client is not None and app.client.connected)
    server = DashboardWeb(hub, token=args.token, allow_hosts=tuple(args.allow_host),
                          game_label=args.game_label, limits=Limits(
        max_clients=args.max_clients, send_timeout_s=args.send_timeout))
    runner, bound = await start_site(server.app(), host, port)
    server.serving_at(host, bound)
    url = f"http://{host}:{bound}/" + ("?token=..." if args.token else "")
    print(f"dashboard: {url}", flush=True)
    app.background(hub.run(args.refresh), "the dashboard's refresher")

    async def take(message: Message) -> None:
        if hub.on_message(message.topic, message.data, message.timestamp_us):
            await asyncio.sleep(0)  # let the senders take the events before the next batch

    for pattern in PATTERNS:
        app.add_handler(pattern, take)
    try:
        yield
    finally:
        connected = len(hub.fanout.clients)
        await runner.cleanup()  # closes every client's connection
        print(f"dashboard: {sum(hub.model.handled.values()):,} messages shown, "
              f"{connected} clients still connected were closed", file=sys.stderr)
