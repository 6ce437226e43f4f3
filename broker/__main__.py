"""`python -m broker`: run the broker, or `python -m broker stats` to look inside one."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from broker import cli
from broker.client import DEFAULT_STREAM, STREAM_ENV, is_nats, parse_address
from broker.errors import ConfigError, StorageError
from broker.server.server import Broker, BrokerConfig
from broker.storage.datadir import DATA_DIR_ENV
from broker.storage.records import MAX_RECORD_BYTES
from broker.storage.topics import Retention
from broker.users.commands import passwd_main, users_main
from broker.users.table import load_users
from broker.wire import protocol as p

log = logging.getLogger("slipstream.broker")

DESCRIPTION = """\
Run the slipstream broker: producers publish to topics, consumers subscribe
to topic patterns ('game.>', 'live.*', ...). Each topic keeps a bounded
retention; every subscriber reads it at its own pace.

See also: python -m broker stats --help (look inside a running broker),
python -m broker passwd --help and users --help (the --users file)"""

ON_FULL_HELP = """\
what happens when a subscriber falls behind a full topic:
'drop' (default) evicts the oldest message anyway, and that subscriber gets a
gap notice with the exact count it lost: producers and other consumers are
never slowed. 'block' makes publishers wait (TCP backpressure) until every
connected subscriber has acknowledged the oldest message: nothing is lost,
but one slow consumer slows every producer of that topic."""


def http_arg(text: str) -> tuple[str, int]:
    """--http HOST:PORT, checked as argparse parses it (a bad value: exit 2, one line)."""
    if ":" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8222)")
    try:
        return parse_address(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def ws_arg(text: str) -> tuple[str, int]:
    """--ws PORT or HOST:PORT (loopback unless a host is given)."""
    return http_arg(text if ":" in text else f"127.0.0.1:{text}")


def origin_arg(text: str) -> str:
    """--ws-allow-origin: an origin as browsers send it (scheme://host[:port]), or *."""
    if text != "*" and not text.lower().startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an origin: give it as a browser sends it, e.g. "
            "http://localhost:8000 (scheme, host and port, no path), or * for any")
    return text.lower().rstrip("/")


def serve_parser(prog: str = "python -m broker") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default %(default)s; 0.0.0.0 for every "
                             "interface)")
    parser.add_argument("--port", type=int, default=p.DEFAULT_PORT,
                        help="TCP port (default %(default)s; 0 picks a free one)")
    defaults = Retention()
    parser.add_argument("--retain-messages", type=cli.positive_int,
                        default=defaults.max_messages, metavar="N",
                        help="messages kept per topic (default %(default)s)")
    parser.add_argument("--retain-bytes", type=cli.parse_size, default=defaults.max_bytes,
                        metavar="SIZE", help="payload bytes kept per topic (default 64MiB)")
    parser.add_argument("--on-full", choices=["drop", "block"], default="drop",
                        help=ON_FULL_HELP)
    parser.add_argument("--max-frame", type=cli.parse_size, default=p.DEFAULT_MAX_FRAME_BYTES,
                        metavar="SIZE", help="largest frame accepted (default 1MiB)")
    parser.add_argument("--token", default=os.environ.get("SLIPSTREAM_TOKEN"),
                        help="refuse clients that do not present this token "
                             "(env SLIPSTREAM_TOKEN)")
    parser.add_argument("--users", type=Path, metavar="FILE",
                        default=os.environ.get("SLIPSTREAM_USERS") or None,
                        help="users, their passwords (`slipstream passwd`) or certificates, "
                             "what each may publish and subscribe to, and their quotas "
                             "(TOML, docs/security.md; env SLIPSTREAM_USERS); SIGHUP reloads "
                             "it")
    parser.add_argument("--allow-anonymous", action="store_true",
                        help="let clients in without a token or users on an address beyond "
                             "loopback (without it, such a broker refuses to start): anyone "
                             "who can reach it may publish and read every topic")
    parser.add_argument("--write-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="disconnect a client whose socket takes no bytes for this long "
                             "(default %(default)s)")
    parser.add_argument("--handshake-timeout", type=float, default=5.0, metavar="SECONDS",
                        help="disconnect a client that sends no HELLO for this long "
                             "(default %(default)s)")
    cli.add_tls_args(parser, "require client certificates signed by this CA",
                     "serve TLS with this certificate (clients use tls://HOST:PORT)")
    parser.add_argument("--ws", metavar="[HOST:]PORT", type=ws_arg,
                        help="also serve the protocol over WebSocket here, for browsers "
                             "(ws://, or wss:// with --tls-cert; loopback unless a HOST is "
                             "given; docs/protocol.md, 'Over WebSocket')")
    parser.add_argument("--ws-allow-origin", action="append", default=[], type=origin_arg,
                        metavar="ORIGIN",
                        help="let pages from this origin connect over --ws, e.g. "
                             "http://localhost:8000 (again for more; * for any). A browser "
                             "always says its page's origin: without this, pages from other "
                             "sites cannot use your broker. Programs that send no Origin "
                             "are not affected")
    parser.add_argument("--http", metavar="HOST:PORT", type=http_arg,
                        help="serve /healthz, /varz and /metrics (Prometheus) here, e.g. "
                             "127.0.0.1:8222 (off by default; docs/operations.md)")
    add_storage_args(parser)
    add_limit_args(parser)
    add_nats_args(parser)
    cli.add_logging_args(parser)
    return parser


