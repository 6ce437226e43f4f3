"""Which live-timing session a message belongs to, when several are replayed into one broker.

The producers stamp every `live.*` message with the run it came from
(`"session": "3f2a9c1d"`, a new one for each replay or live connection) and
announce each run on `live.session_start`. A consumer that keeps state per
session asks `SessionTracker.observe` about each message:

- "same": the message belongs to the session being shown;
- "new": a later session has started: drop the old state, then apply it;
- "old": it belongs to a session that has since been replaced. This happens
  when a consumer catches up on retained messages, which the broker delivers
  in order within a topic but not across topics. Such a message is too late
  for the state being shown.

A session is later when its message was published after the last message seen
from the current one (the broker's clock), so replays in turn are told apart
however their topics interleave on the way in. Messages without the stamp
(recordings made by hand, older producers) count as the current session.
"""

from __future__ import annotations

from typing import Any, Literal

SESSION_START_TOPIC = "live.session_start"
Seen = Literal["same", "new", "old"]


def session_of(payload: Any) -> str | None:
    """The producer run a `live.*` payload came from, if it says."""
    session = payload.get("session") if isinstance(payload, dict) else None
    return session if isinstance(session, str) and session else None


class SessionTracker:
    def __init__(self) -> None:
        self.current: str | None = None
        self.last_us = 0  # broker time of the latest message of the current session

    def observe(self, payload: Any, timestamp_us: int) -> Seen:
        session = session_of(payload)
        if session is None or session == self.current:
            self.last_us = max(self.last_us, timestamp_us)
            return "same"
        if self.current is not None and timestamp_us < self.last_us:
            return "old"
        self.current, self.last_us = session, timestamp_us
        return "new"
