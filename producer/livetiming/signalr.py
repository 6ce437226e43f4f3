"""The two SignalR dialects F1 live timing speaks, sans-I/O: text in, events out.

SignalR Core (`/signalrcore`, the current endpoint) sends JSON records ended
by the 0x1E record separator: a handshake, then invocations (`type` 1, e.g.
target "feed"), completions (`type` 3, the answer to our Subscribe), pings
(`type` 6) and close (`type` 7). Classic ASP.NET SignalR (`/signalr`, hub
"Streaming") sends one JSON object per WebSocket message: `{"M": [{"H", "M",
"A"}]}` for hub calls, `{"R", "I"}` for the answer to our call, `{}` to keep
alive. Both come out as the same few events, so the bridge does not care
which dialect it is talking.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from producer.livetiming.feed import FeedMessage

RECORD_SEPARATOR = "\x1e"
HUB = "Streaming"
SUBSCRIBE_ID = "1"


@dataclass(frozen=True)
class Feed:
    """One live message."""

    message: FeedMessage


@dataclass(frozen=True)
class Snapshot:
    """The answer to Subscribe: the full current state of each topic."""

    messages: list[FeedMessage]


@dataclass(frozen=True)
class KeepAlive:
    pass


@dataclass(frozen=True)
class HandshakeDone:
    pass


@dataclass(frozen=True)
class ServerClosed:
    reason: str


@dataclass(frozen=True)
class Refused:
    """The server refused what we asked (handshake or Subscribe)."""

    reason: str


@dataclass(frozen=True)
class Malformed:
    """Something we cannot use: counted and logged once per `kind` by the bridge."""

    kind: str
    detail: str


Event = Feed | Snapshot | KeepAlive | HandshakeDone | ServerClosed | Refused | Malformed


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def snapshot_messages(state: Any, received_at: str) -> Snapshot | Malformed:
    if not isinstance(state, dict):
        return Malformed("subscribe-result",
                         f"expected a map of topics, got {type(state).__name__}")
    return Snapshot([FeedMessage(topic, data, timestamp=received_at, snapshot=True)
                     for topic, data in state.items() if isinstance(topic, str)])


def feed_message(arguments: Any) -> Feed | Malformed:
    """[topic, data, timestamp] of a `feed` call -> Feed."""
    if (not isinstance(arguments, list) or len(arguments) < 2
            or not isinstance(arguments[0], str)):
        return Malformed("feed-arguments", f"expected [topic, data, timestamp]: {arguments!r:.80}")
    timestamp = arguments[2] if len(arguments) > 2 and isinstance(arguments[2], str) else None
    return Feed(FeedMessage(arguments[0], arguments[1], timestamp=timestamp or utc_now()))


class CoreProtocol:
    """SignalR Core's JSON hub protocol, client side."""

    def __init__(self) -> None:
        self._buffer = ""
        self._handshake_done = False

    @staticmethod
    def handshake() -> str:
        return json.dumps({"protocol": "json", "version": 1}) + RECORD_SEPARATOR

    @staticmethod
    def subscribe(topics: list[str]) -> str:
        return json.dumps({"type": 1, "target": "Subscribe", "arguments": [topics],
                           "invocationId": SUBSCRIBE_ID}) + RECORD_SEPARATOR

    @staticmethod
    def ping() -> str:
        return json.dumps({"type": 6}) + RECORD_SEPARATOR

    def receive(self, text: str) -> list[Event]:
        """Feed one WebSocket text message (records may also span messages)."""
        self._buffer += text
        *records, self._buffer = self._buffer.split(RECORD_SEPARATOR)
        return [self._record(record) for record in records if record.strip()]

    def _record(self, record: str) -> Event:
        try:
            value = json.loads(record)
        except json.JSONDecodeError:
            return Malformed("not-json", record[:80])
        if not isinstance(value, dict):
            return Malformed("not-an-object", record[:80])
        if not self._handshake_done:
            self._handshake_done = True
            if value.get("error"):
                return Refused(f"handshake refused: {value['error']}")
            return HandshakeDone()
        kind = value.get("type")
        if kind == 1 and isinstance(value.get("target"), str):
            if value["target"].lower() == "feed":
                return feed_message(value.get("arguments"))
            return Malformed(f"invocation-{value['target']}", record[:80])
        if kind == 3 and value.get("invocationId") == SUBSCRIBE_ID:
            if value.get("error"):
                return Refused(f"Subscribe refused: {value['error']}")
            return snapshot_messages(value.get("result"), utc_now())
        if kind == 6:
            return KeepAlive()
        if kind == 7:
            return ServerClosed(str(value.get("error") or "server closed the connection"))
        return Malformed(f"type-{kind}", record[:80])


class ClassicProtocol:
    """ASP.NET SignalR 1.5, hub "Streaming", client side."""

    @staticmethod
    def subscribe(topics: list[str]) -> str:
        return json.dumps({"H": HUB, "M": "Subscribe", "A": [topics], "I": int(SUBSCRIBE_ID)})

    def receive(self, text: str) -> list[Event]:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return [Malformed("not-json", text[:80])]
        if not isinstance(value, dict):
            return [Malformed("not-an-object", text[:80])]
        if not value:
            return [KeepAlive()]
        if str(value.get("I")) == SUBSCRIBE_ID:
            if "E" in value:
                return [Refused(f"Subscribe refused: {value['E']}")]
            return [snapshot_messages(value.get("R", {}), utc_now())]
        events: list[Event] = []
        calls = value.get("M")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict) and str(call.get("M", "")).lower() == "feed":
                    events.append(feed_message(call.get("A")))
                else:
                    events.append(Malformed("hub-call", f"{call!r:.80}"))
        elif "S" in value or "C" in value:
            events.append(KeepAlive())  # the init message, or a cursor with nothing new
        else:
            events.append(Malformed("unknown-message", text[:80]))
        return events
