"""Completed laps, one shape whatever the source: what `laps.*` topics carry.

    laps.live               F1 live timing (a live connection or a replay)
    laps.game[.<rig>]       the F1 game's cars (`slipstream udp`; with a rig, its own)
    {"source": "live", "session": "3f2a9c1d", "rig": null, "number": "44",
     "code": "HAM", "name": "Lewis HAMILTON", "lap": 9, "time": "1:25.606",
     "time_ms": 85606, "sectors_ms": [28123, 30172, 27311], "track": "Silverstone"}

Derived once, where the data comes in (producer/livetiming/publisher.py, the game
bridge producer/game/bridge.py), so a
consumer that wants "each driver's laps" reads one message per lap instead of
digging through TimingData's partial updates. `LiveLapTracker` is sans-I/O: feed it
the merged state and each update, get the laps they complete.
"""

from __future__ import annotations

from typing import Any

from f1vocab.game.names import track_name
from f1vocab.timing import LapTimeError, format_lap_time, lap_seconds, parse_lap_time

LIVE_LAPS_TOPIC = "laps.live"


class LiveLapTracker:
    """Laps completed in one live-timing session, from TimingData updates."""

    def __init__(self) -> None:
        self._laps_seen: dict[str, int] = {}  # racing number -> NumberOfLaps so far
        self._timed: set[tuple[str, int]] = set()  # (number, lap) already given a time

    def completed(self, update: dict[str, Any], timing: dict[str, Any],
                  drivers: dict[str, Any], track: str | None) -> list[dict[str, Any]]:
        """The laps one TimingData update completes. A timed lap's time comes with the
        NumberOfLaps that counts it; an in-lap's at the pit-lane line, before the count
        moves, so it is the next lap; F1 rarely sends a lap's time twice: the first
        counts. `timing` and `drivers` are the merged states after the update."""
        laps = []
        for number, line in (update.get("Lines") or {}).items():
            if not isinstance(line, dict):
                continue
            count = line.get("NumberOfLaps")
            if isinstance(count, int):
                self._laps_seen[number] = count
            last = line.get("LastLapTime")
            text = last.get("Value") if isinstance(last, dict) else None
            if not text:
                continue
            lap = count if isinstance(count, int) else self._laps_seen.get(number, 0) + 1
            if (number, lap) in self._timed:
                continue
            try:
                time_ms = parse_lap_time(text)
            except LapTimeError:
                continue
            self._timed.add((number, lap))
            merged = (timing.get("Lines") or {}).get(number) or {}
            entry = drivers.get(number)
            driver: dict[str, Any] = entry if isinstance(entry, dict) else {}
            laps.append({"source": "live", "rig": None, "number": number, "valid": True,
                         "player": False,
                         "code": driver.get("Tla"), "name": driver.get("FullName"),
                         "lap": lap, "time": text, "time_ms": time_ms,
                         "sectors_ms": _sectors_ms(merged.get("Sectors")), "track": track})
        return laps


def _sectors_ms(sectors: Any) -> list[int | None]:
    values = list(sectors.values()) if isinstance(sectors, dict) else \
        sectors if isinstance(sectors, list) else []
    out: list[int | None] = []
    for sector in values[:3]:
        text = sector.get("Value") if isinstance(sector, dict) else None
        seconds = lap_seconds(text) if text else None
        out.append(round(seconds * 1000) if seconds is not None else None)
    return out + [None] * (3 - len(out))


def track_of(session_info: Any) -> str | None:
    """The circuit's short name from SessionInfo's state."""
    if not isinstance(session_info, dict):
        return None
    meeting = session_info.get("Meeting") or {}
    circuit = meeting.get("Circuit") or {}
    name = circuit.get("ShortName") or meeting.get("Location")
    return str(name) if name else None


GAME_LAPS_TOPIC = "laps.game"  # and laps.game.<rig> for a rig's (f1vocab/game/topics.py)


def game_laps_topic(rig: str | None) -> str:
    return f"{GAME_LAPS_TOPIC}.{rig}" if rig else GAME_LAPS_TOPIC


def rig_of_game_laps(topic: str) -> str | None:
    """The rig a `laps.game[.<rig>]` topic names (None: the one rig): game_laps_topic's
    inverse, so a consumer takes the rig from the topic, which permissions bind."""
    return topic.removeprefix(GAME_LAPS_TOPIC).removeprefix(".") or None


class GameLapTracker:
    """Laps the game's cars complete, from one rig's `lap_data`, named by its
    `participants` and placed by its `session` (the `laps.game` shape: `number` is
    the car index, `code` none, `valid` false when the game flagged the lap, `player`
    true for the car the rig's player drives)."""

    def __init__(self, rig: str | None = None) -> None:
        self.rig = rig
        self.track: str | None = None
        self.names: list[str] = []
        self._session_uid: int | None = None
        self._lap_num: dict[int, int] = {}  # car index -> the lap in progress
        self._invalid: dict[int, bool] = {}  # car index -> that lap was flagged

    def observe(self, packet: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        """The laps one decoded packet completes (only lap_data completes any)."""
        uid = data["header"]["session_uid"]
        if uid != self._session_uid:  # a new session: its laps start again
            self._session_uid = uid
            self._lap_num.clear()
            self._invalid.clear()
        if packet == "session":
            self.track = track_name(data["track_id"])
        elif packet == "participants":
            active = data["participants"][:data["num_active_cars"]]
            self.names = [str(car["name"]) for car in active]
        elif packet == "lap_data":
            return self._laps(data)
        return []

    def _laps(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        laps = []
        player = data["header"]["player_car_index"]
        for index, car in enumerate(data["lap_data"]):
            if not car["car_position"]:
                continue  # an empty slot
            number, invalid = car["current_lap_num"], bool(car["current_lap_invalid"])
            before = self._lap_num.get(index)
            if before is not None and number > before and car["last_lap_time_in_ms"]:
                time_ms = car["last_lap_time_in_ms"]
                laps.append({
                    "source": "game", "rig": self.rig, "number": str(index), "code": None,
                    "name": self.names[index] if index < len(self.names) else None,
                    "lap": before, "time": format_lap_time(time_ms), "time_ms": time_ms,
                    "sectors_ms": [None, None, None], "track": self.track,
                    "session": str(self._session_uid), "valid": not self._invalid.get(index),
                    "player": index == player})
            if before is not None and number > before:
                self._invalid[index] = invalid
            else:
                self._invalid[index] = self._invalid.get(index, False) or invalid
            self._lap_num[index] = number
        return laps
