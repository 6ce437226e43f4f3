"""`python -m producer live | replay | archive`: the live-timing commands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from broker import cli
from f1vocab.timing import FeedError
from producer.livetiming import archive
from producer.livetiming.feed import DEFAULT_TOPICS
from producer.livetiming.live import DEFAULT_URLS, AuthRefused, LiveOptions, run_live
from producer.livetiming.publisher import LivePublisher, Recorder
from producer.livetiming.recordings import ReadReport, parse_offset, read_recording
from producer.livetiming.replay import ReplayOptions, replay

log = logging.getLogger("slipstream.livetiming")
TOKEN_ENV = "F1_LIVETIMING_TOKEN"


def add_parsers(subparsers: Any) -> None:
    live = subparsers.add_parser(
        "live", help="bridge F1's live timing (SignalR) into live.* topics",
        description="Connect to F1 live timing and publish every message on live.<Topic> "
                    "(CarData.z -> live.CarData, decoded). Reconnects by itself.")
    live.add_argument("--protocol", choices=["core", "classic"], default="core",
                      help="SignalR Core (/signalrcore, default) or classic ASP.NET (/signalr)")
    live.add_argument("--url", help=f"endpoint (default {DEFAULT_URLS['core']} or "
                                    f"{DEFAULT_URLS['classic']})")
    live.add_argument("--topics", help="comma-separated F1 topics (default: the FastF1/livef1 "
                                       "list, see docs/live-timing.md)")
    live.add_argument("--auth-token", default=os.environ.get(TOKEN_ENV),
                      help=f"F1 access token, for sessions that need one (env {TOKEN_ENV})")
    live.add_argument("--timeout", type=float, metavar="S",
                      help="exit after S seconds without data (like FastF1's --timeout)")
    live.add_argument("--retries", type=int, default=10,
                      help="failed connections in a row before giving up (default %(default)s)")
    live.add_argument("--record", type=Path, metavar="FILE",
                      help="also write every message in FastF1's save format")
    live.add_argument("--append", action="store_true", help="append to --record FILE")
    live.add_argument("--record-raw", type=Path, metavar="FILE",
                      help="also write every raw WebSocket message, for debugging")
    cli.add_command(live, run_live_command)

    play = subparsers.add_parser(
        "replay", help="replay a recording or an archive folder into live.* topics",
        description="Replay F1 live timing: a folder of <Topic>.jsonStream files (F1's static "
                    "archive) or one or more FastF1 recordings (merged, de-duplicated).")
    play.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                      help="an archive folder of <Topic>.jsonStream files, or FastF1 recordings")
    _pacing(play)
    cli.add_command(play, run_replay_command)

    past = subparsers.add_parser(
        "archive", help="list or replay sessions from F1's static archive",
        description="List a year's sessions (--list YEAR), or download one session and "
                    "replay it as if live.")
    past.add_argument("--list", type=int, metavar="YEAR", dest="list_year",
                      help="list the meetings and sessions of YEAR")
    past.add_argument("session", nargs="*", metavar="YEAR EVENT SESSION",
                      help="e.g. 2020 Silverstone 'Practice 2'")
    past.add_argument("--download", type=Path, metavar="DIR",
                      help="keep the files in DIR (default: a temporary folder)")
    past.add_argument("--no-replay", action="store_true", help="download only")
    past.add_argument("--base-url", default=archive.DEFAULT_ARCHIVE_URL,
                      help="archive root (default %(default)s)")
    _pacing(past)
    cli.add_command(past, run_archive_command)


def _pacing(parser: argparse.ArgumentParser) -> None:
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, metavar="X",
                      help="X times real time (default 1)")
    pace.add_argument("--as-fast-as-possible", action="store_true", help="no pauses at all")
    parser.add_argument("--from", dest="start", default="00:00:00", metavar="HH:MM:SS",
                        help="start this far into the session, with the state up to there")
    parser.add_argument("--loop", action="store_true", help="start again at the end, forever")


def _replay_options(args: argparse.Namespace) -> ReplayOptions:
    if args.speed <= 0:
        raise SystemExit(cli.fail("replay", f"--speed {args.speed} must be above 0",
                                  cli.EXIT_USAGE))
    try:
        start = parse_offset(args.start) if args.start.count(":") == 2 else -1.0
    except FeedError:
        start = -1.0
    if start < 0:
        raise SystemExit(cli.fail("replay", f"--from {args.start!r} is not HH:MM:SS",
                                  cli.EXIT_USAGE))
    return ReplayOptions(speed=0 if args.as_fast_as_possible else args.speed, start_s=start,
                         loop=args.loop)


async def run_live_command(args: argparse.Namespace) -> int:
    topics = [t.strip() for t in args.topics.split(",") if t.strip()] if args.topics \
        else list(DEFAULT_TOPICS)
    if args.append and not args.record:
        return cli.fail("live", "--append needs --record FILE", cli.EXIT_USAGE)
    options = LiveOptions(protocol=args.protocol, url=args.url, topics=topics,
                          token=args.auth_token, timeout_s=args.timeout, retries=args.retries,
                          raw_record=args.record_raw)
    recorder = Recorder(args.record, args.append) if args.record else None
    async with cli.client_for(args, "livetiming") as client:
        publisher = LivePublisher(client, recorder)
        try:
            await run_live(options, publisher)
        except AuthRefused as exc:
            return cli.fail("live", str(exc), cli.EXIT_USAGE)
        finally:
            if recorder is not None:
                recorder.close()
            print(f"live: {publisher.summary()}", file=sys.stderr)
    return cli.EXIT_OK


async def run_replay_command(args: argparse.Namespace) -> int:
    options = _replay_options(args)
    missing = [str(path) for path in args.paths if not path.exists()]
    if missing:
        return cli.fail("replay", f"no such file or folder: {', '.join(missing)}",
                        cli.EXIT_USAGE)
    return await _replay_paths(args.paths, args, options)


async def _replay_paths(paths: list[Path], args: argparse.Namespace,
                        options: ReplayOptions) -> int:
    report = ReadReport()
    try:
        messages = read_recording(paths, report)
    except FeedError as exc:
        return cli.fail("replay", str(exc), cli.EXIT_USAGE)
    if not messages:
        where = ", ".join(map(str, paths))
        return cli.fail("replay", f"no live-timing messages in {where} ({report.damaged} "
                        "damaged lines): give an archive folder of .jsonStream files or a "
                        "FastF1 recording (docs/live-timing.md)", cli.EXIT_USAGE)
    log.info("read %d messages from %s (%d damaged lines skipped, %d duplicates dropped)",
             report.messages, ", ".join(map(str, paths)), report.damaged, report.duplicates)
    for damage in report.first_damage:
        log.info("  damaged: %s", damage)
    async with cli.client_for(args, "replay") as client:
        publisher = LivePublisher(client, source="replay")
        options.name = ", ".join(path.name for path in paths)
        try:
            await replay(messages, publisher, options)
        finally:
            print(f"replay: {publisher.summary()}; {report.damaged} damaged lines skipped",
                  file=sys.stderr)
    return cli.EXIT_OK


async def run_archive_command(args: argparse.Namespace) -> int:
    options = _replay_options(args)
    base = args.base_url.rstrip("/")
    if args.list_year is None and len(args.session) != 3:
        return cli.fail("archive", "give --list YEAR, or YEAR EVENT SESSION", cli.EXIT_USAGE)
    try:
        async with aiohttp.ClientSession() as http:
            if args.list_year is not None:
                print(archive.describe_year(await archive.year_index(http, base,
                                                                     args.list_year)))
                return cli.EXIT_OK
            year, event, session = args.session
            if not year.isdigit():
                return cli.fail("archive", f"YEAR {year!r} is not a year", cli.EXIT_USAGE)
            path = archive.find_session(await archive.year_index(http, base, int(year)),
                                        event, session)
            folder = args.download or Path(tempfile.mkdtemp(prefix="slipstream-archive-"))
            await archive.download_session(http, base, path, folder)
    except archive.ArchiveError as exc:
        return cli.fail("archive", str(exc))
    except aiohttp.ClientError as exc:
        return cli.fail("archive", f"cannot reach {base}: {exc}")
    print(f"archive: session {path} is in {folder}", file=sys.stderr)
    if args.no_replay:
        return cli.EXIT_OK
    return await _replay_paths([folder], args, options)
