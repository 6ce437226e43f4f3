"""What every slipstream command line shares: flags, logging, the event loop, exit codes.

Exit codes: 0 success, 2 usage or configuration error, 1 runtime failure,
each with a one-line reason on stderr. Ctrl-C and SIGTERM cancel the main
task, so every command's cleanup runs in its `finally` blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from broker import tls
from broker.client import (
    BROKER_ENV,
    DEFAULT_BROKER,
    DEFAULT_STREAM,
    PASSWORD_ENV,
    STREAM_ENV,
    TOKEN_ENV,
    USER_ENV,
    Client,
    check_address,
    is_nats,
    parse_address,
)
from broker.errors import ConfigError, ConnectError, HandshakeRefusedError, SlipstreamError
from broker.server.routing import validate_pattern, validate_topic

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps a server on this machine ('localhost', 127.x, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def parse_size(text: str) -> int:
    """'65536', '64k', '64KiB', '1MiB' -> bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 65536, 64KiB or 1MiB")
    return int(match.group(1)) * _UNITS[(match.group(2) or "")[:1].lower()]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def start_position(text: str) -> str | int:
    """--from: 'new', 'earliest' or a sequence number."""
    if text in ("new", "earliest"):
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not 'new', 'earliest' or a sequence number >= 1") from None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1, "": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """'30', '30s', '500ms', '15m', '24h', '7d' -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30s, 15m, 24h or 7d")
    return float(match.group(1)) * _SECONDS[match.group(2) or ""]


def _checked_by(check: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse `type` that runs `check` on the text: its SlipstreamError becomes the
    one-line usage error (exit 2), before anything connects."""
    def parse(text: str) -> str:
        try:
            check(text)
        except SlipstreamError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    return parse


pattern_arg = _checked_by(validate_pattern)  # a topic pattern: 'live.>', 'game.*'
topic_arg = _checked_by(validate_topic)
broker_address = _checked_by(check_address)


def flag_address(text: str, flag: str) -> tuple[str, int]:
    """The HOST:PORT given to `flag`; a ConfigError that names the flag if malformed."""
    try:
        return parse_address(text)
    except ConfigError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """--broker, --token, --user and --password, --stream, with their environment
    variables."""
    parser.add_argument(
        "--broker", type=broker_address, default=os.environ.get(BROKER_ENV, DEFAULT_BROKER),
        metavar="ADDRESS", help="HOST:PORT of slipstream's broker (tls://HOST:PORT with TLS), "
                                "or nats://HOST:PORT[,...] for a NATS JetStream cluster "
                                f"(env {BROKER_ENV}; default %(default)s)")
    parser.add_argument(
        "--token", default=os.environ.get(TOKEN_ENV),
        help=f"shared secret the broker asks for; NATS: token auth (env {TOKEN_ENV})")
    parser.add_argument(
        "--user", default=os.environ.get(USER_ENV) or None,
        help=f"log in as this user of the broker's --users file; NATS: user auth "
             f"(env {USER_ENV})")
    parser.add_argument(
        "--password", default=os.environ.get(PASSWORD_ENV),
        help=f"the user's password (env {PASSWORD_ENV}: better, as a flag shows in `ps`)")
    parser.add_argument(
        "--stream", default=os.environ.get(STREAM_ENV) or DEFAULT_STREAM,
        help=f"NATS only: the JetStream stream holding the topics (env {STREAM_ENV}; "
             "default %(default)s)")
    add_tls_args(parser, "the CA that signed the broker's certificate (default: the system's)",
                 "this client's certificate, when the broker asks for one")


def add_tls_args(parser: argparse.ArgumentParser, ca_help: str, cert_help: str) -> None:
    """--tls-ca, --tls-cert and --tls-key (PEM files; env SLIPSTREAM_TLS_*)."""
    for flag, env, help_text in (("--tls-ca", tls.CA_ENV, ca_help),
                                 ("--tls-cert", tls.CERT_ENV, cert_help),
                                 ("--tls-key", tls.KEY_ENV, "the private key of --tls-cert")):
        parser.add_argument(flag, type=Path, default=os.environ.get(env) or None,
                            metavar="FILE", help=f"{help_text} (PEM; env {env})")


def tls_files(args: argparse.Namespace) -> tls.TlsFiles:
    return tls.TlsFiles(args.tls_ca, args.tls_cert, args.tls_key)


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")


def add_command(parser: argparse.ArgumentParser, command: Callable[..., Any],
                log_level: int = logging.INFO) -> None:
    """The flags every broker-connected subcommand shares, and what runs it."""
    add_connection_args(parser)
    add_logging_args(parser)
    parser.set_defaults(command=command, log_level=log_level)


def setup_logging(args: argparse.Namespace, default: int = logging.INFO) -> None:
    """One format for every command: the time of day in a terminal, where the lines sit
    beside the printer's and the alerter's; the date too when the log goes to a file or
    a journal, to be read later."""
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else default
    datefmt = "%H:%M:%S" if sys.stderr.isatty() else "%Y-%m-%d %H:%M:%S"
    logging.basicConfig(level=level, stream=sys.stderr, datefmt=datefmt,
                        format="%(asctime)s %(levelname)-8s %(message)s  [%(name)s]")


def client_for(args: argparse.Namespace, name: str, **options: Any) -> Client:
    """The client the command line asks for: its engine, address, token and stream."""
    if is_nats(args.broker):
        options.setdefault("stream", args.stream)
    if args.user and not args.password:
        raise ConfigError(f"--user {args.user} without a password: give --password or "
                          f"{PASSWORD_ENV}")
    return Client(args.broker, name=name, token=args.token, tls=tls_files(args),
                  user=args.user, password=args.password, **options)


def fail(prog: str, message: str, code: int = EXIT_FAILURE) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def run(prog: str, main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run `main` on uvloop when installed; map signals and errors to exit codes."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # uvloop is optional on platforms that lack it
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(_cancel_on_signals(main()))
    except (ConfigError, HandshakeRefusedError) as exc:
        return fail(prog, str(exc), EXIT_USAGE)
    except ConnectError as exc:
        return fail(prog, str(exc))
    except SlipstreamError as exc:
        return fail(prog, str(exc))
    except KeyboardInterrupt:
        return EXIT_OK


async def _cancel_on_signals(main: Coroutine[Any, Any, int]) -> int:
    """SIGINT/SIGTERM cancel the command's task: cancellation is the shutdown path."""
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    stopped_by_signal = False

    def stop() -> None:
        nonlocal stopped_by_signal
        if stopped_by_signal:
            return  # a second Ctrl-C must not cut short the shutdown the first one began
        stopped_by_signal = True
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    try:
        return await task
    except asyncio.CancelledError:
        if stopped_by_signal:
            return EXIT_OK
        raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
