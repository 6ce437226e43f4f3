"""Where timed laps come from: the game's laps and F1's live timing (sans-I/O).

Each source turns the messages it reads into `SourceLap`s: a completed lap,
with a driver id, the name the source gives that driver, and the track. The
standings consumer publishes them as `standings.lap` messages. A lap's id is
the same however often it is read (a restart reading the retained data
again), so the standings count it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from f1vocab.state import apply
from f1vocab.timing import LapTimeError, parse_lap_time


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
    """Completed, valid laps from `laps.game` and `laps.game.<rig>`, for the standings.

    The game bridge derives each completed lap once, where the datagrams come in
    (f1vocab/laps.py: when a lap is complete, whether the game flagged it, the
    driver's name, the track); here each becomes a standings lap of the right
    driver: the player's car's laps go to whoever is at that rig's wheel. With
    `player_only`, only the player's car is timed (drivers taking turns at a rig).
    A restarted standings consumer reads these few laps again, not the telemetry.
    """

    def __init__(self, player_only: bool = False) -> None:
        self.player_only = player_only

    def lap(self, lap: dict[str, Any], rig: str | None,
            at_the_wheel: AtTheWheel | None = None) -> SourceLap | None:
        """The standings lap one `laps.game[.<rig>]` message makes (`rig` from its topic,
        which the broker's permissions bind, not from the message), or None: flagged by
        the game, not the player's car with `player_only`, or on no known track.
        Raises ValueError for a message that is not a lap."""
        try:
            player, valid, track = bool(lap["player"]), bool(lap["valid"]), lap["track"]
            index, number, lap_ms = int(lap["number"]), int(lap["lap"]), int(lap["time_ms"])
            session, name = str(lap["session"]), lap["name"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a laps.game lap ({type(exc).__name__}: {exc})") from None
        if not valid or (self.player_only and not player) or not isinstance(track, str):
            return None
        if at_the_wheel is not None and player:
            driver, shown = at_the_wheel.driver, at_the_wheel.name
        else:
            driver, shown = _driver_of(rig, str(name) if name else f"Car {index + 1}")
        return SourceLap(f"game:{session}:{index}:{number}", driver, shown, lap_ms, track)


def _driver_of(rig: str | None, name: str) -> tuple[str, str]:
    """A game driver's id and name: two rigs' "Player" are two drivers."""
    if rig is None:
        return f"game:{name}", name
    return f"game:{rig}:{name}", f"{name} ({rig})"


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
