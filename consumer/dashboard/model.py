"""The dashboard's state, kept up to date message by message (sans-I/O).

`apply` takes one broker message and returns the events it makes (a race
control message, an alert, a game event), which go to every browser in
order. Each rig's game (`game.<rig>.*`, or `game.*` for a single rig) has
views of its own: `dashboard.game.<view>` for the single rig,
`dashboard.game.<rig>.<view>` for a named one, so the page shows a panel per
rig. State views (the timing tower, the track status, the player's car)
are not sent per message: `apply` marks them dirty, and the web side asks
`take_changed` for the new values a few times a second. That is the first
conflation: 17,000 timing updates make as many tower values as there are
refreshes, not 17,000.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from consumer.dashboard import game, tower
from f1vocab.game.names import event_name, penalty_name
from f1vocab.game.topics import game_packet_of
from f1vocab.sessions import SESSION_START_TOPIC, SessionTracker
from f1vocab.state import apply, as_list

State = dict[str, Any]
Event = tuple[str, Any]  # (topic, data)

# Which view each source topic feeds. Views named like a source topic
# (live.TrackStatus) carry that topic's state; dashboard.* are derived.
FEEDS = {
    "live.DriverList": "dashboard.tower",
    "live.TimingData": "dashboard.tower",
    "live.TimingAppData": "dashboard.tower",
    "live.TrackStatus": "live.TrackStatus",
    "live.SessionInfo": "dashboard.session",
    "live.SessionStatus": "dashboard.session",
    "live.WeatherData": "dashboard.session",
    "live.ExtrapolatedClock": "dashboard.session",
    "live.LapCount": "dashboard.session",
}
# Which of a rig's views each game packet feeds.
GAME_FEEDS = {"car_telemetry": "car", "car_status": "car", "car_damage": "car",
              "lap_data": "leaderboard", "participants": "leaderboard", "session": "session"}
GAME_PACKETS = (*GAME_FEEDS, "event")  # what the dashboard reads of each rig
EVENT_FEEDS = ("live.RaceControlMessages", "alerts", "game.event")
MAX_RIGS = 16  # panels; a 17th rig's packets are not shown (and say so in the state)


class Rig:
    """One rig's game: the latest packet of each type (the game sends whole packets, so
    the latest is the state), and its player's lap trace."""

    def __init__(self, name: str | None, trace_bin_m: float) -> None:
        self.name = name
        self.packets: dict[str, State] = {}
        self.trace = game.LapTrace(trace_bin_m)

    def view_topic(self, view: str) -> str:
        return f"dashboard.game.{self.name}.{view}" if self.name else f"dashboard.game.{view}"

    def views(self) -> dict[str, Callable[[], Any]]:
        packets = self.packets
        return {
            self.view_topic("session"): lambda: game.session(packets.get("session")),
            self.view_topic("leaderboard"): lambda: game.leaderboard(
                packets.get("lap_data"), packets.get("participants")),
            self.view_topic("car"): lambda: game.player_car(
                packets.get("car_telemetry"), packets.get("car_status"),
                packets.get("car_damage")),
            self.view_topic("trace"): self.trace.view,
        }


