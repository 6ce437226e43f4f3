"""The SQLite writer against real processes: exact row counts through kills and restarts."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import msgpack

from broker import Client
from tests.helpers import (
    SESSION,
    Processes,
    RunningProcess,
    replay_session,
    run_command,
    wait_drained,
    wait_for,
    wait_subscribed,
)


def query(db: Path, sql: str, *parameters: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql, parameters).fetchall()


async def wait_for_rows(db: Path, count: int, timeout_s: float = 20) -> None:
    def enough() -> bool:
        try:
            return db.exists() and query(db, "SELECT count(*) FROM messages")[0][0] >= count
        except sqlite3.OperationalError:
            return False  # the writer is still creating the schema
    await wait_for(enough, f"{count:,} rows in {db.name}", timeout_s, interval_s=0.1)


async def writer(processes: Processes, db: Path, broker: str, *args: str) -> RunningProcess:
    return await processes.command("-m", "consumer", "sqlite", *args, "--db", str(db),
                                   "--broker", broker)


def raw_session() -> dict[str, list[dict[str, Any]]]:
    return {path.name.removesuffix(".jsonStream"):
            [json.loads(line.lstrip("\ufeff")[12:])
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            for path in SESSION.glob("*.jsonStream")}


def lap_times_by_the_documented_rule() -> dict[tuple[str, int], str]:
    """docs/sqlite.md's rule, applied to the raw lines: what live_laps must hold."""
    laps: dict[str, int] = {}
    found: dict[tuple[str, int], str] = {}
    for update in raw_session()["TimingData"]:
        for number, line in update.get("Lines", {}).items():
            if not isinstance(line, dict):
                continue
            if isinstance(line.get("NumberOfLaps"), int):
                laps[number] = line["NumberOfLaps"]
            value = line.get("LastLapTime", {}).get("Value") \
                if isinstance(line.get("LastLapTime"), dict) else None
            if value:
                lap = line["NumberOfLaps"] if "NumberOfLaps" in line else laps.get(number, 0) + 1
                found.setdefault((number, lap), value)
    return found


async def test_the_real_session_fills_every_table(processes: Processes, tmp_path: Path) -> None:
    broker = await processes.broker()
    await replay_session(broker.address)
    db = tmp_path / "session.db"
    sqlite_writer = await writer(processes, db, broker.address, "--from", "earliest")
    await wait_for_rows(db, 17_980)
    assert await sqlite_writer.stop(signal.SIGINT) == 0
    raw = raw_session()
    assert dict(query(db, "SELECT topic, count(*) FROM messages GROUP BY topic")) == {
        "live.session_start": 1, **{f"live.{topic}": len(lines) for topic, lines in raw.items()}}
    ((session, source, name),) = query(db, "SELECT session, source, name FROM live_sessions")
    assert (source, name) == ("replay", "2020-08-07_70th-anniversary-fp2") and len(session) == 8
    assert query(db, "PRAGMA journal_mode") == [("wal",)]
    # Lap times, checked against the raw lines and against their own sectors.
    expected = lap_times_by_the_documented_rule()
    laps = {(number, lap): time for number, lap, time in
            query(db, "SELECT racing_number, lap, lap_time FROM live_laps WHERE session = ?",
                  session)}
    assert laps == expected and len(laps) == 501
    (fastest,) = query(db, "SELECT d.tla, l.lap_time, l.sector1_s + l.sector2_s + l.sector3_s "
                           "FROM live_laps l JOIN drivers d USING (racing_number) "
                           "ORDER BY l.lap_time_s LIMIT 1")
    assert fastest[:2] == ("HAM", "1:25.606") and abs(fastest[2] - 85.606) < 0.0015
    assert query(db, "SELECT count(*) FROM drivers")[0][0] == 20
    assert [row[0] for row in query(db, "SELECT message FROM track_status ORDER BY seq")] == [
        status["Message"] for status in raw["TrackStatus"]]
    items = sum(len(m["Messages"]) for m in raw["RaceControlMessages"])
    assert query(db, "SELECT count(*) FROM race_control")[0][0] == items
    assert "sqlite: handled 17,980 messages, 0 gaps" in sqlite_writer.log()


