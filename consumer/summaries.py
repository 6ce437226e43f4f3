"""One-line summaries of the messages people read most, for the printer.

Each known topic gets a function that says what a person wants to know in a
few words ("Yellow", "#44 P1 lap 9 1:25.606"); anything else is shown as
compact JSON. Pure functions of the message data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from consumer.api import json_text
from f1vocab.game.names import penalty_name, session_type_name, track_name
from f1vocab.game.topics import game_packet_of, game_topic
from f1vocab.state import as_list

Summary = Callable[[Any], str]


def track_status(data: dict[str, Any]) -> str:
    return f"{data.get('Message', '?')} (status {data.get('Status', '?')})"


def session_status(data: dict[str, Any]) -> str:
    return str(data.get("Status", "?"))


def session_info(data: dict[str, Any]) -> str:
    meeting = data.get("Meeting", {}) if isinstance(data.get("Meeting"), dict) else {}
    return f"{meeting.get('Name', '?')}, {data.get('Name', '?')} at {meeting.get('Location', '?')}"


def weather(data: dict[str, Any]) -> str:
    parts = [("air", "AirTemp", "°C"), ("track", "TrackTemp", "°C"),
             ("humidity", "Humidity", "%"), ("wind", "WindSpeed", " m/s"),
             ("rain", "Rainfall", "")]
    return " ".join(f"{label} {data[key]}{unit}" for label, key, unit in parts if key in data)


def race_control(data: dict[str, Any]) -> str:
    texts = [f"[{m.get('Category', '?')}] {m.get('Message', '')}"
             for m in as_list(data.get("Messages")) if isinstance(m, dict)]
    return " | ".join(texts) or "(no message)"


def timing(data: dict[str, Any]) -> str:
    """The changes that matter on the tower: positions, laps, sectors, pits."""
    parts = []
    for number, line in (data.get("Lines") or {}).items():
        if not isinstance(line, dict):
            continue
        bits = []
        if "Position" in line:
            bits.append(f"P{line['Position']}")
        if isinstance(line.get("NumberOfLaps"), int):
            bits.append(f"lap {line['NumberOfLaps']}")
        last = line.get("LastLapTime")
        if isinstance(last, dict) and last.get("Value"):
            bits.append(last["Value"])
        if line.get("InPit") is True:
            bits.append("in pit")
        elif line.get("PitOut") is True:
            bits.append("pit out")
        for index, sector in _sectors(line.get("Sectors")):
            bits.append(f"S{index + 1} {sector}")
        for index, segments in _segments(line.get("Sectors")):
            bits.append(f"S{index + 1} mini-sector {','.join(segments)}")
        for trap, speed in (line.get("Speeds") or {}).items():
            if isinstance(speed, dict) and speed.get("Value"):
                bits.append(f"{trap} {speed['Value']} km/h")
        if line.get("TimeDiffToFastest"):
            bits.append(f"+{line['TimeDiffToFastest']} to fastest")
        if bits:
            parts.append(f"#{number} {' '.join(bits)}")
    return " | ".join(parts) or f"{len(data.get('Lines') or {})} lines updated"


def _sectors(sectors: Any) -> list[tuple[int, str]]:
    found = []
    entries = sectors.items() if isinstance(sectors, dict) else enumerate(
        sectors if isinstance(sectors, list) else [])
    for index, sector in entries:
        if isinstance(sector, dict) and sector.get("Value"):
            found.append((int(index), str(sector["Value"])))
    return found


def _segments(sectors: Any) -> list[tuple[int, list[str]]]:
    """Mini-sector (segment) updates: F1's most frequent timing message."""
    if not isinstance(sectors, dict):
        return []
    return [(int(index), [str(int(key) + 1) for key in sector["Segments"]])
            for index, sector in sectors.items()
            if isinstance(sector, dict) and isinstance(sector.get("Segments"), dict)]


def drivers(data: dict[str, Any]) -> str:
    named = [f"#{number} {d['Tla']} ({d.get('TeamName', '?')})" for number, d in data.items()
             if isinstance(d, dict) and d.get("Tla")]
    return ", ".join(named) or f"{len(data)} drivers updated"


