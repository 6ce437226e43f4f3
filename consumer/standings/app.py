"""`slipstream consumer standings`: the standings of a sim-racing event, with points.

Each driver's single fastest lap on the current track, from the game's laps
(`laps.game[.<rig>]`, which the game bridge derives; `--source game`, the
default), from F1 live timing (`--source live`), from both, or only from
times typed on the admin page (`--source manual`). It serves a public
standings page and an admin page (log in once; add and rename drivers, enter
a lap time, strike or restore any lap, set the track, say who is at each
rig's wheel) on 127.0.0.1:8081, and `GET /api/export` writes the table with
points to a timestamped CSV. Every change goes through the broker as a
`standings.*` message (see table.py), so every consumer sees it, and the
standings are rebuilt from the broker when this consumer restarts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from broker import cli
from broker.errors import ConfigError, SlipstreamError
from broker.users.permissions import Rules
from consumer.api import Consumer
from consumer.standings.keeper import StandingsKeeper
from consumer.standings.sources import GameLaps, LiveLaps
from consumer.standings.table import (
    DEFAULT_POINTS,
    FACTS,
    Standings,
    StandingsError,
    parse_points,
)
from consumer.standings.web import StandingsWeb
from consumer.website import add_site_arguments, http_address, start_site
from f1vocab.game.topics import packet_patterns
from f1vocab.laps import GAME_LAPS_TOPIC

log = logging.getLogger("slipstream.standings")

SOURCES = ("game", "live", "both", "manual")
# The laps the game bridges derive (one rig's laps.game, each rig's laps.game.<rig>), and
# each rig's session packet (about once a second): the rigs there are, and the track.
GAME_LAPS = (GAME_LAPS_TOPIC, f"{GAME_LAPS_TOPIC}.*")
GAME_SESSIONS = packet_patterns("session")
LIVE_TOPICS = ("live.SessionInfo", "live.DriverList", "live.TimingData")

app = Consumer("standings", description="Keep the standings of a sim-racing event (each "
                                        "driver's fastest lap, with points) and serve them "
                                        "with an admin page and a CSV export. The admin "
                                        "logs in with --admin-password (else the --token "
                                        "that opens the broker).",
               # The standings are what the standings.* messages add up to: all of them,
               # at every start; a durable subscription would skip them.
               start="earliest", durable=False)


@app.arguments
def _arguments(parser: argparse.ArgumentParser) -> None:
    add_site_arguments(parser, 8081)
    parser.add_argument("--source", choices=SOURCES, default="game",
                        help="where timed laps come from: the game's laps (laps.game), F1 live "
                             "timing, both, or only the admin page (default %(default)s)")
    parser.add_argument("--game-cars", choices=("all", "player"), default="all",
                        help="time every car in the game, or only the player's (one rig, "
                             "drivers taking turns; default %(default)s)")
    parser.add_argument("--points", default=",".join(map(str, DEFAULT_POINTS)),
                        metavar="P1,P2,...", help="points for 1st, 2nd, ...; the rest "
                                                  "score none (default %(default)s)")
    parser.add_argument("--admin-password", metavar="PASSWORD",
                        default=os.environ.get("SLIPSTREAM_ADMIN_PASSWORD"),
                        help="the password the admin logs in with at /login (default: "
                             "$SLIPSTREAM_ADMIN_PASSWORD, else the --token; with neither, "
                             "the admin side is open, as on a laptop alone)")
    parser.add_argument("--export-dir", default="exports", metavar="DIR",
                        help="where GET /api/export writes its CSV files (default "
                             "%(default)s)")


@app.lifespan
async def _serve() -> AsyncIterator[None]:
    """Serve the pages, publish the table and read back the facts in the background; on
    the way out (still connected) publish the last table and say what was kept."""
    args = app.args
    host, port = http_address(args.http)
    try:
        points = parse_points(args.points)
    except StandingsError as exc:
        raise ConfigError(str(exc)) from None
    password = args.admin_password or args.token
    if not cli.is_loopback(host) and not password:
        log.warning("serving on %s without an admin password: anyone who can reach it can "
                    "change the standings (give --admin-password)", host)
    game = GameLaps(player_only=args.game_cars == "player") \
        if args.source in ("game", "both") else None
    live = LiveLaps() if args.source in ("live", "both") else None
    keeper = StandingsKeeper(Standings(points), lambda: app.client, game, live)
    site = StandingsWeb(keeper, Path(args.export_dir), token=password,
                        allow_hosts=tuple(args.allow_host))
    runner, bound = await start_site(site.app(), host, port)
    site.serving_at(host, bound)
    keeper.page = f"http://{host}:{bound}/"
    print(f"standings: http://{host}:{bound}/ (admin: http://{host}:{bound}/admin"
          + (", log in with the admin password)" if password else ")"), flush=True)
    app.background(keeper.publish_tables(), "publishing standings.table")
    app.background(_read_back(keeper), "reading back the standings")
    app.background(_warn_if_anonymous(), "checking who may publish the standings")
    app.add_handler("standings.>", keeper.on_standings)
    for topic in GAME_LAPS if game is not None else ():
        app.add_handler(topic, keeper.on_game_lap)
    for topic in GAME_SESSIONS if game is not None else ():
        app.add_handler(topic, keeper.on_game_session)
    for topic in LIVE_TOPICS if live is not None else ():
        app.add_handler(topic, keeper.on_live)
    try:
        yield
    finally:
        await runner.cleanup()
        await keeper.flush_table()
        standings = keeper.standings
        timed = sum(1 for row in standings.rows() if row["position"] is not None)
        print(f"standings: {len(standings.drivers)} drivers, {timed} with a time on "
              f"{standings.track or 'no track'}; {keeper.published_laps} laps published "
              "from the sources", file=sys.stderr)


async def _warn_if_anonymous() -> None:
    """The standings are what standings.* messages say, and the broker is the write path:
    if it lets anyone in without a credential and lets them publish standings.*, anyone
    can write them. Say so at start."""
    await app.subscribed()
    probe = cli.client_for(app.args, "standings-probe", reconnect=False)
    probe.token = probe.user = probe.password = None  # as a stranger would come
    try:
        await probe.connect()
        server = (await probe.stats(topic_limit=0, connection_limit=0))["server"]
    except SlipstreamError:
        return  # refused without a credential: only who has one may publish
    finally:
        await probe.close()
    auth = server.get("auth", {})
    if auth.get("mode") == "users":
        rules = auth.get("anonymous_publish")
        if rules is None or Rules(tuple(rules["allow"]), tuple(rules["deny"])).refuse_topic(
                STANDINGS_PROBE_TOPIC) is not None:
            return  # strangers may not publish the standings' topics
        log.warning("the broker at %s lets its anonymous user publish standings.*: anyone "
                    "who reaches it can change the standings (take standings.> out of that "
                    "user's publish patterns; docs/security.md)", app.args.broker)
        return
    if isinstance(server.get("host"), str) and cli.is_loopback(server["host"]):
        # A broker on loopback (the demo, one machine): only this machine's users could
        # write the standings. Said, not warned.
        log.info("the broker at %s takes clients without a credential, on this machine "
                 "only (it listens on %s)", app.args.broker, server["host"])
        return
    log.warning("the broker at %s lets clients in without a token or a user: anyone who "
                "reaches it can publish standings.* and change the standings (start it with "
                "--users and give the standings a user of its own: docs/security.md)",
                app.args.broker)


STANDINGS_PROBE_TOPIC = "standings.driver"  # a topic that changes the table


async def _read_back(keeper: StandingsKeeper) -> None:
    """How many standings facts the broker retains now: the sources publish no lap until
    those are read back (see keeper.py). From `--from new` there is nothing to read."""
    if app.args.start != "earliest":
        keeper.read_back(0)
        return
    client = await app.subscribed()
    try:
        stats = await client.stats_all(topics="standings.>", connections=False)
        retained = sum(topic["retained"] for name, topic in stats["topics"].items()
                       if name in FACTS)
    except (SlipstreamError, KeyError) as exc:
        log.warning("cannot tell what the broker retains of the standings (%s): laps "
                    "published before may be published again", exc)
        retained = 0
    keeper.read_back(retained)
