"""The bundled game capture through the built-in consumers: SQLite game tables, game alerts."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import zlib
from pathlib import Path

import msgpack
import pytest

from broker import Client
from f1vocab.game.decoder import GameDecoder, Packet
from f1vocab.game.packed import GAME_DATAGRAM_EXT, unpack_datagram
from producer.game.capture import CaptureReport, read_capture
from tests.helpers import ROOT, Processes, run_command, take, wait_drained, wait_for

CAPTURE = ROOT / "samples" / "game" / "session-2026.cap"
CAR_SLOTS, FRAMES = 24, 241  # format 2026 has 24 car slots; the capture has 241 frames


async def replayed_capture(processes: Processes) -> str:
    broker = await processes.any_broker()
    code, _, err = await run_command("-m", "producer", "udp-replay", str(CAPTURE),
                                     "--as-fast-as-possible", "--broker", broker.address)
    assert code == 0, err
    assert "received 2,132 datagrams, decoded 2,132" in err
    return broker.address


@pytest.mark.usefixtures("engine")
async def test_game_tables_hold_every_car_of_every_frame(processes: Processes,
                                                         tmp_path: Path) -> None:
    broker = await replayed_capture(processes)
    db = tmp_path / "game.db"
    writer = await processes.command("-m", "consumer", "sqlite", "game.>", "--db", str(db),
                                     "--from", "earliest", "--broker", broker)
    await wait_for_stored(db, 2132)
    assert await writer.stop(signal.SIGINT) == 0
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT count(*) FROM game_car_telemetry").fetchone()[0] \
            == CAR_SLOTS * FRAMES
        assert connection.execute("SELECT count(*) FROM game_lap_data").fetchone()[0] \
            == CAR_SLOTS * FRAMES
        # A speed trace of one lap: the player's car (index 0), lap 2, in frame order.
        trace = connection.execute(
            "SELECT l.lap_distance, t.speed FROM game_lap_data l JOIN game_car_telemetry t "
            "USING (epoch, car_index, session_uid, frame) WHERE car_index = 0 AND "
            "current_lap_num = 2 ORDER BY frame").fetchall()
    distances = [row[0] for row in trace]
    assert len(trace) > 50 and distances == sorted(distances)
    assert all(0 < speed < 400 for _, speed in trace)


async def wait_for_stored(db: Path, count: int) -> None:
    """Until `count` messages are in the database, as JSON or compressed."""
    def enough() -> bool:
        try:
            with sqlite3.connect(db) as connection:
                stored: int = connection.execute(
                    "SELECT (SELECT count(*) FROM messages) + "
                    "(SELECT count(*) FROM game_packets)").fetchone()[0]
        except sqlite3.OperationalError:
            return False  # not made yet
        return stored >= count
    await wait_for(enough, f"{count:,} messages stored in {db.name}", 20, interval_s=0.2)


@pytest.mark.parametrize("game_json", [False, True])
async def test_the_high_rate_packets_are_stored_compressed_unless_asked_for_json(
        processes: Processes, tmp_path: Path, game_json: bool) -> None:
    broker = await replayed_capture(processes)
    db = tmp_path / "game.db"
    writer = await processes.command("-m", "consumer", "sqlite", "game.>", "--db", str(db),
                                     "--from", "earliest", "--broker", broker,
                                     *(["--game-json"] if game_json else []))
    await wait_for_stored(db, 2132)
    assert await writer.stop(signal.SIGINT) == 0
    with sqlite3.connect(db) as connection:
        as_json = dict(connection.execute(
            "SELECT topic, count(*) FROM messages GROUP BY topic").fetchall())
        packed = connection.execute("SELECT topic, seq, payload FROM game_packets").fetchall()
        telemetry = connection.execute("SELECT data FROM messages WHERE topic = "
                                       "'game.car_telemetry' AND seq = 7").fetchall()
    if game_json:
        assert packed == [] and sum(as_json.values()) == 2132
        assert json.loads(telemetry[0][0])["header"]["packet_id"] == 6
        return
    # The few low-rate packets people read whole stay JSON; the rest are compressed as
    # published, and decode to the same packet.
    assert as_json == {"game.event": 6, "game.participants": 25,
                       "game.final_classification": 1}
    assert len(packed) == 2132 - 32 and telemetry == []
    async with Client(broker, name="check") as client:
        sub = await client.subscribe("game.car_telemetry", start="earliest")
        published = {m.seq: m.payload for m in await take(sub, 241)}
    stored = {seq: zlib.decompress(payload) for topic, seq, payload in packed
              if topic == "game.car_telemetry"}
    assert stored == published
    packet = msgpack.unpackb(stored[7])  # the game's datagram, in msgpack ext 71
    assert packet.code == GAME_DATAGRAM_EXT
    assert unpack_datagram(packet.data)["header"]["packet_id"] == 6


@pytest.mark.usefixtures("engine")
async def test_game_rules_fire_on_the_bundled_session(processes: Processes,
                                                      tmp_path: Path) -> None:
    broker = await replayed_capture(processes)
    log = tmp_path / "alerts.jsonl"
    alerter = await processes.command("-m", "consumer", "alerter", "--from", "earliest",
                                      "--log", str(log), "--broker", broker)
    await wait_drained(broker, "alerter")
    assert await alerter.stop(signal.SIGINT) == 0
    alerts = [json.loads(line) for line in log.read_text().splitlines()]
    by_rule: dict[str, list[str]] = {}
    for alert in alerts:
        by_rule.setdefault(alert["rule"], []).append(alert["message"])
    # The car by its driver's name once game.participants (another topic, read in no
    # promised order with game.event) has said it; "Car 5" before.
    [penalty] = by_rule["game-penalty"]
    assert re.fullmatch(r"Penalty for (Car 5|DRIVER \d+): Time penalty, 5 s", penalty), penalty
    assert by_rule["game-safety-car"] == ["Safety car deploying", "Safety car returned"]
    [fastest] = by_rule["game-fastest-lap"]
    assert re.match(r"Fastest lap: (Car 0|DRIVER \d+), ", fastest), fastest
    # Tyre wear passes 70% on some wheels of the cars that wear fastest, once per wheel at
    # most (and once per car per cooldown).
    wear = by_rule["tyre-wear"]
    keys = [alert["key"] for alert in alerts if alert["rule"] == "tyre-wear"]
    assert wear and len(keys) == len(set(keys))


# The game tables as schema 1 made them (before rigs), with one row each.
SCHEMA_1_GAME = """
CREATE TABLE game_car_telemetry (
    epoch INTEGER NOT NULL, seq INTEGER NOT NULL, car_index INTEGER NOT NULL,
    session_uid INTEGER, frame INTEGER, session_time REAL,
    speed INTEGER, throttle REAL, steer REAL, brake REAL, gear INTEGER, engine_rpm INTEGER,
    drs INTEGER, engine_temperature INTEGER,
    brakes_temperature TEXT, tyres_surface_temperature TEXT,
    PRIMARY KEY (epoch, seq, car_index)
);
CREATE TABLE game_lap_data (
    epoch INTEGER NOT NULL, seq INTEGER NOT NULL, car_index INTEGER NOT NULL,
    session_uid INTEGER, frame INTEGER, session_time REAL,
    current_lap_num INTEGER, car_position INTEGER, lap_distance REAL, total_distance REAL,
    current_lap_time_ms INTEGER, last_lap_time_ms INTEGER, sector INTEGER,
    pit_status INTEGER,
    PRIMARY KEY (epoch, seq, car_index)
);
CREATE INDEX game_lap_data_by_frame ON game_lap_data (session_uid, frame);
INSERT INTO game_car_telemetry VALUES (1, 5, 0, 7, 100, 1.5, 301, 1.0, 0.0, 0.0, 8, 11000,
                                       0, 105, '[1,2,3,4]', '[5,6,7,8]');
