"""The network side of the live-timing bridge: negotiate, WebSocket, reconnect.

A thin layer around the sans-I/O protocols in signalr.py, on aiohttp. One
`connect_once` runs one connection from negotiate to close; `run_live`
repeats it with exponential backoff and jitter, because F1 drops
connections (about every two hours) and networks fail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from broker.errors import SlipstreamError
from broker.tasks import stop_task
from producer.livetiming import signalr
from producer.livetiming.feed import DEFAULT_TOPICS
from producer.livetiming.publisher import LivePublisher

log = logging.getLogger("slipstream.livetiming")

Protocol = Literal["core", "classic"]
DEFAULT_URLS = {"core": "https://livetiming.formula1.com/signalrcore",
                "classic": "https://livetiming.formula1.com/signalr"}
CLASSIC_HUBS = json.dumps([{"name": signalr.HUB}])
PING_INTERVAL_S = 15.0


class AuthRefused(SlipstreamError):
    """F1 (or whatever --url points at) refused our access token: retrying will not help."""


class Unreachable(SlipstreamError):
    """The endpoint could not be reached after every retry."""


class _Dropped(Exception):
    """This connection ended; the caller decides whether to reconnect."""


class _NoData(Exception):
    """--timeout passed without a message."""


@dataclass
class LiveOptions:
    protocol: Protocol = "core"
    url: str | None = None
    topics: list[str] = field(default_factory=lambda: list(DEFAULT_TOPICS))
    token: str | None = None
    timeout_s: float | None = None  # stop after this long without data
    retries: int = 10  # consecutive failed connections before giving up
    backoff_max_s: float = 30.0
    raw_record: Path | None = None

    @property
    def endpoint(self) -> str:
        return (self.url or DEFAULT_URLS[self.protocol]).rstrip("/")


@dataclass
class _Watch:
    """When data last arrived, across reconnects (for --timeout)."""

    last_data: float = field(default_factory=time.monotonic)
    connections: int = 0


async def run_live(options: LiveOptions, publisher: LivePublisher) -> None:
    """Bridge until --timeout passes without data, or until cancelled (Ctrl-C)."""
    watch = _Watch()
    raw = options.raw_record.open("a", encoding="utf-8") if options.raw_record else None
    failures = 0
    try:
        async with aiohttp.ClientSession() as http:
            while True:
                received_before = publisher.published + publisher.deduplicated
                try:
                    await connect_once(http, options, publisher, watch, raw)
                except _NoData:
                    log.info("no data for %g s: stopping", options.timeout_s)
                    return
                except (_Dropped, aiohttp.ClientError, OSError, TimeoutError) as exc:
                    reason = str(exc) or type(exc).__name__
                    log.warning("live timing connection lost: %s", reason)
                if publisher.published + publisher.deduplicated > received_before:
                    failures = 0  # that connection worked: start the backoff afresh
                failures += 1
                if failures > options.retries:
                    raise Unreachable(f"{options.endpoint} unreachable after {options.retries} "
                                      "retries")
                delay = min(options.backoff_max_s, 0.25 * 2 ** (failures - 1))
                delay *= random.uniform(0.5, 1.5)  # jitter: many bridges must not retry in step
                log.info("reconnecting in %.1f s (attempt %d of %d)", delay, failures,
                         options.retries)
                await asyncio.sleep(delay)
    finally:
        if raw is not None:
            raw.close()


def _auth_headers(options: LiveOptions) -> dict[str, str]:
    return {"Authorization": f"Bearer {options.token}"} if options.token else {}


def _ws_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme={"https": "wss", "http": "ws"}.get(parts.scheme,
                                                                             parts.scheme)))


async def _negotiate(http: aiohttp.ClientSession, options: LiveOptions) -> str:
    """Ask the endpoint for a connection token (both dialects negotiate first)."""
    if options.protocol == "core":
        request = http.post(f"{options.endpoint}/negotiate?negotiateVersion=1",
                            headers=_auth_headers(options))
    else:
        request = http.get(f"{options.endpoint}/negotiate?clientProtocol=1.5&connectionData="
                           f"{quote(CLASSIC_HUBS)}", headers=_auth_headers(options))
    async with request as response:
        body = await response.text()
        if response.status in (401, 403):
            raise AuthRefused(f"{options.endpoint} refused the access token at negotiate: "
                              f"HTTP {response.status} {body[:200].strip()}")
        if response.status != 200:
            raise _Dropped(f"negotiate answered HTTP {response.status}: {body[:200].strip()}")
    try:
        answer = json.loads(body)
        token = answer.get("connectionToken") or answer.get("connectionId") \
            if options.protocol == "core" else answer["ConnectionToken"]
    except (ValueError, KeyError, AttributeError):
        raise _Dropped(f"negotiate answer is not what SignalR sends: {body[:200]}") from None
    if not isinstance(token, str):
        raise _Dropped(f"negotiate answer has no connection token: {body[:200]}")
    return token


def _connect_url(options: LiveOptions, token: str) -> str:
    base = _ws_url(options.endpoint)
    if options.protocol == "core":
        return f"{base}?id={quote(token)}"
    return (f"{base}/connect?transport=webSockets&clientProtocol=1.5"
            f"&connectionToken={quote(token)}&connectionData={quote(CLASSIC_HUBS)}")


async def connect_once(http: aiohttp.ClientSession, options: LiveOptions,
                       publisher: LivePublisher, watch: _Watch, raw: TextIO | None) -> None:
    """One connection: negotiate, open the WebSocket, subscribe, publish until it ends."""
    token = await _negotiate(http, options)
    try:
        ws = await http.ws_connect(_connect_url(options, token), headers=_auth_headers(options),
                                   max_msg_size=64 * 1024 * 1024)
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status in (401, 403):
            raise AuthRefused(f"{options.endpoint} refused the access token: HTTP {exc.status}")\
                from None
        raise
    watch.connections += 1
    log.info("connected to %s (%s, connection %d)", options.endpoint, options.protocol,
             watch.connections)
    protocol: signalr.CoreProtocol | signalr.ClassicProtocol
    if options.protocol == "core":
        protocol = signalr.CoreProtocol()
        await ws.send_str(protocol.handshake())
    else:
        protocol = signalr.ClassicProtocol()
        await ws.send_str(protocol.subscribe(options.topics))
    pinger = asyncio.create_task(_ping(ws)) if options.protocol == "core" else None
    try:
        async with ws:
            await _read(ws, protocol, options, publisher, watch, raw)
    finally:
        await stop_task(pinger)


async def _ping(ws: aiohttp.ClientWebSocketResponse) -> None:
    while not ws.closed:
        await asyncio.sleep(PING_INTERVAL_S)
        await ws.send_str(signalr.CoreProtocol.ping())


async def _read(ws: aiohttp.ClientWebSocketResponse,
                protocol: signalr.CoreProtocol | signalr.ClassicProtocol, options: LiveOptions,
                publisher: LivePublisher, watch: _Watch, raw: TextIO | None) -> None:
    while True:
        wait_s = None
        if options.timeout_s is not None:
            wait_s = watch.last_data + options.timeout_s - time.monotonic()
            if wait_s <= 0:
                raise _NoData
        try:
            frame = await ws.receive(timeout=wait_s)
        except TimeoutError:
            raise _NoData from None
        if frame.type != aiohttp.WSMsgType.TEXT:
            if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                              aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                raise _Dropped(f"WebSocket closed ({frame.type.name}: {frame.extra or ''})")
            publisher.skip("non-text-frame", frame.type.name)
            continue
        if raw is not None:
            raw.write(f"{signalr.utc_now()} {frame.data}\n")
        for event in protocol.receive(frame.data):
            await _act(event, ws, protocol, options, publisher, watch)


async def _act(event: signalr.Event, ws: aiohttp.ClientWebSocketResponse,
               protocol: signalr.CoreProtocol | signalr.ClassicProtocol, options: LiveOptions,
               publisher: LivePublisher, watch: _Watch) -> None:
    match event:
        case signalr.Feed(message):
            watch.last_data = time.monotonic()
            await publisher.publish(message)
        case signalr.Snapshot(messages):
            watch.last_data = time.monotonic()
            await publisher.publish_snapshot(messages)
        case signalr.HandshakeDone():
            assert isinstance(protocol, signalr.CoreProtocol)
            await ws.send_str(protocol.subscribe(options.topics))
        case signalr.KeepAlive():
            pass
        case signalr.Refused(reason):
            raise AuthRefused(f"{options.endpoint}: {reason}")
        case signalr.ServerClosed(reason):
            raise _Dropped(f"server closed the connection: {reason}")
        case signalr.Malformed(kind, detail):
            publisher.skip(kind, detail)
