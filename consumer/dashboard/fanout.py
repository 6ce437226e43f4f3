"""Fan-out to many browsers: one bounded, conflating queue per client.

Each update is encoded once and offered to every client's queue without
waiting, so the broker subscription never waits for a browser. A queue holds
at most one pending value per state topic (a newer value takes the older
one's place in line: a slow client skips to the latest tower instead of
working through a backlog) and at most `max_events` events (race control
messages, alerts). When a stalled client's events overflow, the oldest are
dropped, counted, and the client is told how many before its next frame.
A stalled client therefore costs bounded memory and delays nobody else.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from broker.errors import ProtocolError
from broker.server.routing import pattern_matches, validate_pattern
from consumer.api import json_text

Kind = Literal["state", "event", "notice"]


@dataclass(frozen=True, slots=True)
class Update:
    """One frame for the browsers: {"topic", "kind", "data"} as JSON text, encoded once."""

    topic: str
    kind: Kind
    text: str

    @classmethod
    def encode(cls, topic: str, kind: Kind, data: Any) -> Update:
        return cls(topic, kind, json_text({"topic": topic, "kind": kind, "data": data}))


def parse_patterns(text: str | None) -> list[str]:
    """'live.TrackStatus,alerts.>' -> patterns (None or '' means everything); ValueError if bad."""
    if not text:
        return [">"]
    patterns = [p.strip() for p in text.split(",") if p.strip()]
    for pattern in patterns:
        try:
            validate_pattern(pattern)
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None
    if not patterns:
        raise ValueError(f"no topic patterns in {text!r}")
    return patterns


def matches_any(patterns: list[str], topic: str) -> bool:
    return any(pattern_matches(pattern, topic) for pattern in patterns)


class ClientQueue:
    """What one client has yet to receive, and what it cost it."""

    _ids = itertools.count(1)

    def __init__(self, kind: str, remote: str, patterns: list[str], max_events: int) -> None:
        self.id = next(self._ids)
        self.kind, self.remote, self.patterns = kind, remote, patterns
        self.max_events = max_events
        self.connected_at = time.monotonic()
        self.sent = self.conflated = self.dropped = 0
        self._pending: OrderedDict[str | int, Update] = OrderedDict()
        self._event_keys: deque[int] = deque()
        self._event_numbers = itertools.count()
        self._unreported_drops = 0
        self._ready = asyncio.Event()
        self._closed = False

    def wants(self, topic: str) -> bool:
        return matches_any(self.patterns, topic)

    def offer(self, update: Update) -> None:
        """Queue `update` without waiting: conflate states, bound events."""
        if update.kind == "state":
            if update.topic in self._pending:
                self.conflated += 1
            self._pending[update.topic] = update  # a replaced value keeps its place in line
        else:
            if len(self._event_keys) >= self.max_events:
                del self._pending[self._event_keys.popleft()]
                self.dropped += 1
                self._unreported_drops += 1
            key = next(self._event_numbers)
            self._event_keys.append(key)
            self._pending[key] = update
        self._ready.set()

    async def next(self) -> Update | None:
        """The next frame to send, or None once the queue is closed."""
        while not self._pending and not self._unreported_drops:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        if self._closed:
            return None
        if self._unreported_drops:
            count, self._unreported_drops = self._unreported_drops, 0
            return Update.encode("dashboard.dropped", "notice",
                                 {"events": count, "total": self.dropped})
        key, update = self._pending.popitem(last=False)
        if isinstance(key, int):
            self._event_keys.popleft()
        self.sent += 1
        return update

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    @property
    def depth(self) -> int:
        return len(self._pending)

    def stats(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "remote": self.remote,
                "topics": self.patterns, "connected_s": round(time.monotonic() -
                                                              self.connected_at, 1),
                "queue_depth": self.depth, "sent": self.sent, "conflated": self.conflated,
                "dropped": self.dropped}


class Fanout:
    """Every connected client's queue; publishing offers an update to those that want it."""

    def __init__(self) -> None:
        self.clients: dict[int, ClientQueue] = {}

    def add(self, client: ClientQueue, greeting: Iterable[Update]) -> None:
        """Connect a client: it first gets `greeting` (current views, recent events)."""
        self.clients[client.id] = client
        for update in greeting:
            if client.wants(update.topic):
                client.offer(update)

    def remove(self, client: ClientQueue) -> None:
        client.close()
        self.clients.pop(client.id, None)

    def publish(self, update: Update) -> None:
        for client in self.clients.values():
            if client.wants(update.topic):
                client.offer(update)

    def close_all(self) -> None:
        for client in list(self.clients.values()):
            self.remove(client)

    def stats(self) -> list[dict[str, Any]]:
        return [client.stats() for client in self.clients.values()]

