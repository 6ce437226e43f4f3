"""Where live-timing messages leave the producer: the broker, and optionally a recording.

Every source hands its `FeedMessage`s to one `LivePublisher`. It publishes
each on `live.<Topic>`, counts what it published and what it had to skip,
writes the FastF1-format recording, and remembers each topic's state, so
that the snapshot F1 sends again after a reconnect is published only if it
says something new.

Each lap TimingData completes is published once more, on its own, as
`laps.live` (f1vocab/laps.py): one shape for every source's laps.

Each run of a source is a session: `start_session` announces it on
`live.session_start`, and every message after carries its id, so consumers
can tell a second replay into the same broker from the first and start
their state again (f1vocab/sessions.py).
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any, TextIO

from broker.client import Client
from f1vocab.laps import LIVE_LAPS_TOPIC, LiveLapTracker, track_of
from f1vocab.sessions import SESSION_START_TOPIC
from f1vocab.state import copy_json, merge
from f1vocab.timing import FeedError
from producer.livetiming.feed import FeedMessage
from producer.livetiming.recordings import format_fastf1_line

log = logging.getLogger("slipstream.livetiming")


class Recorder:
    """Appends messages to a file in FastF1's save format (loadable by FastF1)."""

    def __init__(self, path: Path, append: bool = False) -> None:
        self.path = path
        self._file: TextIO = path.open("a" if append else "w", encoding="utf-8")
        self.written = 0

    def write(self, message: FeedMessage) -> None:
        self._file.write(format_fastf1_line(message) + "\n")
        self.written += 1

    def close(self) -> None:
        self._file.close()


class LivePublisher:
    def __init__(self, client: Client, recorder: Recorder | None = None,
                 source: str = "live") -> None:
        self.client = client
        self.recorder = recorder
        self.source = source  # "live", "replay", "archive": said in live.session_start
        self.session: str | None = None
        self._f1_session: Any = None  # SessionInfo's Key: a new one is a new session
        self.published = 0
        self.deduplicated = 0
        self.skipped: dict[str, int] = {}  # reason kind -> count
        self._state: dict[str, Any] = {}  # per F1 topic: merged state, or the last .z payload
        self._laps = LiveLapTracker()
        self.laps = 0  # laps published on laps.live

    async def start_session(self, **about: Any) -> str:
        """Announce a new session (a replay round, a live connection); every message
        published after carries its id. `about` says what it is, for people."""
        self.session = secrets.token_hex(4)
        self._state.clear()
        self._laps = LiveLapTracker()
        self._f1_session = None  # a new session: nothing of the last one counts as published
        await self.client.publish(SESSION_START_TOPIC, {
            "session": self.session, "source": self.source,
            "started_at_us": time.time_ns() // 1000, **about})
        log.info("session %s: %s", self.session, ", ".join(
            f"{key} {value}" for key, value in about.items()) or self.source)
        return self.session

    async def publish(self, message: FeedMessage) -> None:
        if self.session is None or self._next_f1_session(message):
            await self.start_session()
        try:
            payload = message.to_payload()
        except FeedError as exc:
            self.skip("damaged-payload", f"{message.topic}: {exc}")
            return
        payload["session"] = self.session
        if self.recorder is not None:
            self.recorder.write(message)
        await self.client.publish(message.broker_topic, payload)
        self.published += 1
        self._remember(message)
        if message.topic == "TimingData" and not message.snapshot \
                and isinstance(message.data, dict):
            await self._publish_laps(message.data)

    async def _publish_laps(self, update: dict[str, Any]) -> None:
        """The laps this update completes, each on laps.live (joined mid-session, the
        snapshot's last laps were completed before we came: they are not)."""
        state = self._state
        drivers = state.get("DriverList")
        for lap in self._laps.completed(update, state.get("TimingData") or {},
                                        drivers if isinstance(drivers, dict) else {},
                                        track_of(state.get("SessionInfo"))):
            await self.client.publish(LIVE_LAPS_TOPIC, {**lap, "session": self.session})
            self.laps += 1

    async def publish_snapshot(self, messages: list[FeedMessage]) -> None:
        """Publish Subscribe's full state, except topics whose state we already published."""
        for message in messages:
            if message.topic in self._state and self._state[message.topic] == message.data:
                self.deduplicated += 1
                continue
            await self.publish(message)

    def _next_f1_session(self, message: FeedMessage) -> bool:
        """A live feed left running from practice into qualifying: F1's SessionInfo
        snapshot names another session."""
        if message.topic != "SessionInfo" or not isinstance(message.data, dict) \
                or "Key" not in message.data:
            return False
        key, self._f1_session = self._f1_session, message.data["Key"]
        return key is not None and key != message.data["Key"]

    def skip(self, kind: str, detail: str) -> None:
        """Count something unusable; log the first of each kind."""
        count = self.skipped.get(kind, 0)
        self.skipped[kind] = count + 1
        if not count:
            log.warning("skipping %s (further ones are only counted): %s", kind, detail)

    def _remember(self, message: FeedMessage) -> None:
        data = message.data
        if message.snapshot or message.topic.endswith(".z") or not isinstance(data, dict):
            self._state[message.topic] = copy_json(data)
        else:
            merge(self._state.setdefault(message.topic, {}), copy_json(data))

    def summary(self) -> str:
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.skipped.items()))
        return (f"published {self.published:,} messages and {self.laps:,} laps, "
                f"{self.deduplicated} repeated snapshots "
                f"left out, skipped {sum(self.skipped.values())}{f' ({kinds})' if kinds else ''}")

