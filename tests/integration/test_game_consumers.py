"""The bundled game capture through the built-in consumers: SQLite game tables, game alerts."""

from __future__ import annotations

import json
import signal
import sqlite3
import zlib
from pathlib import Path

import msgpack
import pytest

from broker import Client
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
    assert msgpack.unpackb(stored[7])["header"]["packet_id"] == 6


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
    assert by_rule["game-penalty"] == ["Penalty for car 5: Time penalty, 5 s"]
    assert by_rule["game-safety-car"] == ["Safety car deploying", "Safety car returned"]
    assert len(by_rule["game-fastest-lap"]) == 1
    assert by_rule["game-fastest-lap"][0].startswith("Fastest lap: car 0, ")
    # Tyre wear passes 70% on some wheels of the cars that wear fastest, once per wheel at
    # most (and once per car per cooldown).
    wear = by_rule["tyre-wear"]
    keys = [alert["key"] for alert in alerts if alert["rule"] == "tyre-wear"]
    assert wear and len(keys) == len(set(keys))
