"""A plausible F1 game session as specification-valid datagrams, without the game.

Cars lap Silverstone (5.891 km) at their own pace, a lap in about 1:27 to
1:32 as in the real thing: each driver a little slower than the one before,
each lap a little different (speed, gear, RPM, throttle and brake follow the
corners), tyres wear and heat, laps are timed, and a few events happen:
session start, fastest laps, a penalty, a safety car, session end with the
final classification. Sans-I/O: `frames()` yields each frame's datagrams;
the `udp-sim` command sends them. Deterministic for a given configuration
(the session uid seeds the variation), so tests can compare runs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from f1vocab.game.decoder import GameEncoder

TRACK_ID = 7  # Silverstone, in the game's track ids
TRACK_LENGTH_M = 5891.0
# The straight-line pace (m/s) that makes a lap of about 1:27.5 in the model below; each
# car after the first is PACE_STEP slower (about 0.25 s a lap), with some spread per driver
# and per lap.
FASTEST_PACE = 90.8
PACE_STEP = 0.26
DRIVER_SPREAD = 0.25  # m/s, per driver, fixed for the session
LAP_SPREAD = 0.004  # of the pace, per lap: about 0.35 s
AVERAGE_OF_PACE = 0.705  # the model's average speed over a lap, as a share of the pace (measured)
TEAMS = 10
# Made-up names that read like a grid's (never a real driver's): the standings and the
# alerts show them, so a rehearsal looks like race night.
NAMES = ("Alex Moreau", "Sam Okafor", "Jonas Lindqvist", "Mateo Ruiz", "Kenji Arai",
         "Luca Bianchi", "Noah Becker", "Ravi Menon", "Tom Whitlock", "Pierre Dubois",
         "Oskar Nowak", "Diego Castro", "Finn O'Brien", "Emil Hansen", "Marco Ferri",
         "Yuki Tanabe", "Leo Varga", "Hugo Laurent", "Aiden Clarke", "Nico Weber",
         "Ivan Petrov", "Samir Haddad")


@dataclass
class Car:
    index: int
    pace: float  # m/s on the straights, this lap
    driver_pace: float = 0.0  # the driver's own, around which each lap varies
    distance_m: float = 0.0  # total distance driven (negative: on the grid, behind the line)
    lap: int = 0  # 0 until the car first crosses the line
    lap_start_s: float = 0.0
    last_lap_ms: int = 0
    best_lap_ms: int = 0
    speed_ms: float = 0.0

    @property
    def lap_distance_m(self) -> float:
        return self.distance_m - (self.lap - 1) * TRACK_LENGTH_M


class SessionSimulator:
    def __init__(self, packet_format: int = 2026, cars: int = 20, hz: float = 60.0,
                 duration_s: float = 120.0, session_uid: int | None = None,
                 laps: int | None = None) -> None:
        self.encoder = GameEncoder(packet_format)
        self.max_cars = self.encoder.spec.max_cars
        if not 1 <= cars <= self.max_cars:
            raise ValueError(f"--cars {cars} is outside 1..{self.max_cars} for format "
                             f"{packet_format}")
        if laps is not None and laps < 1:
            raise ValueError(f"--laps {laps}: give at least 1")
        # The game gives every session its own uid, and lap ids are made from it
        # (consumer/standings): `udp-sim` draws a new one per run, tests pass none.
        self.session_uid = session_uid if session_uid is not None else \
            0x51_1957_2026 + packet_format
        self.random = random.Random(self.session_uid)
        self.cars = []
        for i in range(cars):
            pace = FASTEST_PACE - PACE_STEP * i + self.random.uniform(-1, 1) * DRIVER_SPREAD
            self.cars.append(Car(i, pace=pace, driver_pace=pace, distance_m=-10.0 - 8.0 * i))
        self.hz = hz
        self.laps = laps
        # With --laps, the session lasts until every car has done them; the events
        # (penalty, safety car) are placed on the time that should take.
        self.duration_s = duration_s if laps is None else laps * self.lap_estimate_s()
        self.frame = 0
        self.best_lap_ms = 0
        self.safety_car = False
        self.events: list[tuple[str, dict[str, Any]]] = []

    # --- the stream --------------------------------------------------------------

    def lap_estimate_s(self) -> float:
        """About how long the slowest car's lap takes (the model's average speed)."""
        slowest = min(car.driver_pace for car in self.cars)
        return TRACK_LENGTH_M / (slowest * AVERAGE_OF_PACE)

    def frames(self) -> Iterator[tuple[float, list[bytes]]]:
        """(session time s, that frame's datagrams), from start to the chequered flag:
        after `duration_s`, or with `laps`, once every car has timed that many."""
        frame = 0
        while True:
            self.frame = frame
            now = frame / self.hz
            if frame:
                self._advance(now)
            last = self._finished(frame)
            yield now, list(self._datagrams(now, last=last))
            if last:
                return
            frame += 1

    def _finished(self, frame: int) -> bool:
        if self.laps is None:
            return frame >= int(self.duration_s * self.hz)
        return all(car.lap > self.laps for car in self.cars)

    def _datagrams(self, now: float, last: bool) -> Iterator[bytes]:
        every = self._every
        if self.frame == 0:
            self.events.append(("SSTA", {}))
        if abs(now - self.duration_s * 0.3) < 0.5 / self.hz:
            self.events.append(("PENA", {"penalty_type": 4, "infringement_type": 7,
                                         "vehicle_idx": min(5, len(self.cars) - 1),
                                         "other_vehicle_idx": 255, "time": 5,
                                         "lap_num": max(1, self.cars[0].lap),
                                         "places_gained": 0}))
        for start, deployed in ((0.5, True), (0.6, False)):
            if abs(now - self.duration_s * start) < 0.5 / self.hz:
                self.safety_car = deployed
                self.events.append(("SCAR", {"safety_car_type": 1,
                                             "event_type": 0 if deployed else 2}))
        if last:
            self.events.append(("SEND", {}))
        for name, make in (("motion", self._motion), ("lap_data", self._lap_data),
                           ("car_telemetry", self._telemetry), ("car_status", self._status),
                           ("motion_ex", self._motion_ex), ("car_telemetry_2", self._blank)):
            if name in self.encoder.ids:
                yield self._encode(name, make, now)
        if every(0.1):
            yield self._encode("car_damage", self._damage, now)
        if every(1.0):
            yield self._encode("session", self._session, now)
            yield self._encode("session_history", self._history, now)
            if "lap_positions" in self.encoder.ids:
                yield self._encode("lap_positions", self._blank, now)
        if every(5.0):
            for name, make in (("participants", self._participants),
                               ("car_setups", self._blank), ("tyre_sets", self._blank)):
                yield self._encode(name, make, now)
        while self.events:
            code, details = self.events.pop(0)
            yield self._encode("event", lambda data, now, c=code, d=details: data.update(
                event_string_code=c, event_details=d), now)
        if last:
            yield self._encode("final_classification", self._classification, now)

    def _every(self, seconds: float) -> bool:
        return self.frame % max(1, round(seconds * self.hz)) == 0

    def _encode(self, name: str, fill: Any, now: float) -> bytes:
        data = self.encoder.blank(name)
        header = data["header"]
        header.update(session_uid=self.session_uid, session_time=now,
                      frame_identifier=self.frame, overall_frame_identifier=self.frame,
                      player_car_index=0, secondary_player_car_index=255,
                      game_major_version=1, game_minor_version=0, packet_version=1)
        if name == "event":
            data["event_string_code"], data["event_details"] = "SSTA", {}
        fill(data, now)
        return self.encoder.encode(name, data)

    # --- the physics, such as it is ---------------------------------------------------

    def _advance(self, now: float) -> None:
        step_s = 1 / self.hz
        for car in self.cars:
            corner = 0.5 + 0.5 * math.cos(car.lap_distance_m / TRACK_LENGTH_M * 2 * math.pi * 6)
            target = car.pace * (0.55 + 0.45 * corner) * (0.6 if self.safety_car else 1.0)
            car.speed_ms += (target - car.speed_ms) * min(1.0, 3 * step_s)
            car.distance_m += car.speed_ms * step_s
            if car.lap_distance_m >= TRACK_LENGTH_M:
                self._lap_done(car, now)

    def _lap_done(self, car: Car, now: float) -> None:
        car.lap += 1
        started, car.lap_start_s = car.lap_start_s, now
        if car.lap == 1:
            return  # crossing the line from the grid starts lap 1: nothing to time yet
        car.last_lap_ms = round((now - started) * 1000)
        car.pace = car.driver_pace * (1 + self.random.gauss(0, LAP_SPREAD))
        if not car.best_lap_ms or car.last_lap_ms < car.best_lap_ms:
            car.best_lap_ms = car.last_lap_ms
        if not self.best_lap_ms or car.last_lap_ms < self.best_lap_ms:
            self.best_lap_ms = car.last_lap_ms
            self.events.append(("FTLP", {"vehicle_idx": car.index,
                                         "lap_time": car.last_lap_ms / 1000}))

    def _order(self) -> list[Car]:
        return sorted(self.cars, key=lambda c: -c.distance_m)

    # --- filling in packets --------------------------------------------------------------

    def _blank(self, data: dict[str, Any], now: float) -> None:
        pass  # valid, all zeros: present so every packet type can be seen

    def _motion(self, data: dict[str, Any], now: float) -> None:
        for car, motion in zip(self.cars, data["car_motion_data"], strict=False):
            angle = car.lap_distance_m / TRACK_LENGTH_M * 2 * math.pi
            radius = TRACK_LENGTH_M / (2 * math.pi)
            motion.update(world_position_x=radius * math.cos(angle),
                          world_position_z=radius * math.sin(angle),
                          world_velocity_x=-car.speed_ms * math.sin(angle),
                          world_velocity_z=car.speed_ms * math.cos(angle), yaw=angle)

    def _motion_ex(self, data: dict[str, Any], now: float) -> None:
        car = self.cars[0]
        data.update(local_velocity_z=car.speed_ms, front_wheels_angle=0.0)

    def _lap_data(self, data: dict[str, Any], now: float) -> None:
        order = self._order()
        positions = {car.index: place for place, car in enumerate(order, 1)}
        for car, lap in zip(self.cars, data["lap_data"], strict=False):
            ahead = order[max(0, positions[car.index] - 2)]
            lap.update(**_delta("delta_to_race_leader", order[0], car),
                       **_delta("delta_to_car_in_front", ahead, car),
                       last_lap_time_in_ms=car.last_lap_ms,
                       current_lap_time_in_ms=round((now - car.lap_start_s) * 1000),
                       # Negative until the car first crosses the line, as in the game.
                       lap_distance=car.lap_distance_m if car.lap else car.distance_m,
                       total_distance=car.distance_m,
                       car_position=positions[car.index], current_lap_num=max(1, car.lap),
                       sector=min(2, int(car.lap_distance_m / TRACK_LENGTH_M * 3)),
                       grid_position=car.index + 1, driver_status=4, result_status=2)

    def _telemetry(self, data: dict[str, Any], now: float) -> None:
        for car, telemetry in zip(self.cars, data["car_telemetry_data"], strict=False):
            kmh = car.speed_ms * 3.6
            gear = max(1, min(8, int(kmh / 40) + 1))
            accelerating = car.speed_ms < car.pace * 0.9
            wear_heat = car.lap * 2
            telemetry.update(speed=round(kmh), throttle=1.0 if accelerating else 0.3,
                             brake=0.0 if accelerating else 0.4, gear=gear,
                             engine_rpm=round(6000 + (kmh % 40) / 40 * 5500), drs=0,
                             rev_lights_percent=min(100, round((kmh % 40) / 40 * 100)),
                             brakes_temperature=[400 + wear_heat + i * 5 for i in range(4)],
                             tyres_surface_temperature=[90 + wear_heat // 2 + i
                                                        for i in range(4)],
                             tyres_inner_temperature=[100 + wear_heat // 2 + i
                                                      for i in range(4)],
                             engine_temperature=105, tyres_pressure=[22.5, 22.5, 21.0, 21.0])

    def _status(self, data: dict[str, Any], now: float) -> None:
        for car, status in zip(self.cars, data["car_status_data"], strict=False):
            status.update(fuel_in_tank=max(0.0, 100 - max(0.0, car.distance_m) / 3000),
                          fuel_capacity=110.0, max_rpm=13000, idle_rpm=4000, max_gears=8,
                          actual_tyre_compound=18, visual_tyre_compound=17,
                          tyres_age_laps=max(0, car.lap - 1))

    def _damage(self, data: dict[str, Any], now: float) -> None:
        for car, damage in zip(self.cars, data["car_damage_data"], strict=False):
            # Faster than real tyres, so a few minutes of demo reach the interesting part.
            worn = max(0.0, car.distance_m) / TRACK_LENGTH_M * (30 + 4 * (car.index % 3))
            damage.update(tyres_wear=[min(100.0, worn + i) for i in range(4)])

    def _session(self, data: dict[str, Any], now: float) -> None:
        data.update(weather=0, track_temperature=34, air_temperature=24,
                    total_laps=self.laps or 10,
                    track_length=round(TRACK_LENGTH_M), session_type=15, track_id=TRACK_ID,
                    session_time_left=max(0, round(self.duration_s - now)),
                    session_duration=round(self.duration_s), pit_speed_limit=80,
                    safety_car_status=1 if self.safety_car else 0)

    def _history(self, data: dict[str, Any], now: float) -> None:
        car = self.cars[round(now) % len(self.cars)]
        data.update(car_idx=car.index, num_laps=max(0, car.lap - 1), num_tyre_stints=1)
        if car.last_lap_ms:
            data["lap_history_data"][0].update(lap_time_in_ms=car.last_lap_ms)

    def _participants(self, data: dict[str, Any], now: float) -> None:
        data["num_active_cars"] = len(self.cars)
        for car, participant in zip(self.cars, data["participants"], strict=False):
            participant.update(ai_controlled=1 if car.index else 0, driver_id=car.index,
                               team_id=car.index % TEAMS, race_number=car.index + 2,
                               name=NAMES[car.index % len(NAMES)])

    def _classification(self, data: dict[str, Any], now: float) -> None:
        data["num_cars"] = len(self.cars)
        for place, car in enumerate(self._order(), 1):
            data["classification_data"][car.index].update(
                position=place, num_laps=max(0, car.lap - 1), grid_position=car.index + 1,
                best_lap_time_in_ms=car.best_lap_ms, result_status=3)


def _delta(field: str, ahead: Car, car: Car) -> dict[str, int]:
    """The time gap between two cars, as the game splits it into minutes and milliseconds."""
    gap_ms = round(max(0.0, ahead.distance_m - car.distance_m) / (0.78 * car.pace) * 1000)
    return {f"{field}_minutes_part": min(255, gap_ms // 60_000),
            f"{field}_ms_part": gap_ms % 60_000}
