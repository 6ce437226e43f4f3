"""Between the broker and the browsers: messages in, frames out.

The hub applies each broker message to the model and sends the events it
makes at once; a refresh loop sends the state views that changed, a few
times a second, and a heartbeat every second, which is how a page knows
its connection and its data are alive. Nothing here waits for a client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from consumer.dashboard.fanout import ClientQueue, Fanout, Update, matches_any
from consumer.dashboard.model import Dashboard

HEARTBEAT_S = 1.0


class Hub:
    def __init__(self, model: Dashboard, max_events: int = 256,
                 broker_connected: Callable[[], bool] = lambda: True) -> None:
        self.model = model
        self.fanout = Fanout()
        self.max_events = max_events
        self.broker_connected = broker_connected
        self.started_at = time.monotonic()
        self.last_message_at: float | None = None

    # --- from the broker -----------------------------------------------------------

    def on_message(self, topic: str, data: Any, timestamp_us: int = 0) -> int:
        """Apply one message; returns how many events it sent."""
        self.last_message_at = time.monotonic()
        events = self.model.apply(topic, data, timestamp_us)
        for event_topic, event in events:
            self.fanout.publish(Update.encode(event_topic, "event", event))
        return len(events)

    def refresh(self) -> None:
        for topic, value in self.model.take_changed().items():
            self.fanout.publish(Update.encode(topic, "state", value))

    def heartbeat(self) -> None:
        self.fanout.publish(Update.encode("dashboard.heartbeat", "state", self._pulse()))

    async def run(self, refresh_s: float) -> None:
        """Refresh changed views every `refresh_s`, and beat every second, until cancelled."""
        next_beat = 0.0
        while True:
            self.refresh()
            if time.monotonic() >= next_beat:
                self.heartbeat()
                next_beat = time.monotonic() + HEARTBEAT_S
            await asyncio.sleep(refresh_s)

    # --- to the browsers -----------------------------------------------------------

    def connect(self, kind: str, remote: str, patterns: list[str]) -> ClientQueue:
        client = ClientQueue(kind, remote, patterns, self.max_events)
        self.fanout.add(client, self.greeting())
        self._viewers_changed()
        return client

    def disconnect(self, client: ClientQueue) -> None:
        if client.id in self.fanout.clients:
            self.fanout.remove(client)
            self._viewers_changed()

    def resubscribe(self, client: ClientQueue, patterns: list[str]) -> None:
        """A client asked for other topics: it gets their current state and history."""
        before, client.patterns = client.patterns, patterns
        for update in self.greeting():
            if client.wants(update.topic) and not matches_any(before, update.topic):
                client.offer(update)

    def greeting(self) -> list[Update]:
        """What a new client gets first: the heartbeat, every view, the recent events."""
        updates = [Update.encode("dashboard.heartbeat", "state", self._pulse()),
                   Update.encode("dashboard.viewers", "state", self._viewers())]
        updates += [Update.encode(topic, "state", value)
                    for topic, value in self.model.all_views().items()]
        updates += [Update.encode(topic, "event", event)
                    for topic, event in self.model.recent_events()]
        return updates

    # --- what /api/state and /api/stats answer ---------------------------------------

    def state(self) -> dict[str, Any]:
        return {"views": self.model.all_views(), "live": self.model.live,
                "game": self.model.rigs[None].packets,
                "rigs": {rig.name: rig.packets for rig in self.model.rigs.values() if rig.name},
                "rigs_not_shown": sorted(self.model.rigs_not_shown),
                "events": [{"topic": t, "data": d} for t, d in self.model.recent_events()]}

    def stats(self) -> dict[str, Any]:
        return {**self._pulse(), "viewers": self._viewers(),
                "handled": dict(sorted(self.model.handled.items())),
                "clients": self.fanout.stats()}

    def _pulse(self) -> dict[str, Any]:
        age = None if self.last_message_at is None else round(
            time.monotonic() - self.last_message_at, 1)
        return {"time": round(time.time(), 3), "data_age_s": age,
                "broker_connected": self.broker_connected(),
                "uptime_s": round(time.monotonic() - self.started_at, 1)}

    def _viewers(self) -> dict[str, int]:
        kinds = [client.kind for client in self.fanout.clients.values()]
        return {"total": len(kinds), "websocket": kinds.count("websocket"),
                "sse": kinds.count("sse")}

    def _viewers_changed(self) -> None:
        self.fanout.publish(Update.encode("dashboard.viewers", "state", self._viewers()))
