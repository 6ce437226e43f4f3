"""What the consumers that serve web pages share: starting the site, and who may use it.

The dashboard and the standings pages both serve on --http HOST:PORT, and
check each request's Host, Origin and token the same way. A page on another site
must not read the feed or press the admin buttons: browsers send the page's
Origin with a WebSocket handshake, a POST and cross-site requests, and DNS
rebinding shows up as a Host that is not ours.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import secrets
import socket
import time

from aiohttp import web

from broker import cli
from broker.errors import ConfigError


def add_site_arguments(parser: argparse.ArgumentParser, port: int) -> None:
    """--http and --allow-host, as every consumer that serves pages takes them."""
    parser.add_argument("--http", default=f"127.0.0.1:{port}", metavar="HOST:PORT",
                        help=f"where to serve the pages (default %(default)s; 0.0.0.0:{port} "
                             "opens them to the network, so give a --token)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME:PORT",
                        help="also answer to this Host (and pages from it), e.g. behind a "
                             "proxy; by default only the address served (loopback names "
                             "when on loopback)")


def http_address(text: str) -> tuple[str, int]:
    """--http HOST:PORT, checked."""
    if ":" not in text:
        raise ConfigError(f"--http {text!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    return cli.flag_address(text, "--http")


async def start_site(app: web.Application, host: str, port: int
                     ) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port; returns the runner (cleanup() stops it) and the port bound
    (the one chosen, for port 0). A port in use is a ConfigError saying so."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    return runner, runner.addresses[0][1] if runner.addresses else port


def health(broker_connected: bool) -> web.Response:
    """/healthz: 200 while the broker is connected, 503 while it is away (the pages still
    serve what they had, but nothing new arrives)."""
    if broker_connected:
        return web.json_response({"status": "ok"})
    return web.json_response({"status": "broker unreachable"}, status=503)


def error(status: int, message: str) -> web.Response:
    """Every refusal is JSON with one sentence a person can act on."""
    return web.json_response({"error": message}, status=status)


SESSION_COOKIE = "slipstream_session"
SESSION_TTL_S = 12 * 3600.0  # a race night; then log in again
MAX_SESSIONS = 100  # past it, the oldest session ends
FREE_FAILED_LOGINS = 5  # then one try a second: guessing the password over the LAN is slow


class Guard:
    def __init__(self, token: str | None = None, allow_hosts: tuple[str, ...] = (),
                 token_in_url: bool = True) -> None:
        self.token = token
        # A token in the address sits in the browser's history, on the screen and in proxy
        # logs: the standings' admin logs in once instead (a session cookie).
        self.token_in_url = token_in_url
        self.sessions: dict[str, float] = {}  # session id -> when it ends (monotonic)
        self._failed_logins = 0
        self._next_login_at = 0.0
        # Host names (HOST:PORT) this site answers to; filled by serving_at().
        self.extra_hosts = {host.lower() for host in allow_hosts}
        self.hosts: set[str] | None = None  # None until serving_at: any Host
        self.port = 0
        self.every_interface = False  # bound to 0.0.0.0 or ::

    def serving_at(self, host: str, port: int) -> None:
        """Which Host headers to accept, now that the port is known.

        Bound to loopback (the default), only loopback names are ours. Bound to
        every interface, so is any IP address with our port (a browser that
        reaches us by address cannot be a DNS-rebinding page), this machine's
        names, and --allow-host; any other name is refused.
        """
        self.port = port
        names = {host, "localhost", "127.0.0.1", "[::1]"} if cli.is_loopback(host) else {host}
        if host in ("0.0.0.0", "::", ""):
            self.every_interface = True
            names = {"localhost", socket.gethostname(), socket.getfqdn()}
        self.hosts = {f"{name}:{port}".lower() for name in names} | self.extra_hosts
        if port == 80:
            self.hosts |= {name.lower() for name in names}

    def foreign(self, request: web.Request) -> str | None:
        """Why this request comes from outside the site's own pages, or None."""
        host = request.headers.get("Host", "").lower()
        if self.hosts is not None and host not in self.hosts and not (
                self.every_interface and self._an_address(host)):
            return (f"Host {host[:100]!r} is not this site's address (a DNS-rebinding "
                    "page?); to serve it under another name, start with --allow-host NAME:PORT")
        origin = request.headers.get("Origin")
        if origin is not None:
            origin_host = origin.lower().removeprefix("http://").removeprefix("https://")
            if origin_host != host and origin_host not in self.extra_hosts:
                return (f"Origin {origin[:100]!r} is another site: only this site's own "
                        "pages may use it (or start with --allow-host for that origin's host)")
        return None

    def _an_address(self, host: str) -> bool:
        """Is `host` (HOST:PORT) an IP address with our port?"""
        name, _, port = host.rpartition(":")
        try:
            ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            return False
        return port == str(self.port)

    def authorised(self, request: web.Request) -> bool:
        """True without a token, or when the request carries it (Bearer, or ?token= where
        allowed), or a session cookie from `log_in`."""
        if self.token is None:
            return True
        session = request.cookies.get(SESSION_COOKIE)
        if session is not None and self.sessions.get(session, 0.0) > time.monotonic():
            return True
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not given and self.token_in_url:
            given = request.query.get("token", "")
        return hmac.compare_digest(given.encode(), self.token.encode())

    def log_in(self, password: str) -> str:
        """A new session for the right password (the token); raises LoginRefused."""
        now = time.monotonic()
        if self.token is None:
            raise LoginRefused(409, "this site has no password: nothing to log in to")
        if now < self._next_login_at:
            raise LoginRefused(429, "too many wrong passwords: try again in a second")
        if not hmac.compare_digest(password.encode(), self.token.encode()):
            self._failed_logins += 1
            if self._failed_logins >= FREE_FAILED_LOGINS:
                self._next_login_at = now + 1.0
            raise LoginRefused(401, "that is not the admin password")
        self._failed_logins = 0
        self.sessions = {key: ends for key, ends in self.sessions.items() if ends > now}
        while len(self.sessions) >= MAX_SESSIONS:
            del self.sessions[next(iter(self.sessions))]
        session = secrets.token_urlsafe(32)
        self.sessions[session] = now + SESSION_TTL_S
        return session

    def log_out(self, request: web.Request) -> None:
        self.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)


class LoginRefused(Exception):
    """A login that failed: the HTTP status and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
