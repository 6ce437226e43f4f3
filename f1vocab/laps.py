"""Completed laps, one shape whatever the source: what `laps.*` topics carry.

    laps.live               F1 live timing (a live connection or a replay)
    {"source": "live", "session": "3f2a9c1d", "rig": null, "number": "44",
     "code": "HAM", "name": "Lewis HAMILTON", "lap": 9, "time": "1:25.606",
     "time_ms": 85606, "sectors_ms": [28123, 30172, 27311], "track": "Silverstone"}

Derived once, where the data comes in (producer/livetiming/publisher.py), so a
consumer that wants "each driver's laps" reads one message per lap instead of
digging through TimingData's partial updates. `LiveLaps` is sans-I/O: feed it
the merged state and each update, get the laps they complete.
"""

from __future__ import annotations

from typing import Any

from f1vocab.timing import LapTimeError, lap_seconds, parse_lap_time

LIVE_LAPS_TOPIC = "laps.live"


class LiveLaps:
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
            laps.append({"source": "live", "rig": None, "number": number,
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