def add_nats_args(parser: argparse.ArgumentParser) -> None:
    """With NATS as the engine: the stream's shape (docs/scale-out.md)."""
    group = parser.add_argument_group(
        "NATS JetStream", "with --broker nats://..., no broker runs here: make (or check) the "
                          "JetStream stream that holds the topics, print it and exit. "
                          "--retain-messages and --retain-age apply to it too")
    group.add_argument("--broker", type=cli.broker_address, metavar="nats://HOST:PORT[,...]",
                       help="the NATS server or cluster seeds (user:pass@ or --token for auth)")
    group.add_argument("--stream", default=os.environ.get(STREAM_ENV) or DEFAULT_STREAM,
                       help=f"the stream's name (env {STREAM_ENV}; default %(default)s)")
    group.add_argument("--replicas", type=cli.positive_int, metavar="N",
                       help="copies of each message (default: min(3, the cluster's size))")
    group.add_argument("--stream-bytes", type=cli.parse_size, default=-1, metavar="SIZE",
                       help="bytes the whole stream keeps (default: no limit but the server's)")


FSYNC_HELP = """with --data-dir, when writes reach the disk itself: 'always' before each PUBACK
(survives a power loss; slowest), 'interval' (default) within 100 ms, 'never'
(left to the OS). Whatever the policy, a PUBACK is sent only after the write
reached the OS, so a confirmed message survives the broker being killed."""


def add_storage_args(parser: argparse.ArgumentParser) -> None:
    """--data-dir and its companions; docs/storage.md."""
    group = parser.add_argument_group(
        "storage", "keep topics, seqs, the epoch and durable positions on disk "
                   "(docs/storage.md); without --data-dir everything is in memory")
    group.add_argument("--data-dir", type=Path, default=os.environ.get(DATA_DIR_ENV) or None,
                       metavar="DIR", help=f"directory for the topics' logs (env {DATA_DIR_ENV})")
    group.add_argument("--fsync", choices=["always", "interval", "never"], default="interval",
                       help=FSYNC_HELP)
    group.add_argument("--repair", action="store_true",
                       help="start even if a segment is damaged: read every record, keep "
                            "every intact one, and take out the damaged ones (readers get a "
                            "GAP for them); without it, the broker names the file and stops")
    group.add_argument("--verify", action="store_true",
                       help="at start, read and check every record of every segment, not "
                            "only each topic's newest (slow on a large log); damage stops "
                            "the start with the file and offset")
    group.add_argument("--retain-age", type=cli.duration, default=0.0, metavar="DURATION",
                       help="with --data-dir, delete segments older than this, e.g. 7d "
                            "(default: no age limit)")


