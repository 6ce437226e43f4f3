"""The SQLite writer's tables, and how a message becomes rows in them.

`messages` holds everything; the typed tables hold what people query most,
already unpacked: drivers, laps, track status and race control from live
timing; car telemetry and lap data per car per frame from the F1 game.
Every table is keyed so that writing the same message twice changes nothing.

The game's high-rate packets (motion, telemetry, lap data, ... at up to 60 Hz)
go to `game_packets` as the payload the broker forwarded, zlib-compressed:
about a fifteenth of their JSON, which made the database of a 4-minute demo
take hundreds of MB. `--game-json` keeps them as JSON in `messages` instead.
Live timing's laps are kept per session (a replay or live run, see
f1vocab/sessions.py), so a second session replayed into the same broker adds
its laps beside the first's.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Any

from broker.client import Message
from consumer.api import json_text
from f1vocab.game.topics import game_packet_of, game_topic
from f1vocab.sessions import SESSION_START_TOPIC, session_of
from f1vocab.state import apply
from f1vocab.timing import lap_seconds

SCHEMA_VERSION = 2  # PRAGMA user_version: 0 is the first schema (migrated on open)
# Game packets kept as JSON in `messages`: the few, low-rate ones people read whole.
GAME_JSON_TOPICS = frozenset({"game.event", "game.participants", "game.final_classification",
                              "game.lobby_info"})
SESSIONS_KEPT = 4  # live sessions whose merged state is kept, for laps arriving late

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    epoch INTEGER NOT NULL,          -- the broker run that numbered it
    topic TEXT NOT NULL,
    seq INTEGER NOT NULL,            -- per topic, from 1, within an epoch
    broker_ts_us INTEGER NOT NULL,   -- broker receive time, microseconds since 1970 UTC
    source_ts TEXT,                  -- the source's own UTC timestamp, when it has one
    data TEXT NOT NULL,              -- the payload as JSON (bytes as base64)
    PRIMARY KEY (epoch, topic, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (broker_ts_us);

CREATE TABLE IF NOT EXISTS drivers (
    racing_number TEXT PRIMARY KEY,
    tla TEXT, full_name TEXT, team TEXT, team_colour TEXT
);
CREATE TABLE IF NOT EXISTS game_packets (
    epoch INTEGER NOT NULL,
    topic TEXT NOT NULL,
    seq INTEGER NOT NULL,
    broker_ts_us INTEGER NOT NULL,
    payload BLOB NOT NULL,           -- zlib(msgpack, as published): see docs/sqlite.md
    PRIMARY KEY (epoch, topic, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS live_sessions (
    session TEXT PRIMARY KEY,        -- the run's id, as in each live message's "session"
    epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    broker_ts_us INTEGER NOT NULL,   -- when it started
    source TEXT,                     -- replay, live
    name TEXT                        -- what was replayed
);

CREATE TABLE IF NOT EXISTS live_laps (
    epoch INTEGER NOT NULL,
    session TEXT NOT NULL DEFAULT '',  -- live_sessions.session ('' before schema 1)
    racing_number TEXT NOT NULL,
    lap INTEGER NOT NULL,
    lap_time TEXT,                   -- as F1 shows it: M:SS.mmm
    lap_time_s REAL,
    sector1_s REAL, sector2_s REAL, sector3_s REAL,
    position INTEGER,
    broker_ts_us INTEGER NOT NULL,
    PRIMARY KEY (epoch, session, racing_number, lap)
);
CREATE TABLE IF NOT EXISTS track_status (
    epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    broker_ts_us INTEGER NOT NULL, source_ts TEXT,
    status TEXT, message TEXT,
    PRIMARY KEY (epoch, seq)
);
CREATE TABLE IF NOT EXISTS race_control (
    epoch INTEGER NOT NULL, seq INTEGER NOT NULL, item TEXT NOT NULL,
    broker_ts_us INTEGER NOT NULL,
    utc TEXT, category TEXT, flag TEXT, scope TEXT, sector INTEGER,
    racing_number TEXT, lap INTEGER, message TEXT,
    PRIMARY KEY (epoch, seq, item)
);
CREATE TABLE IF NOT EXISTS game_car_telemetry (
    epoch INTEGER NOT NULL, rig TEXT NOT NULL DEFAULT '', seq INTEGER NOT NULL,
    car_index INTEGER NOT NULL,
    session_uid INTEGER, frame INTEGER, session_time REAL,
    speed INTEGER, throttle REAL, steer REAL, brake REAL, gear INTEGER, engine_rpm INTEGER,
    drs INTEGER, engine_temperature INTEGER,
    brakes_temperature TEXT, tyres_surface_temperature TEXT,  -- JSON [RL, RR, FL, FR]
    PRIMARY KEY (epoch, rig, seq, car_index)
);
CREATE TABLE IF NOT EXISTS game_lap_data (
    epoch INTEGER NOT NULL, rig TEXT NOT NULL DEFAULT '', seq INTEGER NOT NULL,
    car_index INTEGER NOT NULL,
    session_uid INTEGER, frame INTEGER, session_time REAL,
    current_lap_num INTEGER, car_position INTEGER, lap_distance REAL, total_distance REAL,
    current_lap_time_ms INTEGER, last_lap_time_ms INTEGER, sector INTEGER,
    pit_status INTEGER,
    PRIMARY KEY (epoch, rig, seq, car_index)
);
CREATE INDEX IF NOT EXISTS game_lap_data_by_frame ON game_lap_data (session_uid, frame);
"""

