"""The live-timing views: timing tower, track status and session header.

Pure functions of merged live-timing state (see producer.livetiming.state):
each takes the state of the topics it needs and returns plain JSON-ready
data, so the page only lays it out and these are tested without a browser.
"""

from __future__ import annotations

from typing import Any

from f1vocab.state import as_list
from f1vocab.timing import lap_seconds

State = dict[str, Any]

# TrackStatus "Status" codes -> (level the page colours by, words to show).
TRACK_STATUS = {
    "1": ("green", "Track clear"),
    "2": ("yellow", "Yellow flag"),
    "4": ("sc", "Safety car"),
    "5": ("red", "Red flag"),
    "6": ("vsc", "Virtual safety car"),
    "7": ("vsc", "Virtual safety car ending"),
}


def track_status(state: State) -> dict[str, Any]:
    code = str(state.get("Status", ""))
    level, text = TRACK_STATUS.get(code, ("unknown", state.get("Message") or "No status yet"))
    return {"status": code, "message": state.get("Message", ""), "level": level, "text": text}


def session_header(info: State, status: State, weather: State, clock: State,
                   laps: State) -> dict[str, Any]:
    meeting = _dict(info.get("Meeting"))
    return {
        "meeting": meeting.get("Name", ""),
        "session": info.get("Name", ""),
        "location": meeting.get("Location", ""),
        "status": status.get("Status", ""),
        "remaining": clock.get("Remaining", ""),
        "lap": laps.get("CurrentLap"),
        "total_laps": laps.get("TotalLaps"),
        "air_temp": weather.get("AirTemp"),
        "track_temp": weather.get("TrackTemp"),
        "rainfall": weather.get("Rainfall"),
    }


def timing_tower(drivers: State, timing: State, app_data: State) -> list[dict[str, Any]]:
    """One row per driver, in position order (drivers without one at the bottom)."""
    lines: State = _dict(timing.get("Lines"))
    stints_by_driver: State = _dict(app_data.get("Lines"))
    numbers = [n for n in drivers if isinstance(drivers[n], dict)] or list(lines)
    rows = [_row(number, _dict(drivers.get(number)), _dict(lines.get(number)),
                 _dict(stints_by_driver.get(number)))
            for number in numbers]
    rows.sort(key=lambda row: (row["position"] is None, row["position"] or 0, row["line"]))
    _mark_fastest_lap(rows)
    return rows


def _mark_fastest_lap(rows: list[dict[str, Any]]) -> None:
    """F1 flags who set the fastest lap on the lap, not on anyone's best: derive it."""
    timed = [(seconds, row) for row in rows
             if (seconds := lap_seconds(row["best_lap"]["value"])) is not None]
    if timed:
        min(timed, key=lambda pair: pair[0])[1]["best_lap"]["colour"] = "purple"


def _row(number: str, driver: State, line: State, app: State) -> dict[str, Any]:
    # A practice or qualifying session gives the gap to the fastest lap, a race
    # the gap to the leader; the page shows whichever the session has.
    gap = line.get("GapToLeader", line.get("TimeDiffToFastest", ""))
    interval = _value(line.get("IntervalToPositionAhead", line.get("TimeDiffToPositionAhead")))
    colour = str(driver.get("TeamColour") or "888888").lstrip("#")
    return {
        "number": number,
        "position": _int(line.get("Position")),
        "line": _int(line.get("Line", driver.get("Line"))) or 99,
        "tla": driver.get("Tla") or number,
        "name": driver.get("FullName", ""),
        "team": driver.get("TeamName", ""),
        "colour": f"#{colour}",
        "gap": gap if isinstance(gap, str) else "",
        "interval": interval,
        "last_lap": _timed(line.get("LastLapTime")),
        "best_lap": _timed(line.get("BestLapTime")),
        "sectors": [_timed(sector) for sector in as_list(line.get("Sectors"))[:3]],
        "laps": line.get("NumberOfLaps"),
        "tyre": _tyre(app),
        "pit": _pit(line),
        "pit_stops": line.get("NumberOfPitStops", 0),
    }


def _timed(value: Any) -> dict[str, str]:
    """A lap or sector time with the colour F1 gives it: purple, green or plain."""
    item = _dict(value)
    colour = ("purple" if item.get("OverallFastest") else
              "green" if item.get("PersonalFastest") else "")
    return {"value": str(item.get("Value", "")), "colour": colour}


def _tyre(app: State) -> dict[str, Any] | None:
    stints = [s for s in as_list(app.get("Stints")) if isinstance(s, dict) and s.get("Compound")]
    if not stints:
        return None
    stint = stints[-1]
    return {"compound": stint["Compound"], "age": stint.get("TotalLaps"),
            "new": stint.get("New") == "true"}


def _pit(line: State) -> str:
    for flag, shown in (("Retired", "OUT"), ("Stopped", "STOPPED"), ("KnockedOut", "KO"),
                        ("InPit", "PIT"), ("PitOut", "PIT OUT")):
        if line.get(flag):
            return shown
    return ""


def _value(item: Any) -> str:
    if isinstance(item, dict):
        item = item.get("Value", "")
    return item if isinstance(item, str) else ""


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _dict(value: Any) -> State:
    return value if isinstance(value, dict) else {}