def add_limit_args(parser: argparse.ArgumentParser) -> None:
    """The caps on what clients can make the broker hold; docs/protocol.md, "Limits"."""
    d = BrokerConfig()
    group = parser.add_argument_group(
        "limits", "what clients can make the broker hold; each refusal is an ERROR with its "
                  "own code, counted in stats (docs/protocol.md, 'Limits')")
    group.add_argument("--max-memory", type=cli.parse_size, default=d.max_memory_bytes,
                       metavar="SIZE", help="payload bytes retained across all topics; over "
                       "it the largest topics evict their oldest (default 1GiB)")
    group.add_argument("--max-connections", type=cli.positive_int, default=d.max_connections,
                       metavar="N", help="connections at once (default %(default)s)")
    group.add_argument("--max-handshakes", type=cli.positive_int, default=d.max_handshakes,
                       metavar="N", help="connections still in their handshake (TLS, HELLO) "
                       "at once; a new one drops the oldest (default %(default)s)")
    group.add_argument("--max-handshakes-per-address", type=cli.positive_int,
                       default=d.max_handshakes_per_address, metavar="N",
                       help="of those, from one source address; a new one drops that "
                       "address's oldest (default %(default)s)")
    group.add_argument("--max-subscriptions", type=cli.positive_int,
                       default=d.max_subscriptions, metavar="N",
                       help="subscriptions per connection (default %(default)s)")
    group.add_argument("--max-followed-topics", type=cli.positive_int,
                       default=d.max_followed_topics, metavar="N",
                       help="topics one connection's subscriptions may follow, summed: a "
                       "wildcard costs one per topic it matches (default %(default)s)")
    group.add_argument("--max-followed-topics-total", type=cli.positive_int,
                       default=d.max_followed_topics_total, metavar="N",
                       help="the same over the whole broker (default %(default)s)")
    group.add_argument("--max-topics", type=cli.positive_int, default=d.max_topics,
                       metavar="N", help="topics in the broker (default %(default)s)")
    group.add_argument("--max-durables", type=cli.positive_int, default=d.max_durables,
                       metavar="N", help="durable subscription names (default %(default)s)")
    group.add_argument("--topic-ttl", type=cli.duration, default=d.topic_ttl_s,
                       metavar="DURATION", help="forget a topic nobody published to for this "
                       "long, when no subscriber or durable needs it (default 24h)")
    group.add_argument("--durable-ttl", type=cli.duration, default=d.durable_ttl_s,
                       metavar="DURATION", help="forget a durable unused for this long "
                       "(default 24h)")
    group.add_argument("--max-publish-rate", type=float, default=0.0, metavar="MSGS",
                       help="messages per second one connection may publish; a faster one "
                            "is slowed, not refused (default: no limit)")
    group.add_argument("--max-publish-bytes", type=cli.parse_size, default=0, metavar="SIZE",
                       help="payload bytes per second one connection may publish "
                            "(default: no limit)")