INSERT INTO game_lap_data VALUES (1, 5, 0, 7, 100, 1.5, 2, 1, 500.0, 3500.0, 20000, 85606,
                                  0, 0);
PRAGMA user_version = 1;
"""


async def test_two_rigs_keep_their_own_rows_and_old_rows_are_kept_as_no_rig(
        processes: Processes, tmp_path: Path) -> None:
    """Issue 25: game.<rig>.<packet> from two rigs (same seqs, each on its topic) are two
    rigs' rows; a schema-1 database is brought up to date with its rows under rig ''."""
    db = tmp_path / "rigs.db"
    with sqlite3.connect(db) as connection:
        connection.executescript(SCHEMA_1_GAME)
    broker = await processes.broker()
    decoder = GameDecoder()
    packets = [decoder.decode(datagram)
               for _, datagram in read_capture(CAPTURE, CaptureReport())][:200]
    laps = [p for p in packets if isinstance(p, Packet) and p.name == "lap_data"]
    async with Client(broker.address) as client:
        for rig in ("a", "b"):
            for packet in laps:
                await client.publish(f"game.{rig}.lap_data", packet.data)
        await client.flush()
    writer = await processes.command("-m", "consumer", "sqlite", "game.>", "--db", str(db),
                                     "--from", "earliest", "--broker", broker.address)
    await wait_for_stored(db, 2 * len(laps))
    assert await writer.stop(signal.SIGINT) == 0
    assert "brought up to schema 2" in writer.log()
    with sqlite3.connect(db) as connection:
        per_rig = dict(connection.execute(
            "SELECT rig, count(*) FROM game_lap_data GROUP BY rig").fetchall())
        kept = connection.execute("SELECT rig, last_lap_time_ms FROM game_lap_data "
                                  "WHERE epoch = 1 AND seq = 5").fetchall()
        telemetry = connection.execute("SELECT rig, speed FROM game_car_telemetry").fetchall()
    assert per_rig == {"": 1, "a": CAR_SLOTS * len(laps), "b": CAR_SLOTS * len(laps)}
    assert kept == [("", 85606)] and telemetry == [("", 301)]
