"""The standings of a sim-racing event, folded from `standings.*` messages (sans-I/O).

Every change to the standings is a message on the broker, and the table is
what those messages add up to, applied in the order the broker gives them.
So every consumer sees each change, a restarted standings consumer rebuilds
the table from the broker, and with `--data-dir` the event survives a
restart of the broker too.

    standings.driver        {"id", "name"}              add a driver, or rename one
    standings.lap           {"id", "driver", "name",    a timed lap (from the game,
                             "track", "lap_ms",          live timing or the admin page);
                             "source"}                   it adds a driver not yet known
    standings.lap_struck    {"id", "struck"}            strike a lap (a typo, a cut), or
                                                        restore it ("struck": false)
    standings.lap_removed   {"id"}                      strike a lap (before lap_struck)
    standings.driver_removed {"id"}                     take a driver and their laps out
    standings.track         {"track"}                   where the event is now
    standings.driving       {"driver", "rig"}           who is at the wheel of the
                                                        game's player car (or null),
                                                        of that rig (no rig: the one)

`standings.table`, the table itself, is published for others to show and is
not applied here. Each driver's standing is their single fastest lap on the
track; equal times go to whoever set theirs first, as in F1.

The broker keeps order within a topic, not across topics, so each message
stands on its own: a lap names its driver, a struck lap stays struck if its
lap arrives after, and a rename sticks whichever comes first.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from f1vocab.timing import MAX_LAP_MS, format_lap_time

DEFAULT_POINTS = (25, 18, 15, 12, 10, 8, 6, 4, 2, 1)
SOURCES = ("game", "live", "manual")
FACTS = ("standings.driver", "standings.lap", "standings.lap_struck", "standings.lap_removed",
         "standings.track", "standings.driving", "standings.driver_removed")
# (what the table is folded from; standings.table, the table itself, is not)
MAX_DRIVERS = 1_000
LAPS_KEPT = 200  # per driver and track, struck or not; past it, the slowest go
IDS_REMEMBERED = 100_000  # lap ids kept to ignore a lap published twice, and strikes
MAX_NAME = 64


class StandingsError(ValueError):
    """A `standings.*` message that cannot be applied; the text says why."""


@dataclass(frozen=True)
class Lap:
    id: str
    driver: str
    track: str
    lap_ms: int
    source: str
    set_at_us: int  # the broker's clock when the lap was published: ties go to the earlier

    @property
    def order(self) -> tuple[int, int, str]:
        return (self.lap_ms, self.set_at_us, self.id)


def parse_points(text: str) -> tuple[int, ...]:
    """`--points 25,18,15`: points for 1st, 2nd, ...; the rest score none."""
    try:
        points = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise StandingsError(f"--points {text!r} is not a comma-separated list of whole "
                             "numbers (e.g. 25,18,15,12,10,8,6,4,2,1)") from None
    if not points or any(p < 0 for p in points):
        raise StandingsError(f"--points {text!r}: give at least one, none negative")
    return points


def clean_name(value: Any, what: str = "name") -> str:
    if not isinstance(value, str) or not value.strip():
        raise StandingsError(f"a driver's {what} must be non-empty text")
    name = " ".join(value.split())
    if len(name) > MAX_NAME:
        raise StandingsError(f"a driver's {what} is at most {MAX_NAME} characters "
                             f"({len(name)} given)")
    # Control and format characters (NUL, U+202E and the other bidi overrides, zero
    # widths) would make a name look like another, or hide what it says.
    hidden = [char for char in name if unicodedata.category(char) in ("Cc", "Cf")]
    if hidden:
        raise StandingsError(f"a driver's {what} may not hold control or direction "
                             f"characters (U+{ord(hidden[0]):04X})")
    return name


# A spreadsheet runs a cell that starts with one of these (OWASP, "CSV Injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(text: str) -> str:
    """A cell a spreadsheet shows as text, never runs: a leading ' when it could be a
    formula (OWASP's advice)."""
    return "'" + text if text.startswith(FORMULA_START) else text


class Standings:
    def __init__(self, points: tuple[int, ...] = DEFAULT_POINTS) -> None:
        self.points = points
        self.drivers: dict[str, str] = {}  # id -> name, in the order they were added
        self.laps: dict[str, dict[str, list[Lap]]] = {}  # track -> driver -> best first
        self.track: str | None = None
        self.driving: str | None = None  # at the wheel of the one rig's player car
        self.driving_by_rig: dict[str, str] = {}  # rig -> driver, with several rigs
        self.last_lap: Lap | None = None  # the latest lap applied: the pages say it landed
        self._removed: set[str] = set()  # drivers taken out: their later laps stay out
        self.version = 0  # counts the changes applied: the page asks "anything new?"
        self._lap_ids: dict[str, None] = {}  # lap ids applied, oldest first
        self._struck: dict[str, None] = {}  # lap ids struck (their lap here yet or not)
        self._facts: dict[str, Callable[[dict[str, Any], int], bool]] = dict(zip(FACTS, (
            self._driver, self._lap, self._lap_struck, self._lap_removed, self._track,
            self._driving, self._driver_removed),
            strict=True))

    # --- applying messages -----------------------------------------------------------

    def apply(self, topic: str, data: Any, set_at_us: int = 0) -> bool:
        """Apply one `standings.*` message; True if it changed the standings.

        Raises StandingsError for a message that is not what the topic holds.
        """
        fact = self._facts.get(topic)
        if fact is None:
            return False  # standings.table, or a topic from a newer version
        if not isinstance(data, dict):
            raise StandingsError(f"{topic}: expected a map, got {type(data).__name__}")
        changed = fact(data, set_at_us)
        if changed:
            self.version += 1
        return changed

    def _driver(self, data: dict[str, Any], set_at_us: int) -> bool:
        driver = _text(data, "id", "standings.driver")
        name = clean_name(data.get("name"))
        if self.drivers.get(driver) == name:
            return False
        # Names are unique where changes are applied, so two adds racing each other (or
        # a second standings app) cannot make two drivers of one name: the first wins.
        for known, known_name in self.drivers.items():
            if known != driver and known_name.casefold() == name.casefold():
                raise StandingsError(f"standings.driver: there is already a driver named "
                                     f"{known_name!r}")
        self._room_for(driver)
        self.drivers[driver] = name
        return True

    def _room_for(self, driver: str) -> None:
        if driver not in self.drivers and len(self.drivers) >= MAX_DRIVERS:
            raise StandingsError(f"the standings hold at most {MAX_DRIVERS:,} drivers: "
                                 f"{driver!r} is one too many")

    def _lap(self, data: dict[str, Any], set_at_us: int) -> bool:
        lap_ms = data.get("lap_ms")
        if not isinstance(lap_ms, int) or not 0 < lap_ms < MAX_LAP_MS:
            raise StandingsError(f"standings.lap: lap_ms {lap_ms!r} is not a lap time in "
                                 "milliseconds")
        source = data.get("source")
        if source not in SOURCES:
            raise StandingsError(f"standings.lap: source {source!r} is not one of "
                                 f"{', '.join(SOURCES)}")
        lap = Lap(_text(data, "id", "standings.lap"), _text(data, "driver", "standings.lap"),
                  _text(data, "track", "standings.lap"), lap_ms, source, set_at_us)
        if lap.id in self._lap_ids or lap.driver in self._removed:
            return False  # published twice (a restart re-reading its source), or taken out
        if lap.driver not in self.drivers:  # the name a rename gives sticks, so only now
            self._room_for(lap.driver)
            self.drivers[lap.driver] = clean_name(data.get("name"))
        _bounded_add(self._lap_ids, lap.id)
        kept = self.laps.setdefault(lap.track, {}).setdefault(lap.driver, [])
        kept.append(lap)
        kept.sort(key=lambda known: known.order)
        if len(kept) > LAPS_KEPT:
            del kept[LAPS_KEPT:]
            if lap not in kept:
                return False  # slower than every one kept
        if lap.id not in self._struck:  # (struck before it came: it stays struck)
            self.last_lap = lap
        return True

    def _lap_struck(self, data: dict[str, Any], set_at_us: int) -> bool:
        """Strike a lap, or restore one struck. The lap may come after its strike (another
        topic): it is then kept, struck."""
        lap_id = _text(data, "id", "standings.lap_struck")
        struck = data.get("struck")
        if not isinstance(struck, bool):
            raise StandingsError(f"standings.lap_struck: struck {struck!r} is not true or "
                                 "false")
        return self._strike(lap_id, struck)

    def _lap_removed(self, data: dict[str, Any], set_at_us: int) -> bool:
        return self._strike(_text(data, "id", "standings.lap_removed"), True)

    def _strike(self, lap_id: str, struck: bool) -> bool:
        if struck == (lap_id in self._struck):
            return False
        if struck:
            _bounded_add(self._struck, lap_id)
            if self.last_lap is not None and self.last_lap.id == lap_id:
                self.last_lap = None
        else:
            del self._struck[lap_id]
        return self.lap(lap_id) is not None  # a change only if the lap is here

    def lap(self, lap_id: str) -> Lap | None:
        for by_driver in self.laps.values():
            for kept in by_driver.values():
                for lap in kept:
                    if lap.id == lap_id:
                        return lap
        return None

    def struck(self, lap_id: str) -> bool:
        return lap_id in self._struck

    def _driver_removed(self, data: dict[str, Any], set_at_us: int) -> bool:
        """A driver out of the event (added by mistake, left): their laps go with them,
        and a lap of theirs that arrives later stays out."""
        driver = _text(data, "id", "standings.driver_removed")
        self._removed.add(driver)
        if driver not in self.drivers:
            return False
        del self.drivers[driver]
        for by_driver in self.laps.values():
            by_driver.pop(driver, None)
        if self.driving == driver:
            self.driving = None
        self.driving_by_rig = {r: d for r, d in self.driving_by_rig.items() if d != driver}
        if self.last_lap is not None and self.last_lap.driver == driver:
            self.last_lap = None
        return True

    def _track(self, data: dict[str, Any], set_at_us: int) -> bool:
        track = _text(data, "track", "standings.track")
        if track == self.track:
            return False
        self.track = track
        return True

    def _driving(self, data: dict[str, Any], set_at_us: int) -> bool:
        driver, rig = data.get("driver"), data.get("rig")
        if driver is not None and not isinstance(driver, str):
            raise StandingsError(f"standings.driving: driver {driver!r} is not a driver id")
        if rig is not None and (not isinstance(rig, str) or not rig):
            raise StandingsError(f"standings.driving: rig {rig!r} is not a rig's name")
        if driver == self.driver_at(rig):
            return False
        if rig is None:
            self.driving = driver
        elif driver is None:
            del self.driving_by_rig[rig]
        else:
            self.driving_by_rig[rig] = driver
        return True

    def driver_at(self, rig: str | None) -> str | None:
        """Who is at the wheel of `rig`'s player car (None: of the one rig's)."""
        return self.driving if rig is None else self.driving_by_rig.get(rig)

    def knows_lap(self, lap_id: str) -> bool:
        return lap_id in self._lap_ids

    def best_lap(self, driver: str, track: str) -> Lap | None:
        """The driver's fastest lap on the track that is not struck."""
        return next((lap for lap in self.laps.get(track, {}).get(driver, ())
                     if lap.id not in self._struck), None)

    def best(self, driver: str, track: str) -> int | None:
        lap = self.best_lap(driver, track)
        return lap.lap_ms if lap is not None else None

    def laps_of(self, driver: str, track: str | None = None) -> list[dict[str, Any]]:
        """Every lap kept of the driver on the track (default: the current one), in the
        order they were set: what the admin page lists, to strike or restore."""
        track = track if track is not None else self.track
        kept = self.laps.get(track or "", {}).get(driver, [])
        best = self.best_lap(driver, track or "")
        return [{"id": lap.id, "lap": format_lap_time(lap.lap_ms), "lap_ms": lap.lap_ms,
                 "source": lap.source, "set_at": _iso(lap.set_at_us),
                 "struck": lap.id in self._struck, "best": lap is best}
                for lap in sorted(kept, key=lambda lap: (lap.set_at_us, lap.id))]

    # --- reading ---------------------------------------------------------------------

    def rows(self, track: str | None = None) -> list[dict[str, Any]]:
        """The table for `track` (default: the current one): timed drivers by their
        fastest lap with gap and points, then the drivers without a time."""
        track = track if track is not None else self.track
        best = sorted((lap for driver in self.laps.get(track or "", {})
                       if (lap := self.best_lap(driver, track or "")) is not None),
                      key=lambda lap: lap.order)
        rows = []
        for place, lap in enumerate(best, 1):
            gap = lap.lap_ms - best[0].lap_ms
            rows.append({
                "position": place, "driver": lap.driver, "name": self.drivers[lap.driver],
                "lap_ms": lap.lap_ms, "lap": format_lap_time(lap.lap_ms),
                "gap": f"+{gap / 1000:.3f}" if place > 1 else "",
                "points": self.points[place - 1] if place <= len(self.points) else 0,
                "source": lap.source, "lap_id": lap.id,
                "set_at": _iso(lap.set_at_us)})
        timed = {row["driver"] for row in rows}
        rows += [{"position": None, "driver": driver, "name": name, "lap_ms": None,
                  "lap": "", "gap": "", "points": 0, "source": None, "lap_id": None,
                  "set_at": None}
                 for driver, name in self.drivers.items() if driver not in timed]
        return rows

    def view(self) -> dict[str, Any]:
        """What the pages show and `standings.table` carries."""
        return {"track": self.track, "tracks": sorted(self.laps), "version": self.version,
                "driving": self.driving, "driving_by_rig": dict(self.driving_by_rig),
                "points": list(self.points), "rows": self.rows(),
                "last_lap": self._last_lap_view()}

    def _last_lap_view(self) -> dict[str, Any] | None:
        """The lap that landed last, and where its driver stands now (for a notice like
        `Alice 1:27.402, P2`: a lap slower than the driver's best shows too)."""
        lap = self.last_lap
        if lap is None or lap.driver not in self.drivers:
            return None
        position = next((row["position"] for row in self.rows(lap.track)
                         if row["driver"] == lap.driver), None)
        return {"id": lap.id, "driver": lap.driver, "name": self.drivers[lap.driver],
                "lap": format_lap_time(lap.lap_ms), "track": lap.track, "source": lap.source,
                "position": position,
                "best": self.best(lap.driver, lap.track) == lap.lap_ms}

    def csv_text(self, track: str | None = None) -> str:
        """The table as CSV, fastest first, for a spreadsheet or the prize-giving."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["position", "driver", "lap_time", "lap_ms", "gap", "points",
                         "source", "set_at"])
        for row in self.rows(track):
            if row["position"] is not None:
                writer.writerow([row["position"], spreadsheet_text(row["name"]), row["lap"],
                                 row["lap_ms"],
                                 row["gap"], row["points"], row["source"], row["set_at"]])
        return out.getvalue()


def _bounded_add(ids: dict[str, None], lap_id: str) -> None:
    """Remember an id, forgetting the oldest past IDS_REMEMBERED."""
    ids[lap_id] = None
    if len(ids) > IDS_REMEMBERED:
        del ids[next(iter(ids))]


def _text(data: dict[str, Any], key: str, topic: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise StandingsError(f"{topic}: {key!r} must be non-empty text, got {value!r}")
    return value


def _iso(us: int) -> str:
    """Local time with its offset: what the organiser's clock said, and unambiguous."""
    return datetime.fromtimestamp(us / 1e6, UTC).astimezone().isoformat(
        timespec="milliseconds")