async def test_a_writer_killed_mid_stream_resumes_with_nothing_lost_or_doubled(
        processes: Processes, tmp_path: Path) -> None:
    broker = await processes.broker()
    db = tmp_path / "kill.db"
    first = await writer(processes, db, broker.address, "t.>")
    await wait_for_writer(db, broker.address)
    publisher = await processes.command("-m", "producer", "pub", "t.load", "--count", "4000",
                                        "--rate", "1000", "--size", "100",
                                        "--broker", broker.address)
    await wait_for_rows(db, 1000)
    await first.kill()  # SIGKILL: no final commit, no final ack
    second = await writer(processes, db, broker.address, "t.>")
    assert await asyncio.wait_for(publisher.process.wait(), 30) == 0
    await wait_for_rows(db, 4000)
    await wait_drained(broker.address, "sqlite")  # anything extra would be stored by now
    assert await second.stop(signal.SIGINT) == 0
    assert query(db, "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM messages") \
        == [(4000, 4000, 1, 4000)]


async def wait_for_writer(db: Path, broker: str) -> None:
    """Its table made and its subscription taken (the table comes first: startup hooks run
    before the writer connects), so what is published next reaches it even from 'new'."""
    await wait_for_rows(db, 0)
    await wait_subscribed(broker, "sqlite")


async def test_a_broker_restart_is_a_new_epoch_not_a_collision(processes: Processes,
                                                               tmp_path: Path) -> None:
    broker = await processes.broker()
    db = tmp_path / "restart.db"
    sqlite_writer = await writer(processes, db, broker.address, "t.>")
    await wait_for_writer(db, broker.address)
    async with Client(broker.address, name="pub") as client:
        for n in range(500):
            await client.publish("t.a", n)
        await client.flush()
        await wait_for_rows(db, 500)
        await broker.kill()
        restarted = await processes.broker(port=broker.port)
        for n in range(500, 800):  # seqs 1..300 again, in the new epoch
            await client.publish("t.a", n)
        await client.publish("t.a", 800, confirm=True)
    await wait_for_rows(db, 801)
    assert await sqlite_writer.stop(signal.SIGINT) == 0
    epochs = query(db, "SELECT epoch, count(*), min(seq), max(seq) FROM messages "
                       "GROUP BY epoch ORDER BY min(broker_ts_us)")
    assert [row[1:] for row in epochs] == [(500, 1, 500), (301, 1, 301)]
    assert [json.loads(data) for (data,) in query(
        db, "SELECT data FROM messages ORDER BY broker_ts_us, seq")] == list(range(801))
    assert restarted.port == broker.port


async def test_catching_up_from_earliest_is_reported_until_caught_up(
        processes: Processes, tmp_path: Path) -> None:
    broker = await processes.broker()
    async with Client(broker.address) as client:
        for start in range(0, 30_000, 1_000):
            await client.publish_batch("live.Heartbeat", [
                msgpack.packb({"n": n}) for n in range(start, start + 1_000)])
        await client.flush()
        await client.ping()
    db = tmp_path / "catch.db"
    process = await writer(processes, db, broker.address, "--from", "earliest")
    await wait_for_rows(db, 30_000)
    await wait_for(lambda: _logged(process, "caught up: "), "the caught-up line")
    assert await process.stop(signal.SIGINT) == 0
    log = process.log()
    assert "sqlite: catching up on up to 30,000 retained messages" in log
    assert "sqlite: caught up: 30,000 messages of the backlog in " in log


async def _logged(process: RunningProcess, text: str) -> bool:
    return text in process.log()