INSERT_MESSAGE = "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?)"
INSERT_DRIVER = "INSERT OR REPLACE INTO drivers VALUES (?, ?, ?, ?, ?)"
INSERT_LAP = "INSERT OR IGNORE INTO live_laps VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_GAME_PACKET = "INSERT OR IGNORE INTO game_packets VALUES (?, ?, ?, ?, ?)"
INSERT_SESSION = "INSERT OR IGNORE INTO live_sessions VALUES (?, ?, ?, ?, ?, ?)"
INSERT_TRACK = "INSERT OR IGNORE INTO track_status VALUES (?, ?, ?, ?, ?, ?)"
INSERT_RACE_CONTROL = ("INSERT OR IGNORE INTO race_control VALUES "
                       "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
INSERT_GAME_TELEMETRY = ("INSERT OR IGNORE INTO game_car_telemetry VALUES "
                         "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
INSERT_GAME_LAP = ("INSERT OR IGNORE INTO game_lap_data VALUES "
                   "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")

# Schema 0 -> 1: live_laps gains `session` in its key (a table is rebuilt to change
# its key); game_packets and live_sessions are new and made by SCHEMA.
MIGRATE_0_TO_1 = """
ALTER TABLE live_laps RENAME TO live_laps_schema0;
CREATE TABLE live_laps (
    epoch INTEGER NOT NULL, session TEXT NOT NULL DEFAULT '', racing_number TEXT NOT NULL,
    lap INTEGER NOT NULL, lap_time TEXT, lap_time_s REAL,
    sector1_s REAL, sector2_s REAL, sector3_s REAL, position INTEGER,
    broker_ts_us INTEGER NOT NULL,
    PRIMARY KEY (epoch, session, racing_number, lap)
);
INSERT INTO live_laps SELECT epoch, '', racing_number, lap, lap_time, lap_time_s,
    sector1_s, sector2_s, sector3_s, position, broker_ts_us FROM live_laps_schema0;
DROP TABLE live_laps_schema0;
"""


# Schema 1 -> 2: the game tables gain `rig` in their key (game.<rig>.<packet>: two rigs'
# packets have the same seqs, each on its own topic). Rebuilt by SCHEMA, their rows kept
# under rig ''.
_TELEMETRY_COLUMNS = ("seq, car_index, session_uid, frame, session_time, speed, throttle, "
                      "steer, brake, gear, engine_rpm, drs, engine_temperature, "
                      "brakes_temperature, tyres_surface_temperature")
_LAP_COLUMNS = ("seq, car_index, session_uid, frame, session_time, current_lap_num, "
                "car_position, lap_distance, total_distance, current_lap_time_ms, "
                "last_lap_time_ms, sector, pit_status")
MIGRATE_1_TO_2_BEFORE = """
ALTER TABLE game_car_telemetry RENAME TO game_car_telemetry_schema1;
ALTER TABLE game_lap_data RENAME TO game_lap_data_schema1;
DROP INDEX IF EXISTS game_lap_data_by_frame;
"""
MIGRATE_1_TO_2_AFTER = f"""
INSERT INTO game_car_telemetry (epoch, rig, {_TELEMETRY_COLUMNS})
    SELECT epoch, '', {_TELEMETRY_COLUMNS} FROM game_car_telemetry_schema1;
INSERT INTO game_lap_data (epoch, rig, {_LAP_COLUMNS})
    SELECT epoch, '', {_LAP_COLUMNS} FROM game_lap_data_schema1;
DROP TABLE game_car_telemetry_schema1;
DROP TABLE game_lap_data_schema1;
"""


def _game_packet(topic: str) -> tuple[str, str]:
    """(rig or '', packet) of a game packet topic; ('', '') for any other topic."""
    rig, packet = game_packet_of(topic) or ("", "")
    return rig or "", packet


class SchemaError(Exception):
    """A database this version cannot write; the text says why."""


def prepare(db: sqlite3.Connection) -> bool:
    """Create the schema, or bring a database of an earlier one up to date (True)."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise SchemaError(f"it has schema {version}, written by a newer slipstream (this "
                          f"one writes schema {SCHEMA_VERSION}): use another --db")
    had_laps = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'live_laps'").fetchone()
    migrate = MIGRATE_0_TO_1 if version == 0 and had_laps else ""
    old_game = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'game_lap_data'").fetchone() \
        and not db.execute("SELECT 1 FROM pragma_table_info('game_lap_data') "
                           "WHERE name = 'rig'").fetchone()
    before, after = (MIGRATE_1_TO_2_BEFORE, MIGRATE_1_TO_2_AFTER) if old_game else ("", "")
    # One script, one transaction: a migration half done is rolled back, never kept.
    # (executescript commits what is pending first, so the BEGIN is in the script.)
    try:
        db.executescript(f"BEGIN IMMEDIATE; {migrate} {before} {SCHEMA} {after} "
                         f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return bool(migrate or before)


class Rows(defaultdict[str, list[tuple[Any, ...]]]):
    """Rows waiting for the next transaction: statement -> parameter tuples."""

    def __init__(self) -> None:
        super().__init__(list)


@dataclass
class LiveSession:
    """What one live session's partial updates need: its merged state so far."""

    timing: dict[str, Any] = field(default_factory=dict)  # merged TimingData
    laps_seen: dict[str, int] = field(default_factory=dict)  # number -> NumberOfLaps so far
    drivers: dict[str, Any] = field(default_factory=dict)  # merged DriverList


class LiveTables:
    """Turns messages into rows, keeping the state live timing's partial updates need,
    per session: laps arriving late from an earlier session (a writer catching up reads
    topic by topic) still find their session's state, for the last SESSIONS_KEPT."""

    def __init__(self, game_json: bool = False) -> None:
        self.game_json = game_json  # every game packet as JSON in messages, as before
        self._sessions: OrderedDict[str, LiveSession] = OrderedDict()

    def rows_for(self, message: Message, rows: Rows) -> None:
        topic = message.topic
        rig, packet = _game_packet(topic)
        if packet and not self.game_json and game_topic(packet) not in GAME_JSON_TOPICS:
            rows[INSERT_GAME_PACKET].append((message.epoch, topic, message.seq,
                                             message.timestamp_us,
                                             zlib.compress(message.payload, 1)))
            if packet in ("car_telemetry", "lap_data") and isinstance(message.data, dict):
                self._game_rows(message, rig, packet, message.data, rows)
            return
        data = message.data
        source_ts = data.get("timestamp") if isinstance(data, dict) else None
        rows[INSERT_MESSAGE].append((message.epoch, topic, message.seq,
                                     message.timestamp_us,
                                     source_ts if isinstance(source_ts, str) else None,
                                     json_text(data)))
        if packet and isinstance(data, dict):
            self._game_rows(message, rig, packet, data, rows)
            return
        if not topic.startswith("live.") or not isinstance(data, dict):
            return
        if topic == SESSION_START_TOPIC:
            rows[INSERT_SESSION].append((
                session_of(data) or "", message.epoch, message.seq, message.timestamp_us,
                data.get("source"), data.get("name")))
            return
        body = data.get("data")
        if not isinstance(body, dict):
            return
        session_id = session_of(data) or ""
        session = self._session(session_id)
        snapshot = bool(data.get("snapshot"))
        match topic:
            case "live.TimingData":
                self._timing_rows(message, session_id, session, body, snapshot, rows)
            case "live.DriverList":
                self._driver_rows(session, body, snapshot, rows)
            case "live.TrackStatus":
                rows[INSERT_TRACK].append((message.epoch, message.seq, message.timestamp_us,
                                           source_ts, body.get("Status"), body.get("Message")))
            case "live.RaceControlMessages":
                self._race_control_rows(message, body, rows)

    def _session(self, session_id: str) -> LiveSession:
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = LiveSession()
            if len(self._sessions) > SESSIONS_KEPT:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(session_id)
        return session

    def _timing_rows(self, message: Message, session_id: str, session: LiveSession,
                     body: dict[str, Any], snapshot: bool, rows: Rows) -> None:
        """A row per lap time, when F1 publishes it.

        A timed lap's time comes with the NumberOfLaps that counts it; an
        in-lap's time comes at the pit-lane line, before the count moves at pit
        exit, so it belongs to the next lap. The out lap has no time. If F1 sends
        two times for one lap (it does, rarely), the first is kept.
        """
        # No copy: the message's JSON is already in its row, and nothing else holds it.
        session.timing = apply(session.timing, body, snapshot=snapshot)
        for number, update in body.get("Lines", {}).items():
            if not isinstance(update, dict):
                continue
            laps = update.get("NumberOfLaps")
            if isinstance(laps, int):
                session.laps_seen[number] = laps
            lap_time = (update.get("LastLapTime") or {}).get("Value") \
                if isinstance(update.get("LastLapTime"), dict) else None
            if not lap_time:
                continue
            lap = laps if isinstance(laps, int) else session.laps_seen.get(number, 0) + 1
            line = session.timing.get("Lines", {}).get(number, {})
            sectors = line.get("Sectors") if isinstance(line.get("Sectors"), list) else []
            sector_s = [lap_seconds(s.get("Value")) if isinstance(s, dict) else None
                        for s in sectors][:3]
            sector_s += [None] * (3 - len(sector_s))
            position = line.get("Position")
            rows[INSERT_LAP].append((message.epoch, session_id, number, lap, lap_time,
                                     lap_seconds(lap_time),
                                     *sector_s,
                                     int(position) if str(position).isdigit() else None,
                                     message.timestamp_us))

    @staticmethod
    def _driver_rows(session: LiveSession, body: dict[str, Any], snapshot: bool,
                     rows: Rows) -> None:
        session.drivers = apply(session.drivers, body, snapshot=snapshot)  # no copy, as above
        for number in body:
            driver = session.drivers.get(number)
            if isinstance(driver, dict) and driver.get("Tla"):
                rows[INSERT_DRIVER].append((number, driver.get("Tla"), driver.get("FullName"),
                                            driver.get("TeamName"), driver.get("TeamColour")))

    def _game_rows(self, message: Message, rig: str, packet: str, data: dict[str, Any],
                   rows: Rows) -> None:
        header = data.get("header") or {}
        where = (message.epoch, rig, message.seq)
        frame = (header.get("session_uid"), header.get("frame_identifier"),
                 header.get("session_time"))
        match packet:
            case "car_telemetry":  # a row per car slot: the game sends them all
                for index, car in enumerate(data["car_telemetry_data"]):
                    rows[INSERT_GAME_TELEMETRY].append((
                        *where, index, *frame, car["speed"], car["throttle"], car["steer"],
                        car["brake"], car["gear"], car["engine_rpm"], car["drs"],
                        car["engine_temperature"], json.dumps(car["brakes_temperature"]),
                        json.dumps(car["tyres_surface_temperature"])))
            case "lap_data":
                for index, car in enumerate(data["lap_data"]):
                    rows[INSERT_GAME_LAP].append((
                        *where, index, *frame, car["current_lap_num"], car["car_position"],
                        car["lap_distance"], car["total_distance"],
                        car["current_lap_time_in_ms"], car["last_lap_time_in_ms"],
                        car["sector"], car["pit_status"]))

    @staticmethod
    def _race_control_rows(message: Message, body: dict[str, Any], rows: Rows) -> None:
        items = body.get("Messages")
        entries = items.items() if isinstance(items, dict) else enumerate(items or [])
        for item, entry in entries:
            if not isinstance(entry, dict):
                continue
            sector, lap = entry.get("Sector"), entry.get("Lap")
            rows[INSERT_RACE_CONTROL].append((
                message.epoch, message.seq, str(item), message.timestamp_us, entry.get("Utc"),
                entry.get("Category"), entry.get("Flag"), entry.get("Scope"),
                sector if isinstance(sector, int) else None, entry.get("RacingNumber"),
                lap if isinstance(lap, int) else None, entry.get("Message")))

