"""A stand-in for F1's live-timing endpoints, serving a real recorded session over loopback.

    python -m tests.fakes.livetiming_server --session samples/livetiming/<folder>
        [--protocol core|classic] [--token T] [--drop-after N] [--garbage] [--port 0]

It speaks SignalR Core at /signalrcore and classic SignalR at /signalr, like
livetiming.formula1.com. Subscribe is answered with each topic's first
message (its state); the rest is sent as `feed` calls. The session position
is shared by all connections, as a live stream is: with --drop-after N the
first connection is cut after N feed messages and a reconnecting client gets
the state at that point, then the stream from there on. Prints
"listening on PORT" when ready. Test harness only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from f1vocab.state import merge
from producer.livetiming.feed import FeedMessage
from producer.livetiming.recordings import ReadReport, read_archive_folder

SEPARATOR = "\x1e"
SESSION_START = datetime(2020, 8, 7, 14, 0, tzinfo=UTC)
GARBAGE_CORE = ["this is not json" + SEPARATOR, json.dumps([1, 2]) + SEPARATOR,
                json.dumps({"type": 42}) + SEPARATOR,
                json.dumps({"type": 1, "target": "feed", "arguments": "oops"}) + SEPARATOR,
                json.dumps({"type": 1, "target": "feed",
                            "arguments": ["CarData.z", "%%%not base64", "2020-08-07T14:00:00Z"]})
                + SEPARATOR]
GARBAGE_CLASSIC = ["this is not json", json.dumps([1, 2]), json.dumps({"Z": 1}),
                   json.dumps({"M": [{"H": "Streaming", "M": "feed", "A": "oops"}]}),
                   json.dumps({"M": [{"H": "Streaming", "M": "feed",
                                      "A": ["CarData.z", "%%%", "2020-08-07T14:00:00Z"]}]})]


class Session:
    def __init__(self, folder: Path, drop_after: int | None) -> None:
        messages = read_archive_folder(folder, ReadReport())
        first: dict[str, FeedMessage] = {}
        self.feed: list[FeedMessage] = []
        for message in messages:
            if message.topic in first:
                self.feed.append(message)
            else:
                first[message.topic] = message
        self.initial = {topic: message.data for topic, message in first.items()}
        self.position = 0  # next feed message to send, shared by every connection
        self.drop_after = drop_after
        self.connections = 0

    def state(self, topics: list[str]) -> dict[str, Any]:
        """Each requested topic's state at the current position (first message + updates)."""
        state = {topic: json.loads(json.dumps(data)) for topic, data in self.initial.items()
                 if topic in topics}
        for message in self.feed[: self.position]:
            if message.topic in state:
                merge(state[message.topic], json.loads(json.dumps(message.data)))
        return state

    def should_drop(self, sent_here: int) -> bool:
        return self.connections == 1 and self.drop_after is not None \
            and sent_here >= self.drop_after


def timestamp(message: FeedMessage) -> str:
    moment = SESSION_START + timedelta(seconds=message.offset_s or 0.0)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def authorised(request: web.Request, token: str | None) -> bool:
    return token is None or request.headers.get("Authorization") == f"Bearer {token}"


def make_app(session: Session, token: str | None, garbage: bool) -> web.Application:
    async def core_negotiate(request: web.Request) -> web.Response:
        if not authorised(request, token):
            return web.Response(status=401, text="Unauthorized: bad or missing access token")
        return web.json_response({"negotiateVersion": 1, "connectionId": "c1",
                                  "connectionToken": f"t{session.connections + 1}",
                                  "availableTransports": [{"transport": "WebSockets"}]})

    async def classic_negotiate(request: web.Request) -> web.Response:
        if not authorised(request, token):
            return web.Response(status=401, text="Unauthorized")
        response = web.json_response({"Url": "/signalr", "ConnectionToken": "tok+/=",
                                      "ConnectionId": "c1", "ProtocolVersion": "1.5"})
        response.set_cookie("AWSALBCORS", "sticky")
        return response

    async def core_socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session.connections += 1
        handshake = await ws.receive_str()
        assert json.loads(handshake.rstrip(SEPARATOR)) == {"protocol": "json", "version": 1}
        await ws.send_str("{}" + SEPARATOR)
        call = json.loads((await ws.receive_str()).rstrip(SEPARATOR))
        assert call["target"] == "Subscribe", call
        topics = call["arguments"][0]
        await ws.send_str(json.dumps({"type": 3, "invocationId": call["invocationId"],
                                      "result": session.state(topics)}) + SEPARATOR)
        if garbage:
            for text in GARBAGE_CORE:
                await ws.send_str(text)
            await ws.send_bytes(b"\x00binary")
        await stream(ws, topics, lambda m: json.dumps(
            {"type": 1, "target": "feed", "arguments": [m.topic, m.data, timestamp(m)]})
            + SEPARATOR, ping=json.dumps({"type": 6}) + SEPARATOR)
        return ws

    async def classic_socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session.connections += 1
        assert request.query.get("transport") == "webSockets"
        assert request.query.get("connectionToken") == "tok+/="
        call = json.loads(await ws.receive_str())
        assert call["H"] == "Streaming" and call["M"] == "Subscribe", call
        topics = call["A"][0]
        await ws.send_str(json.dumps({"C": "s-0", "S": 1, "M": []}))
        await ws.send_str(json.dumps({"R": session.state(topics), "I": str(call["I"])}))
        if garbage:
            for text in GARBAGE_CLASSIC:
                await ws.send_str(text)
        await stream(ws, topics, lambda m: json.dumps(
            {"C": "d-1", "M": [{"H": "Streaming", "M": "feed",
                                "A": [m.topic, m.data, timestamp(m)]}]}), ping="{}")
        return ws

    async def stream(ws: web.WebSocketResponse, topics: list[str], frame: Any,
                     ping: str) -> None:
        sent_here = 0
        while session.position < len(session.feed):
            message = session.feed[session.position]
            if session.should_drop(sent_here):
                assert ws._writer is not None
                ws._writer.transport.abort()  # an abrupt drop, no close frame
                return
            session.position += 1
            if message.topic in topics:
                await ws.send_str(frame(message))
                sent_here += 1
                if sent_here % 500 == 0:
                    await ws.send_str(ping)
                    await asyncio.sleep(0)
        while not ws.closed:  # the session is over: keep alive until the client leaves
            await ws.send_str(ping)
            try:
                incoming = await ws.receive(timeout=0.5)
            except TimeoutError:
                continue
            if incoming.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING,
                                 WSMsgType.ERROR):
                break
        await ws.close()

    app = web.Application()
    app.router.add_post("/signalrcore/negotiate", core_negotiate)
    app.router.add_get("/signalrcore", core_socket)
    app.router.add_get("/signalr/negotiate", classic_negotiate)
    app.router.add_get("/signalr/connect", classic_socket)
    return app


async def serve(args: argparse.Namespace) -> None:
    session = Session(Path(args.session), args.drop_after)
    runner = web.AppRunner(make_app(session, args.token, args.garbage))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"listening on {port}", flush=True)
    try:
        await asyncio.sleep(args.lifetime)
    finally:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--session", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token")
    parser.add_argument("--drop-after", type=int)
    parser.add_argument("--garbage", action="store_true")
    parser.add_argument("--lifetime", type=float, default=120.0, help="exit after this long")
    asyncio.run(serve(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