async def test_one_undecodable_payload_costs_that_message_not_its_batch(
        processes: Processes, tmp_path: Path) -> None:
    broker = await processes.broker()
    payloads = [msgpack.packb({"n": n}) for n in range(1_000)]
    payloads[500] = b"\xc1 not msgpack"
    async with Client(broker.address) as client:
        await client.publish_batch("live.Heartbeat", payloads)  # one run: one batch
        await client.flush()
        await client.ping()
    db = tmp_path / "bad.db"
    process = await writer(processes, db, broker.address, "--from", "earliest")
    await wait_for_rows(db, 999)
    await wait_drained(broker.address, "sqlite")
    assert await process.stop(signal.SIGINT) == 0
    assert query(db, "SELECT count(*) FROM messages")[0][0] == 999
    assert "sqlite: handled 1,000 messages, 0 gaps (0 messages missed), 1 handler errors" \
        in process.log()
    assert "failed on live.Heartbeat #501" in process.log()


async def test_two_replays_into_one_broker_keep_their_laps_apart(processes: Processes,
                                                                 tmp_path: Path) -> None:
    """Each replay is a session: its laps are its own, even for a writer that reads both
    from the start (topic by topic, so the runs' messages interleave on the way in)."""
    broker = await processes.broker()
    await replay_session(broker.address)
    await replay_session(broker.address)
    db = tmp_path / "two.db"
    sqlite_writer = await writer(processes, db, broker.address, "--from", "earliest")
    await wait_for_rows(db, 2 * 17_980)
    assert await sqlite_writer.stop(signal.SIGINT) == 0
    sessions = [row[0] for row in query(db, "SELECT session FROM live_sessions "
                                            "ORDER BY broker_ts_us")]
    assert len(sessions) == 2 and sessions[0] != sessions[1]
    expected = lap_times_by_the_documented_rule()
    for session in sessions:
        laps = {(number, lap): time for number, lap, time in query(
            db, "SELECT racing_number, lap, lap_time FROM live_laps WHERE session = ?",
            session)}
        assert laps == expected
    assert query(db, "SELECT count(*) FROM live_laps") == [(2 * 501,)]


# live_laps as schema 0 (before sessions) made it; the other tables were as they are now.
SCHEMA_0_LAPS = """
CREATE TABLE live_laps (
    epoch INTEGER NOT NULL, racing_number TEXT NOT NULL, lap INTEGER NOT NULL,
    lap_time TEXT, lap_time_s REAL, sector1_s REAL, sector2_s REAL, sector3_s REAL,
    position INTEGER, broker_ts_us INTEGER NOT NULL,
    PRIMARY KEY (epoch, racing_number, lap)
);
INSERT INTO live_laps VALUES (1, '44', 3, '1:25.606', 85.606, 28.1, 30.2, 27.306, 1, 10);
"""


async def test_a_database_of_the_first_schema_is_brought_up_to_date(
        processes: Processes, tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as connection:
        connection.executescript(SCHEMA_0_LAPS)
    broker = await processes.broker()
    await replay_session(broker.address)
    sqlite_writer = await writer(processes, db, broker.address, "--from", "earliest")
    await wait_for_rows(db, 17_980)
    assert await sqlite_writer.stop(signal.SIGINT) == 0
    assert "brought up to schema 2 (live laps are kept per session, game rows per rig)" \
        in sqlite_writer.log()
    assert query(db, "PRAGMA user_version") == [(2,)]
    # The old lap is kept, under no session; the replay's are under its own.
    assert query(db, "SELECT session, lap_time FROM live_laps WHERE epoch = 1 AND "
                     "racing_number = '44' AND lap = 3") == [("", "1:25.606")]
    assert query(db, "SELECT count(*) FROM live_laps WHERE session != ''") == [(501,)]


async def test_a_database_of_a_newer_schema_is_refused_with_exit_2(
        processes: Processes, tmp_path: Path) -> None:
    db = tmp_path / "newer.db"
    with sqlite3.connect(db) as connection:
        connection.execute("PRAGMA user_version = 99")
    broker = await processes.broker()
    code, _, err = await run_command("-m", "consumer", "sqlite", "--db", str(db),
                                     "--broker", broker.address)
    assert code == 2
    assert f"cannot write the database {db}: it has schema 99, written by a newer " \
           "slipstream (this one writes schema 2): use another --db" in err