def config_from(args: argparse.Namespace, prog: str = "python -m broker") -> BrokerConfig:
    """The settings the flags ask for; a bad combination exits 2 naming `prog`."""
    if args.retain_bytes < args.max_frame:
        raise SystemExit(cli.fail(prog,
                                  f"--retain-bytes {args.retain_bytes:,} is smaller than "
                                  f"--max-frame {args.max_frame:,}: one message would not fit",
                                  cli.EXIT_USAGE))
    if not 0 <= args.port <= 65535:
        raise SystemExit(cli.fail(prog, f"--port {args.port} is outside 0..65535",
                                  cli.EXIT_USAGE))
    if args.data_dir is not None and args.max_frame > MAX_RECORD_BYTES:
        raise SystemExit(cli.fail(prog,
                                  f"--max-frame {args.max_frame:,} is over "
                                  f"{MAX_RECORD_BYTES:,}, the largest record --data-dir keeps "
                                  "(a longer one reads as damage)", cli.EXIT_USAGE))
    if args.max_frame < 4 * p.FRAME_ROOM_BYTES:
        raise SystemExit(cli.fail(prog, f"--max-frame {args.max_frame} is below "
                                  f"{4 * p.FRAME_ROOM_BYTES}", cli.EXIT_USAGE))
    for flag, value in (("--max-publish-rate", args.max_publish_rate),
                        ("--write-timeout", args.write_timeout),
                        ("--handshake-timeout", args.handshake_timeout)):
        if not value >= 0:  # also refuses nan
            raise SystemExit(cli.fail(prog, f"{flag} {value} must be 0 or more",
                                      cli.EXIT_USAGE))
    users = None
    if args.users is not None:
        if args.token:
            raise SystemExit(cli.fail(
                prog, "--token and --users together: give whoever has the "
                "token a user of its own in the users file", cli.EXIT_USAGE))
        try:
            users = load_users(args.users)
        except ConfigError as exc:
            raise SystemExit(cli.fail(prog, str(exc), cli.EXIT_USAGE)) from None
    elif not args.token and not args.allow_anonymous:
        for flag, host in (("--host", args.host), ("--ws", args.ws[0] if args.ws else None)):
            if host is not None and not cli.is_loopback(host):
                raise SystemExit(cli.fail(
                    prog, f"{flag} {host} without --token or --users: anyone who can reach "
                    "this address could publish and read every topic; give --users FILE "
                    "(docs/security.md) or --token, or --allow-anonymous if that is what you "
                    "mean", cli.EXIT_USAGE))
    if args.ws_allow_origin and args.ws is None:
        raise SystemExit(cli.fail(prog, "--ws-allow-origin without --ws: there is no "
                                  "WebSocket listener for it to guard", cli.EXIT_USAGE))
    if args.max_memory < args.retain_bytes:
        raise SystemExit(cli.fail(prog,
                                  f"--max-memory {args.max_memory:,} is smaller than "
                                  f"--retain-bytes {args.retain_bytes:,}: one topic would not "
                                  "fit", cli.EXIT_USAGE))
    return BrokerConfig(
        host=args.host, port=args.port, on_full=args.on_full,
        retention=Retention(args.retain_messages, args.retain_bytes),
        max_frame_bytes=args.max_frame, token=args.token or None,
        users=users, users_file=args.users,
        write_stall_timeout_s=args.write_timeout,
        handshake_timeout_s=args.handshake_timeout,
        max_memory_bytes=args.max_memory, max_connections=args.max_connections,
        max_handshakes=args.max_handshakes,
        max_handshakes_per_address=args.max_handshakes_per_address,
        max_subscriptions=args.max_subscriptions,
        max_followed_topics=args.max_followed_topics,
        max_followed_topics_total=args.max_followed_topics_total,
        max_topics=args.max_topics, max_durables=args.max_durables,
        topic_ttl_s=args.topic_ttl, durable_ttl_s=args.durable_ttl,
        max_publish_rate_msgs=args.max_publish_rate,
        max_publish_rate_bytes=args.max_publish_bytes,
        data_dir=args.data_dir, fsync=args.fsync, repair=args.repair, verify=args.verify,
        retain_age_s=args.retain_age, http=args.http, ws=args.ws,
        ws_allow_origins=tuple(args.ws_allow_origin),
        tls=cli.tls_files(args) if (args.tls_cert or args.tls_key or args.tls_ca) else None)


