"""Who a car is, for an alert: live timing's driver list and each rig's game participants.

Alerts about one car (a tyre, a brake, an engine) name the driver when the source
has said who it is: `live.DriverList` gives each racing number its three-letter
code, `game.participants` (of each rig) each car index its name. Until then, and for
anything else, a car is `Car N`. Sans-I/O: messages in, names out.
"""

from __future__ import annotations

from typing import Any

from f1vocab.game.topics import game_packet_of
from f1vocab.state import apply

DRIVER_LIST = "live.DriverList"
PARTICIPANTS = "participants"
MAX_CARS = 64  # per rig: the game has at most 24 slots


class Drivers:
    def __init__(self) -> None:
        self._live: dict[str, Any] = {}  # merged DriverList: number -> {Tla, FullName, ...}
        self._game: dict[str | None, list[str]] = {}  # rig (None: the one) -> names by index

    def observe(self, topic: str, data: Any) -> None:
        if not isinstance(data, dict):
            return
        if topic == DRIVER_LIST and isinstance(data.get("data"), dict):
            self._live = apply(self._live, data["data"], snapshot=bool(data.get("snapshot")))
            return
        game = game_packet_of(topic)
        if game is not None and game[1] == PARTICIPANTS:
            rig = game[0]
            cars = data.get("participants")
            active = data.get("num_active_cars", 0)
            if isinstance(cars, list) and isinstance(active, int):
                self._game[rig] = [str(car.get("name") or "") if isinstance(car, dict) else ""
                                   for car in cars[:min(active, MAX_CARS)]]

    def name(self, topic: str, key: str) -> str:
        """The driver of the car `key` starts with, in `topic`'s source; `Car N` if unknown."""
        car = key.split(".")[0]
        if topic.startswith("live."):
            entry = self._live.get(car)
            tla = entry.get("Tla") if isinstance(entry, dict) else None
            return str(tla) if tla else f"Car {car}"
        game = game_packet_of(topic)
        if game is not None and car.isdigit():
            names = self._game.get(game[0], [])
            index = int(car)
            if index < len(names) and names[index]:
                return names[index]
        return f"Car {car}"

    def patterns(self) -> tuple[str, ...]:
        """What to read to know the names."""
        return (DRIVER_LIST, f"game.{PARTICIPANTS}", f"game.*.{PARTICIPANTS}")
