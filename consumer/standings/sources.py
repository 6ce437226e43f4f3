"""Where timed laps come from: the game's lap data and F1's live timing (sans-I/O).

Each source turns the messages it reads into `SourceLap`s: a completed lap,
with a driver id, the name the source gives that driver, and the track. The
standings consumer publishes them as `standings.lap` messages. A lap's id is
the same however often it is read (a restart reading the retained data
again), so the standings count it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from f1vocab.laps import GameLapTracker
from f1vocab.state import apply
from f1vocab.timing import LapTimeError, parse_lap_time

Packet = dict[str, Any]
PENDING_MAX = 200  # laps held until the source names the driver and the track
# car index, lap number, ms, who drove, the game's session uid
Pending = tuple[int, int, int, "AtTheWheel | None", str]


@dataclass(frozen=True)
class SourceLap:
    id: str
    driver: str  # the standings' driver id: "game:NAME" or "live:NUMBER", or who is driving
    name: str
    lap_ms: int
    track: str

    @property
    def source(self) -> str:
        return self.id.partition(":")[0]  # "game" or "live"


@dataclass(frozen=True)
class AtTheWheel:
    """The driver the admin page says is driving the game's player car."""

    driver: str
    name: str


class GameLaps:
    """Completed, valid laps from `game.lap_data`, named by `game.participants` and
    placed by `game.session`, for the standings.

    When a lap is complete, and whether the game flagged it (a cut, a wall), is
    f1vocab/laps.py's `GameLapTracker`, the same that publishes `laps.game`; here a
    lap is held until the driver and the track are known, and goes to whoever is at
    the wheel when it is the player's car. With `player_only`, only the player's car
    is timed: one rig, drivers taking turns.
    """

    def __init__(self, player_only: bool = False, rig: str | None = None) -> None:
        self.player_only = player_only
        self.rig = rig  # with several rigs, whose game this is: in its drivers' ids and names
        self._tracker = GameLapTracker(rig)
        self._pending: list[Pending] = []

    @property
    def track(self) -> str | None:
        return self._tracker.track

    @property
    def names(self) -> list[str]:
        return [name or f"Car {index + 1}" for index, name in enumerate(self._tracker.names)]

    def session(self, packet: Packet) -> str:
        self._tracker.observe("session", packet)
        assert self.track is not None
        return self.track

    def participants(self, packet: Packet) -> list[SourceLap]:
        self._tracker.observe("participants", packet)
        return self._release()

    def lap_data(self, packet: Packet, at_the_wheel: AtTheWheel | None = None
                 ) -> list[SourceLap]:
        player = packet["header"]["player_car_index"]
        for lap in self._tracker.observe("lap_data", packet):
            index = int(lap["number"])
            if not lap["valid"] or (self.player_only and index != player):
                continue  # flagged by the game, or someone else's car
            wheel = at_the_wheel if index == player else None
            self._pending.append((index, lap["lap"], lap["time_ms"], wheel, lap["session"]))
        del self._pending[:-PENDING_MAX]
        return self._release()

    def _release(self) -> list[SourceLap]:
        """The held laps whose driver and track are known by now."""
        names, track = self.names, self.track
        if track is None or not names:
            return []
        laps: list[SourceLap] = []
        held: list[Pending] = []
        for pending in self._pending:
            index, lap_number, lap_ms, wheel, session = pending
            if wheel is None and index >= len(names):
                held.append(pending)
                continue
            driver, name = ((wheel.driver, wheel.name) if wheel is not None
                            else self._driver_of(names[index]))
            laps.append(SourceLap(f"game:{session}:{index}:{lap_number}", driver, name,
                                  lap_ms, track))
        self._pending = held
        return laps

    def _driver_of(self, name: str) -> tuple[str, str]:
        """A game driver's id and name: two rigs' "Player" are two drivers."""
        if self.rig is None:
            return f"game:{name}", name
        return f"game:{self.rig}:{name}", f"{name} ({self.rig})"


class LiveLaps:
    """Each driver's best lap from `live.TimingData`, named by `live.DriverList` and
    placed by `live.SessionInfo` (the circuit's short name)."""

    def __init__(self) -> None:
        self.track: str | None = None
        self.session = ""
        self._state: dict[str, dict[str, Any]] = {}
        self._best: dict[str, str] = {}  # racing number -> best lap text last seen

    def apply(self, topic: str, message: Any) -> list[SourceLap]:
        """Take one live-timing message; the new best laps it reveals."""
        update = message.get("data") if isinstance(message, dict) else None
        if not isinstance(update, dict):
            return []
        name = topic.removeprefix("live.")
        self._state[name] = apply(self._state.get(name, {}), update,
                                  snapshot=bool(message.get("snapshot")))
        if name == "SessionInfo":
            info = self._state[name]
            circuit = (info.get("Meeting") or {}).get("Circuit") or {}
            self.track = circuit.get("ShortName") or (info.get("Meeting") or {}).get("Location")
            self.session = str(info.get("Key") or info.get("Path") or "")
        return self._new_bests()

    def _new_bests(self) -> list[SourceLap]:
        lines = self._state.get("TimingData", {}).get("Lines")
        drivers = self._state.get("DriverList", {})
        if self.track is None or not isinstance(lines, dict):
            return []
        laps = []
        for number, line in lines.items():
            best = (line.get("BestLapTime") or {}).get("Value") if isinstance(line, dict) \
                else None
            driver = drivers.get(number)
            if not best or best == self._best.get(number) or not isinstance(driver, dict):
                continue  # no time yet, the same one, or not named yet (it will be)
            try:
                lap_ms = parse_lap_time(best)
            except LapTimeError:
                continue  # damaged: the next best lap will do
            self._best[number] = best
            name = driver.get("FullName") or driver.get("BroadcastName") or f"#{number}"
            laps.append(SourceLap(f"live:{self.session}:{number}:{lap_ms}", f"live:{number}",
                                  str(name), lap_ms, self.track))
        return laps