class Dashboard:
    def __init__(self, history: int = 50, trace_bin_m: float = 10.0) -> None:
        self.live: dict[str, State] = {}  # "TimingData" -> its merged state
        self.rigs: dict[str | None, Rig] = {}  # None: the single rig's game.<packet>
        self.rigs_not_shown: set[str] = set()
        self.trace_bin_m = trace_bin_m
        self.standings: State | None = None  # the latest standings.table
        self.history: dict[str, deque[Event]] = {
            feed: deque(maxlen=history) for feed in EVENT_FEEDS}
        self.handled: Counter[str] = Counter()
        self._dirty: set[str] = set()
        self._race_control_seen = 0
        self.sessions = SessionTracker()
        self.views: dict[str, Callable[[], Any]] = {
            "dashboard.session": self._session,
            "live.TrackStatus": lambda: tower.track_status(self._state("TrackStatus")),
            "dashboard.tower": self._tower,
            "standings.table": lambda: self.standings,
        }
        self._rig(None)  # the single rig's views are there from the start, empty

    # --- taking messages ------------------------------------------------------------

    def apply(self, topic: str, data: Any, timestamp_us: int = 0) -> list[Event]:
        """Take one message (`timestamp_us`: the broker's clock when it was published);
        return the events to send now, in order."""
        self.handled[topic] += 1
        if not isinstance(data, dict):
            return []
        if topic.startswith("live."):
            seen = self.sessions.observe(data, timestamp_us)
            if seen == "old":
                return []  # a replaced session's, caught up late: not the one shown
            events = self._new_session(data) if seen == "new" else []
            if topic == SESSION_START_TOPIC:
                return events
            return events + self._apply_live(topic, data)
        if topic.startswith("alerts."):
            return self._remember("alerts", [(topic, data)])
        if topic.startswith("game."):
            return self._apply_game(topic, data)
        if topic == "standings.table":  # the standings consumer's whole table, each time
            self.standings = data
            self._dirty.add(topic)
        return []

    def _new_session(self, message: State) -> list[Event]:
        """Another replay (or live connection) started: the last one's timing, flags
        and race control go, and the pages are told to clear their feeds."""
        self.live.clear()
        self.history["live.RaceControlMessages"].clear()
        self._race_control_seen = 0
        self._dirty.update(view for topic, view in FEEDS.items() if topic.startswith("live."))
        return [(SESSION_START_TOPIC, {"session": self.sessions.current,
                                       "name": message.get("name", "")})]

    def _apply_live(self, topic: str, message: State) -> list[Event]:
        update = message.get("data")
        if not isinstance(update, dict):
            return []
        name = topic[5:]
        self.live[name] = apply(self.live.get(name, {}), update,
                                snapshot=bool(message.get("snapshot")))
        if topic in FEEDS:
            self._dirty.add(FEEDS[topic])
        if topic == "live.RaceControlMessages":
            return self._new_race_control(bool(message.get("snapshot")))
        return []

    def _new_race_control(self, snapshot: bool) -> list[Event]:
        # Messages are a list that updates extend by index, so the new ones are
        # those past the count already sent. A snapshot shorter than that is a
        # new session: start counting again.
        messages = as_list(self.live["RaceControlMessages"].get("Messages"))
        if snapshot and len(messages) < self._race_control_seen:
            self._race_control_seen = 0
        fresh = messages[self._race_control_seen:]
        self._race_control_seen = len(messages)
        return self._remember("live.RaceControlMessages", [
            ("live.RaceControlMessages", m) for m in fresh if isinstance(m, dict)])

    def _apply_game(self, topic: str, packet: State) -> list[Event]:
        which = game_packet_of(topic)
        if which is None:
            return []
        rig_name, name = which
        rig = self._rig(rig_name)
        if rig is None:
            return []
        rig.packets[name] = packet
        if name in GAME_FEEDS:
            self._dirty.add(rig.view_topic(GAME_FEEDS[name]))
        if name == "car_telemetry" and "lap_data" in rig.packets:
            rig.trace.add(*game.trace_sample(packet, rig.packets["lap_data"]))
            self._dirty.add(rig.view_topic("trace"))
        if name == "event":
            event = _readable_event(packet)
            if rig_name:
                event["rig"] = rig_name
            return self._remember("game.event", [(topic, event)])
        return []

    def _rig(self, name: str | None) -> Rig | None:
        """The rig's state and views, made when it first sends (at most MAX_RIGS)."""
        rig = self.rigs.get(name)
        if rig is None:
            if len(self.rigs) > MAX_RIGS:  # (the single rig's counts as none)
                self.rigs_not_shown.add(str(name))
                return None
            rig = self.rigs[name] = Rig(name, self.trace_bin_m)
            self.views.update(rig.views())
        return rig

    def _remember(self, feed: str, events: list[Event]) -> list[Event]:
        self.history[feed].extend(events)
        return events

    # --- reading views ------------------------------------------------------------

    def take_changed(self) -> dict[str, Any]:
        """The views changed since the last call, with their new values."""
        changed = {topic: self.views[topic]() for topic in self.views if topic in self._dirty}
        self._dirty.clear()
        return changed

    def all_views(self) -> dict[str, Any]:
        return {topic: view() for topic, view in self.views.items()}

    def recent_events(self) -> list[Event]:
        """The bounded history every new browser gets first, feed by feed, oldest first."""
        return [event for feed in EVENT_FEEDS for event in self.history[feed]]

    def _state(self, name: str) -> State:
        return self.live.get(name, {})

    def _tower(self) -> list[dict[str, Any]]:
        return tower.timing_tower(self._state("DriverList"), self._state("TimingData"),
                                  self._state("TimingAppData"))

    def _session(self) -> dict[str, Any]:
        return tower.session_header(*(self._state(name) for name in (
            "SessionInfo", "SessionStatus", "WeatherData", "ExtrapolatedClock", "LapCount")))


def _readable_event(packet: State) -> State:
    code = packet.get("event_string_code", "")
    details = packet.get("event_details") or {}
    text = event_name(code)
    if isinstance(details.get("penalty_type"), int):
        text += f": {penalty_name(details['penalty_type'])}"
    return {"code": code, "name": text, "details": details,
            "session_time": packet["header"]["session_time"]}