def exposure_warning(config: BrokerConfig) -> str | None:
    """What to say when the broker can be reached from other machines with no token."""
    exposed = [host for host in (config.host, config.ws[0] if config.ws else None)
               if host is not None and not cli.is_loopback(host)]
    if exposed:
        anyone = config.token is None and config.users is None
        missing = [what for what, absent in (("--users (or --token)", anyone),
                                             ("TLS", config.tls is None)) if absent]
        if missing:
            return (f"listening on {exposed[0]} without {' or '.join(missing)}: "
                    + ("anyone who can reach this address can publish and read every topic"
                       if anyone else "the passwords (or token) and every message cross "
                       "the network in clear"))
    if config.http is not None and not cli.is_loopback(config.http[0]):
        return (f"--http serves the broker's figures on {config.http[0]} to anyone who can "
                "reach it (no token applies there)")
    return None


async def serve(config: BrokerConfig, prog: str = "python -m broker") -> int:
    broker = Broker(config)
    monitor = None
    if config.http is not None:
        from broker.server.monitor import Monitor

        monitor = Monitor(broker.core, *config.http)
        try:
            port = await monitor.start()  # first: /healthz says "starting" while we load
        except OSError as exc:
            return cli.fail(prog, f"--http: cannot serve on "
                            f"{config.http[0]}:{config.http[1]}: {exc.strerror or exc}")
        print(f"slipstream broker monitoring on http://{config.http[0]}:{port}/ "
              "(/healthz, /varz, /metrics)", flush=True)
    try:
        try:
            await broker.start()
        except (StorageError, ConfigError) as exc:  # a damaged data dir, an unusable TLS file
            return cli.fail(prog, str(exc), cli.EXIT_USAGE)
        except OSError as exc:
            where = f"{config.host}:{config.port}"
            if config.ws is not None:
                where += f" (or --ws {config.ws[0]}:{config.ws[1]})"
            return cli.fail(prog, f"cannot listen on {where}: {exc.strerror or exc}")
        warning = exposure_warning(config)
        if warning:
            log.warning("%s", warning)
        if config.users_file is not None:
            reload_on_sighup(broker, config.users_file)
        # The one line a supervisor (or a test) waits for before connecting.
        print(f"slipstream broker listening on {config.host}:{broker.port}", flush=True)
        if config.ws is not None:  # the second line, so the first stays the one to wait for
            scheme = "wss" if config.tls is not None else "ws"
            print(f"slipstream broker websocket on {scheme}://{config.ws[0]}:{broker.ws_port}/",
                  flush=True)
        try:
            await asyncio.Event().wait()  # until Ctrl-C / SIGTERM cancels us
        finally:
            await broker.close()
        return cli.EXIT_OK
    finally:
        if monitor is not None:
            await monitor.close()


def reload_on_sighup(broker: Broker, path: Path) -> None:
    """SIGHUP reads the users file again; a file that cannot be used keeps the old one."""
    def reload() -> None:
        try:
            table = load_users(path)
        except ConfigError as exc:
            log.error("users file not reloaded, the previous one stays in force: %s", exc)
            return
        broker.reload_users(table)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


def stats_parser(prog: str = "python -m broker stats") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Show a running broker's topics (published, retained, bytes, subscribers) "
                    "and connections (delivered, pending, gaps).")
    cli.add_connection_args(parser)
    parser.add_argument("--json", action="store_true", help="print the raw stats as JSON")
    parser.add_argument("--topics", metavar="PATTERN", type=cli.pattern_arg,
                        help="only topics matching PATTERN (e.g. 'live.>')")
    parser.add_argument("--no-connections", action="store_true",
                        help="leave the connections out")
    cli.add_logging_args(parser)
    return parser


async def show_stats(args: argparse.Namespace) -> int:
    async with cli.client_for(args, "stats", reconnect=False) as client:
        stats = await client.stats_all(topics=args.topics,
                                       connections=not args.no_connections)
    if args.json:
        json.dump(stats, sys.stdout, indent=2)
        print()
    else:
        print(format_stats(stats))
    return cli.EXIT_OK


