"""The game views: the player's car, its traces over the lap, and a leaderboard.

Built from the latest decoded packets (`game.<packet>` data, see
docs/game-udp.md). The game sends full packets, never partial updates, so
the latest of each type is the state; only the lap trace keeps history.
"""

from __future__ import annotations

from typing import Any

from f1vocab.game.names import VISUAL_TYRE_COMPOUNDS, session_type_name, track_name

Packet = dict[str, Any]
TRACE_FIELDS = ("speed", "throttle", "brake", "gear", "engine_rpm")


class LapTrace:
    """The player's speed, throttle, brake, gear and RPM by lap distance.

    Samples are kept per `bin_m` metres of the lap (the latest sample in a bin
    wins), so a lap costs a few hundred points whatever the packet rate. When
    the lap number moves on, the finished lap becomes `previous`.
    """

    def __init__(self, bin_m: float = 10.0) -> None:
        self.bin_m = bin_m
        self.lap: int | None = None
        self.current: dict[int, tuple[float, ...]] = {}
        self.previous: dict[int, tuple[float, ...]] = {}
        self.previous_lap: int | None = None

    def add(self, lap: int, distance_m: float, sample: tuple[float, ...]) -> None:
        if distance_m < 0:  # before the line on the first lap: not on a lap yet
            return
        if lap != self.lap:
            if self.lap is not None and self.current:
                self.previous, self.previous_lap = self.current, self.lap
            self.current, self.lap = {}, lap
        self.current[int(distance_m // self.bin_m)] = sample

    def view(self) -> dict[str, Any]:
        return {"bin_m": self.bin_m, "fields": list(TRACE_FIELDS),
                "current": {"lap": self.lap, **_columns(self.current, self.bin_m)},
                "previous": {"lap": self.previous_lap, **_columns(self.previous, self.bin_m)}}


def _columns(samples: dict[int, tuple[float, ...]], bin_m: float) -> dict[str, list[float]]:
    bins = sorted(samples)
    columns = {"distance": [b * bin_m for b in bins]}
    for index, name in enumerate(TRACE_FIELDS):
        columns[name] = [samples[b][index] for b in bins]
    return columns


def player_index(packet: Packet) -> int:
    return int(packet["header"]["player_car_index"])


def trace_sample(telemetry: Packet, lap_data: Packet) -> tuple[int, float, tuple[float, ...]]:
    """(lap, lap distance, sample) of the player's car, from one telemetry packet."""
    index = player_index(telemetry)
    car = telemetry["car_telemetry_data"][index]
    lap = lap_data["lap_data"][index]
    return (lap["current_lap_num"], lap["lap_distance"],
            tuple(round(float(car[name]), 3) for name in TRACE_FIELDS))


def player_car(telemetry: Packet | None, status: Packet | None,
               damage: Packet | None) -> dict[str, Any] | None:
    """Speed, gear, RPM, pedals, tyre temperatures, wear and compound of the player's car."""
    if telemetry is None:
        return None
    index = player_index(telemetry)
    car = telemetry["car_telemetry_data"][index]
    view: dict[str, Any] = {
        "index": index,
        **{name: car[name] for name in ("speed", "throttle", "brake", "gear", "engine_rpm", "drs")},
        # Wheel arrays are in the game's order: rear left, rear right, front left, front right.
        "tyres_surface_temperature": car["tyres_surface_temperature"],
        "tyres_inner_temperature": car["tyres_inner_temperature"],
        "brakes_temperature": car["brakes_temperature"],
        "tyres_wear": None, "compound": None, "tyres_age_laps": None, "fuel_in_tank": None,
    }
    if damage is not None:
        view["tyres_wear"] = [round(w, 1) for w in damage["car_damage_data"][index]["tyres_wear"]]
    if status is not None:
        car_status = status["car_status_data"][index]
        compound = car_status["visual_tyre_compound"]
        view.update(compound=VISUAL_TYRE_COMPOUNDS.get(compound, str(compound)),
                    tyres_age_laps=car_status["tyres_age_laps"],
                    fuel_in_tank=round(car_status["fuel_in_tank"], 2))
    return view


def leaderboard(lap_data: Packet | None, participants: Packet | None) -> list[dict[str, Any]]:
    """Cars in race order with lap, last lap and gap to the leader."""
    if lap_data is None:
        return []
    names = participants["participants"] if participants is not None else []
    active = participants["num_active_cars"] if participants is not None else len(
        lap_data["lap_data"])
    player = player_index(lap_data)
    rows = []
    for index, lap in enumerate(lap_data["lap_data"][:active]):
        if not lap["car_position"]:  # an unused car slot
            continue
        gap_ms = lap["delta_to_race_leader_minutes_part"] * 60_000 + \
            lap["delta_to_race_leader_ms_part"]
        rows.append({
            "position": lap["car_position"], "index": index,
            "name": names[index]["name"] if index < len(names) else f"car {index}",
            "lap": lap["current_lap_num"], "last_lap_ms": lap["last_lap_time_in_ms"],
            "gap_ms": gap_ms, "pit": lap["pit_status"] != 0, "player": index == player,
        })
    rows.sort(key=lambda row: row["position"])
    return rows


def session(packet: Packet | None) -> dict[str, Any] | None:
    if packet is None:
        return None
    return {"track": track_name(packet["track_id"]),
            "session_type": session_type_name(packet["session_type"]),
            "total_laps": packet["total_laps"], "time_left_s": packet["session_time_left"],
            "safety_car_status": packet["safety_car_status"],
            "air_temperature": packet["air_temperature"],
            "track_temperature": packet["track_temperature"]}