def stints(data: dict[str, Any]) -> str:
    parts = []
    for number, line in (data.get("Lines") or {}).items():
        for stint in as_list(line.get("Stints") if isinstance(line, dict) else None):
            if isinstance(stint, dict) and stint.get("Compound"):
                fresh = "new" if stint.get("New") == "true" else "used"
                parts.append(f"#{number} {stint['Compound']} {fresh}")
    return " | ".join(parts) or "stint laps updated"


def game_event(data: dict[str, Any]) -> str:
    details = data.get("event_details") or {}
    text = " ".join(f"{key}={value}" for key, value in details.items())
    if isinstance(details.get("penalty_type"), int):
        text += f" ({penalty_name(details['penalty_type'])})"
    return f"{data.get('event_string_code', '?')} {text}".strip()


def game_session(data: dict[str, Any]) -> str:
    return (f"{track_name(data['track_id'])}, {session_type_name(data['session_type'])}, "
            f"{data['total_laps']} laps, {data['session_time_left']} s left")


def game_player_car(array: str, fields: tuple[str, ...]) -> Summary:
    """The player's car of a per-car packet (the header says which one that is)."""
    def summary(data: dict[str, Any]) -> str:
        index = data["header"]["player_car_index"]
        car = data[array][index]
        return f"car {index}: " + " ".join(f"{name} {car[name]}" for name in fields)
    return summary


GAME: dict[str, Summary] = {
    "game.event": game_event,
    "game.session": game_session,
    "game.car_telemetry": game_player_car("car_telemetry_data",
                                          ("speed", "gear", "engine_rpm", "throttle", "brake")),
    "game.lap_data": game_player_car("lap_data", ("current_lap_num", "car_position",
                                                  "last_lap_time_in_ms", "lap_distance")),
    "game.car_damage": game_player_car("car_damage_data", ("tyres_wear",)),
    "game.car_status": game_player_car("car_status_data", ("fuel_in_tank", "tyres_age_laps")),
}


def alert(data: dict[str, Any]) -> str:
    return f"[{data.get('severity', '?')}] {data.get('message', '')} ({data.get('rule', '?')})"


LIVE: dict[str, Summary] = {
    "live.TrackStatus": track_status, "live.SessionStatus": session_status,
    "live.SessionInfo": session_info, "live.WeatherData": weather,
    "live.RaceControlMessages": race_control, "live.TimingData": timing,
    "live.DriverList": drivers, "live.TimingAppData": stints,
}


def session_start(data: dict[str, Any]) -> str:
    """live.session_start: a replay round or live connection begins (f1vocab/sessions.py)."""
    what = f"{data['source']} of {data['name']}" if data.get("name") else str(data["source"])
    start = f" from {data['start']}" if data.get("start") not in (None, "00:00:00") else ""
    return f"new session {data['session']}: {what}{start}"


def lap(data: dict[str, Any]) -> str:
    """laps.*: a completed lap (f1vocab/laps.py), the thing an F1 fan looks for."""
    who = data.get("code") or data.get("name") or data.get("number")
    sectors = " ".join(f"{ms / 1000:.3f}" for ms in data.get("sectors_ms") or [] if ms)
    return (f"{who} lap {data['lap']}: {data['time']}"
            + (f" ({sectors})" if sectors else "")
            + (f", rig {data['rig']}" if data.get("rig") else ""))


def summarise(topic: str, data: Any) -> str:
    """The one-line summary of a message (compact JSON for topics without one)."""
    game = game_packet_of(topic)
    if game is not None:
        topic = game_topic(game[1])  # one rig's packet reads like another's
    try:
        if topic.startswith("laps.") and isinstance(data, dict):
            return lap(data)
        if topic.startswith("alerts.") and isinstance(data, dict):
            return alert(data)
        if topic == "live.session_start" and isinstance(data, dict):
            return session_start(data)
        if topic == "game.raw" and isinstance(data, bytes):
            return f"{len(data)} bytes"
        if topic in GAME and isinstance(data, dict):
            return GAME[topic](data)
        summary = LIVE.get(topic)
        if summary is not None and isinstance(data, dict) and isinstance(data.get("data"), dict):
            text = summary(data["data"])
            return f"snapshot: {text}" if data.get("snapshot") else text
    except (TypeError, ValueError, AttributeError, KeyError):
        pass  # an unexpected shape: fall back to the data itself
    return json_text(data)