def format_stats(stats: dict[str, Any]) -> str:
    server = stats["server"]
    if server.get("engine") == "nats-jetstream":
        return format_stream_stats(stats)
    lines = [f"broker {server['name']} pid {server['pid']}, up {server['uptime_s']:.0f} s, "
             f"on-full={server['on_full']}, retain {server['retain_messages']:,} msgs / "
             f"{server['retain_bytes']:,} B per topic",
             f"{server.get('topics', len(stats['topics'])):,} topics holding "
             f"{server.get('retained_bytes', 0):,} of {server.get('max_memory_bytes', 0):,} B "
             "in memory (--max-memory)"
             + (f" and {server['disk_bytes']:,} B on disk" if server.get("disk_bytes")
                is not None else "")
             + f", {server['connections']} connections, {server['durables']} durables", "",
             f"{'topic':<32} {'published':>10} {'retained':>9} {'bytes':>12} {'evicted':>9} "
             f"{'subs':>5}"]
    for name, t in stats["topics"].items():
        lines.append(f"{name:<32} {t['published']:>10,} {t['retained']:>9,} "
                     f"{t['retained_bytes']:>12,} {t['evicted']:>9,} {t['subscribers']:>5}")
    lines += ["", f"{'connection':<32} {'published':>10} {'delivered':>10} {'pending':>9} "
                  f"{'gaps':>5} {'missed':>8}"]
    for c in stats["connections"]:
        label = f"#{c['id']} {c['name']} {c['peer']}"
        lines.append(f"{label:<32} {c['published']:>10,} {c['delivered']:>10,} "
                     f"{c['pending']:>9,} {c['gaps']:>5} {c['missed']:>8,}")
    return "\n".join(lines)


def format_stream_stats(stats: dict[str, Any]) -> str:
    """`stats` on NATS: the JetStream stream's state (the server's own monitoring has more)."""
    server = stats["server"]
    lines = [f"JetStream stream {server['stream']} on {server['name'].removeprefix('nats ')}: "
             f"{server['replicas']} replicas, keeps {server['retain_messages']:,} messages per "
             f"topic; holds {server['messages']:,} messages, {server['retained_bytes']:,} B "
             f"(seq {server['first_seq']}..{server['last_seq']}), {server['durables']} "
             "consumers", "", f"{'topic':<32} {'retained':>10}"]
    lines += [f"{name:<32} {t['retained']:>10,}" for name, t in stats["topics"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "python -m broker") -> int:
    """`prog` names the command in help and errors (`slipstream broker` runs this too;
    its `stats` is then `slipstream stats`)."""
    argv = sys.argv[1:] if argv is None else argv
    base = prog.removesuffix(" broker")
    if argv[:1] == ["passwd"]:
        return passwd_main(argv[1:], f"{base} passwd")
    if argv[:1] == ["users"]:
        return users_main(argv[1:], f"{base} users")
    if argv[:1] == ["stats"]:
        stats_prog = f"{prog.removesuffix(' broker')} stats"
        args = stats_parser(stats_prog).parse_args(argv[1:])
        cli.setup_logging(args, default=logging.WARNING)
        return cli.run(stats_prog, lambda: show_stats(args))
    args = serve_parser(prog).parse_args(argv)
    cli.setup_logging(args)
    if args.broker is not None:
        if not is_nats(args.broker):
            return cli.fail(prog, f"--broker {args.broker!r}: only a nats:// "
                            "address makes sense here (to run this broker, leave it out)",
                            cli.EXIT_USAGE)
        from broker.jetstream.setup import prepare

        return cli.run(prog, lambda: prepare(args, argv))
    config = config_from(args, prog)
    return cli.run(prog, lambda: serve(config, prog))


if __name__ == "__main__":
    sys.exit(main())
