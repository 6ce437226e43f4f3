"""The dashboard's HTTP side, on aiohttp: the page, WebSocket, SSE and two JSON endpoints.

    GET /                      the page (HTML, CSS and script in one document)
    GET /ws?topics=...         WebSocket: JSON frames {"topic", "kind", "data"}
    GET /events?topics=...     the same frames as Server-Sent Events, for curl and scripts
    GET /api/state             the current merged state, views and recent events
    GET /api/stats             viewers, per-client queue depth, conflation and drops

Each client's frames go through its own bounded queue (see fanout.py) and its
own sender task, so a browser that stops reading holds up only itself; one
that cannot take a frame for `send_timeout_s` is disconnected. With a token,
every path wants it as `?token=` or `Authorization: Bearer`.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from consumer.api import json_text
from consumer.dashboard.fanout import ClientQueue, Update, parse_patterns
from consumer.dashboard.hub import Hub
from consumer.website import Guard, error, health

log = logging.getLogger("slipstream.dashboard")

STATIC = Path(__file__).with_name("static")
DEFAULT_GAME_LABEL = "F1 game"
PATHS = {  # path -> the query parameters it takes
    "/": {"token"},
    "/ws": {"topics", "token"},
    "/events": {"topics", "token"},
    "/api/state": {"token"},
    "/api/stats": {"token"},
    "/healthz": set(),  # for probes: no token, any Host (it tells nothing of the data)
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Limits:
    max_clients: int = 64
    inbound_bytes: int = 4096  # the largest WebSocket message a browser may send
    inbound_per_s: float = 5.0  # inbound messages per second, on average ...
    inbound_burst: int = 20  # ... with this many at once
    send_timeout_s: float = 30.0  # a client that takes no frame for this long is dropped
    keepalive_s: float = 15.0  # an SSE comment after this long without a frame


class TokenBucket:
    """At most `rate` per second on average, `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.at = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class DashboardWeb:
    def __init__(self, hub: Hub, token: str | None = None, limits: Limits = Limits(),
                 allow_hosts: tuple[str, ...] = (),
                 game_label: str = DEFAULT_GAME_LABEL) -> None:
        self.hub = hub
        self.guard = Guard(token, allow_hosts)
        self.limits = limits
        self.page = render_page(game_label)
        self._sockets: set[web.WebSocketResponse] = set()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self.index)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/events", self.events)
        app.router.add_get("/api/state", self.state)
        app.router.add_get("/api/stats", self.stats)
        app.router.add_get("/healthz", self.healthz)
        app.on_shutdown.append(self._close_clients)
        return app

    def serving_at(self, host: str, port: int) -> None:
        self.guard.serving_at(host, port)

    # --- every request -----------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Unknown paths, bad parameters and a missing token get a clear 4xx, in JSON."""
        allowed = PATHS.get(request.path)
        if allowed is None:
            return error(404, f"no such path: {request.path} (the dashboard serves "
                              f"{', '.join(PATHS)})")
        if request.method not in ("GET", "HEAD"):
            return error(405, f"{request.method} is not allowed on {request.path}; use GET")
        unknown = sorted(set(request.query) - allowed)
        if unknown:
            return error(400, f"unknown query parameter {', '.join(map(repr, unknown))} for "
                              f"{request.path} (it takes: {', '.join(sorted(allowed)) or 'none'})")
        if request.path == "/healthz":
            return await handler(request)
        foreign = self.guard.foreign(request)
        if foreign is not None:
            return error(403, foreign)
        if not self.guard.authorised(request):
            return error(401, "this dashboard needs its token: add ?token=... to the address "
                              "(or send Authorization: Bearer ...)")
        return await handler(request)

    def _patterns(self, request: web.Request) -> list[str]:
        try:
            return parse_patterns(request.query.get("topics"))
        except ValueError as exc:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"topics: {exc}"}),
                                     content_type="application/json") from None

    def _room_for_one_more(self) -> None:
        if len(self.hub.fanout.clients) >= self.limits.max_clients:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": f"the dashboard is full ({self.limits.max_clients} "
                                          "clients; --max-clients raises it)"}),
                content_type="application/json")

    # --- pages and JSON ------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=self.page, content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def state(self, request: web.Request) -> web.Response:
        return web.Response(text=json_text(self.hub.state()), content_type="application/json")

    async def healthz(self, request: web.Request) -> web.Response:
        return health(self.hub.broker_connected())

    async def stats(self, request: web.Request) -> web.Response:
        return web.Response(text=json_text(self.hub.stats()), content_type="application/json")

    # --- streams -------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        patterns = self._patterns(request)
        self._room_for_one_more()
        ws = web.WebSocketResponse(max_msg_size=self.limits.inbound_bytes, heartbeat=20)
        await ws.prepare(request)
        client = self.hub.connect("websocket", request.remote or "?", patterns)
        self._sockets.add(ws)
        sender = asyncio.create_task(self._send(client, request, ws.send_str, lambda u: u.text))
        try:
            await self._read(ws, client)
        finally:
            self.hub.disconnect(client)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            self._sockets.discard(ws)
            await ws.close()
        return ws

    async def events(self, request: web.Request) -> web.StreamResponse:
        patterns = self._patterns(request)
        self._room_for_one_more()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store"})
        await response.prepare(request)
        client = self.hub.connect("sse", request.remote or "?", patterns)
        try:
            # One event per frame: `event:` names its kind, `data:` is the JSON. A
            # comment line when there is nothing to send keeps proxies from timing the
            # stream out, and finds a client that has gone.
            await self._send(client, request, response.write,
                             lambda u: f"event: {u.kind}\ndata: {u.text}\n\n".encode(),
                             keepalive=b": keepalive\n\n")
        finally:
            self.hub.disconnect(client)
        return response

    async def _send(self, client: ClientQueue, request: web.Request,
                    write: Callable[[Any], Awaitable[None]],
                    frame: Callable[[Update], Any], keepalive: bytes | None = None) -> None:
        """Take the client's frames and write them, until it goes or stalls too long."""
        try:
            while True:
                if keepalive is None:
                    update = await client.next()
                else:
                    try:
                        update = await asyncio.wait_for(client.next(), self.limits.keepalive_s)
                    except TimeoutError:  # nothing to send (and nothing taken from the queue)
                        await asyncio.wait_for(write(keepalive), self.limits.send_timeout_s)
                        continue
                if update is None:
                    return
                await asyncio.wait_for(write(frame(update)), self.limits.send_timeout_s)
        except TimeoutError:
            log.warning("client %d (%s, %s) took no frame for %.0f s: disconnecting it",
                        client.id, client.kind, client.remote, self.limits.send_timeout_s)
            if request.transport is not None:
                request.transport.abort()
        except (ConnectionError, RuntimeError):
            pass  # the client went away; its handler cleans up

    async def _read(self, ws: web.WebSocketResponse, client: ClientQueue) -> None:
        """Inbound: small JSON requests, size- and rate-limited."""
        bucket = TokenBucket(self.limits.inbound_per_s, self.limits.inbound_burst)
        async for message in ws:
            if message.type == WSMsgType.ERROR:  # e.g. over inbound_bytes: aiohttp closed it
                log.info("client %d: %s", client.id, ws.exception())
                return
            if not bucket.take():
                await ws.close(code=WSCloseCode.POLICY_VIOLATION,
                               message=b"too many messages: at most %d per second"
                               % self.limits.inbound_per_s)
                return
            if message.type != WSMsgType.TEXT:
                await ws.close(code=WSCloseCode.UNSUPPORTED_DATA,
                               message=b"send JSON text frames")
                return
            self._request(client, message.data)

    def _request(self, client: ClientQueue, text: str) -> None:
        """{"type": "ping"} or {"type": "topics", "topics": "a.>,b"}; anything else: an error."""
        try:
            request = json.loads(text)
            kind = request["type"] if isinstance(request, dict) else None
            if kind == "ping":
                client.offer(Update.encode("dashboard.pong", "notice", {"time": time.time()}))
            elif kind == "topics":
                self.hub.resubscribe(client, parse_patterns(str(request.get("topics", ""))))
                client.offer(Update.encode("dashboard.topics", "notice",
                                           {"topics": client.patterns}))
            else:
                raise ValueError(f"unknown request {kind!r}; send ping or topics")
        except (ValueError, KeyError, TypeError) as exc:
            client.offer(Update.encode("dashboard.error", "notice", {"error": str(exc)}))

    async def _close_clients(self, app: web.Application) -> None:
        self.hub.fanout.close_all()
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"dashboard stopping")


def render_page(game_label: str = DEFAULT_GAME_LABEL) -> str:
    """The page as one document: style and script put inline, so it needs nothing else;
    the game panel titled `game_label` ("Simulated game" for the simulator)."""
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    style = (STATIC / "style.css").read_text(encoding="utf-8")
    script = (STATIC / "app.js").read_text(encoding="utf-8")
    return (page.replace("/*STYLE*/", style).replace("/*SCRIPT*/", script)
            .replace("<!--GAME_LABEL-->", html.escape(game_label)))
