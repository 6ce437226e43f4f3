"""The standings consumer as an event runs it: real broker, the bundled game capture, the
admin API over HTTP, and a plain subscriber counting the standings.* messages."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import signal
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker import Client
from f1vocab.timing import parse_lap_time
from tests.helpers import (
    ROOT,
    SESSION,
    Processes,
    RunningDashboard,
    assert_nothing_more,
    free_udp_port,
    replay_session,
    run_command,
    take,
    wait_drained,
    wait_for,
)

CAPTURE = ROOT / "samples" / "game" / "session-2026.cap"
CARS = 20


async def until(condition: Callable[[], Awaitable[bool]], what: str,
                timeout_s: float = 30.0) -> None:
    await wait_for(condition, what, timeout_s, interval_s=0.1)


async def view(standings: RunningDashboard) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, \
            session.get(standings.url + "api/standings") as response:
        assert response.status == 200
        return dict(await response.json())


async def timed_rows(standings: RunningDashboard) -> list[dict[str, Any]]:
    return [row for row in (await view(standings))["rows"] if row["position"] is not None]


async def admin(standings: RunningDashboard, action: str, body: Any,
                token: str | None = "s3cret") -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.post(
            f"{standings.url}api/admin/{action}", json=body, headers=headers) as response:
        return response.status, dict(await response.json())


async def final_classification(address: str) -> tuple[dict[str, int], int]:
    """What the game itself says: each car's best lap by driver name, and the laps
    completed by all the cars."""
    async with Client(address, name="check") as client:
        names = (await take(await client.subscribe("game.participants", start="earliest"),
                            1))[0].data["participants"]
        final = (await take(await client.subscribe("game.final_classification",
                                                   start="earliest"), 1))[0].data
    cars = final["classification_data"][:final["num_cars"]]
    return ({names[index]["name"]: car["best_lap_time_in_ms"] for index, car in enumerate(cars)},
            sum(car["num_laps"] for car in cars))


@pytest.mark.usefixtures("engine")
async def test_the_games_laps_make_the_standings_and_every_consumer_sees_them(
        processes: Processes, tmp_path: Path) -> None:
    broker = await processes.any_broker()
    code, _, err = await run_command("-m", "producer", "udp-replay", str(CAPTURE),
                                     "--as-fast-as-possible", "--broker", broker.address)
    assert code == 0, err
    best, completed = await final_classification(broker.address)
    assert len(best) == CARS and completed == 40
    async with Client(broker.address, name="watcher") as client:
        laps_seen = await client.subscribe("standings.lap", start="earliest")
        standings = await processes.standings(broker.address, "--points", "10,6,4,3,2,1",
                                              "--export-dir", str(tmp_path / "exports"))
        # The track, then each completed lap: one change each.
        await until(lambda: _version(view(standings), completed + 1), "every lap applied")
        rows = await timed_rows(standings)
        # Each driver's fastest lap is the one the game's final classification gives.
        assert {row["name"]: row["lap_ms"] for row in rows} == best
        assert [row["lap_ms"] for row in rows] == sorted(best.values())
        assert [row["points"] for row in rows] == [10, 6, 4, 3, 2, 1] + [0] * (CARS - 6)
        assert {row["source"] for row in rows} == {"game"}
        assert (await view(standings))["track"] == "Silverstone"
        # Every completed lap went out once as a standings.lap, for any consumer to see.
        stopped = await standings.stop(signal.SIGINT)
        assert stopped == 0
        assert f"; {completed} laps published from the sources" in standings.log()
        laps = await take(laps_seen, completed)
        await assert_nothing_more(laps_seen)
        assert len({lap.data["id"] for lap in laps}) == completed
        assert all(lap.data["source"] == "game" and lap.data["track"] == "Silverstone"
                   for lap in laps)
        assert {lap.data["name"] for lap in laps} == set(best)
        best_published = {name: min(lap.data["lap_ms"] for lap in laps
                                    if lap.data["name"] == name) for name in best}
        assert best_published == best
        # The table went out after the changes, the last one on the way out: the track,
        # then each lap, so its version counts them all.
        tables = await client.subscribe("standings.table", start="earliest")
        last = (await take(tables, 1))[0]
        while last.data["version"] < len(laps) + 1:
            last = (await take(tables, 1, timeout_s=5))[0]
        assert last.data["version"] == len(laps) + 1
        assert [r["lap_ms"] for r in last.data["rows"]] == sorted(best.values())

        # Started again, it reads the game's packets again: it finds the same laps, knows
        # them from the standings it read back first, and publishes none of them again.
        again = await processes.standings(broker.address)
        await until(lambda: _version(view(again), completed + 1), "the standings read back")
        await wait_drained(broker.address, "standings")  # and every game packet handled
        assert await again.stop(signal.SIGINT) == 0
        assert "; 0 laps published from the sources" in again.log()
        await assert_nothing_more(laps_seen)


async def _version(got: Awaitable[dict[str, Any]], wanted: int) -> bool:
    return bool((await got)["version"] >= wanted)


async def test_the_admin_side_needs_a_login_and_every_change_goes_through_the_broker(
        processes: Processes, tmp_path: Path) -> None:
    broker = await processes.broker("--token", "s3cret", "--data-dir", str(tmp_path / "data"))
    exports = tmp_path / "exports"
    standings = await processes.standings(broker.address, "--token", "s3cret", "--source",
                                          "manual", "--export-dir", str(exports))
    # (unsafe: the jar keeps cookies from an IP address such as 127.0.0.1, as a browser does)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        for path in ("api/export", "api/admin/laps?driver=x"):
            async with session.get(standings.url + path) as response:
                assert response.status == 401
                assert "log in at /login" in (await response.json())["error"]
        async with session.get(standings.url + "admin", allow_redirects=False) as page:
            assert (page.status, page.headers["Location"]) == (303, "/login")
        async with session.get(standings.url) as page:  # made to be shown: public
            assert page.status == 200 and "Standings" in await page.text()
        # Issue 25: never the password in an address: ?token= opens nothing.
        async with session.get(standings.url + "admin?token=s3cret",
                               allow_redirects=False) as page:
            assert page.status == 303
        async with session.post(standings.url + "api/login",
                                json={"password": "wrong"}) as response:
            assert response.status == 401 and "not the admin password" in await response.text()
        async with session.post(standings.url + "api/login",
                                json={"password": "s3cret"}) as response:
            assert response.status == 200
            cookie = response.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
        async with session.get(standings.url + "admin") as page:  # the cookie opens it
            assert page.status == 200 and "lap-time" in await page.text()
        async with session.post(standings.url + "api/logout") as response:
            assert response.status == 200
        async with session.get(standings.url + "admin", allow_redirects=False) as page:
            assert page.status == 303
    assert (await admin(standings, "track", {"track": "Monza"}, token=None))[0] == 401
    assert (await admin(standings, "track", {"track": "Monza"}, token="wrong"))[0] == 401

    status, answer = await admin(standings, "lap", {"driver": "nobody", "time": "1:20.000"})
    assert (status, answer["error"]) == (404, "no driver 'nobody': add the driver first")
    ids = {}
    for name in ("Ann", "Bob", "Cat", "Dan"):
        status, answer = await admin(standings, "add-driver", {"name": name})
        assert status == 200 and answer["shown"], answer
        ids[name] = next(d["id"] for d in answer["standings"]["drivers"] if d["name"] == name)
    status, answer = await admin(standings, "lap", {"driver": ids["Ann"], "time": "1:20.000"})
    assert (status, answer["error"]) == (409, "set the track first: a lap time is a time on "
                                              "a track")
    assert (await admin(standings, "track", {"track": "Monza"}))[0] == 200
    # One lap in each way a person types one; the driver by id, or by name in any case.
    for driver, typed in ((" ann", "1:21,606"), (ids["Bob"], "1.20.5"), ("Cat", "81.000"),
                          (ids["Dan"], "79.999s")):
        status, answer = await admin(standings, "lap", {"driver": driver, "time": typed})
        assert status == 200, answer
    status, answer = await admin(standings, "lap", {"driver": ids["Ann"], "time": "1:75.1"})
    assert (status, answer["error"]) == (400, "'1:75.1' has 75 seconds after the minutes: "
                                              "seconds must be below 60 (did you mean 2:15?)")
    status, answer = await admin(standings, "add-driver", {"name": " ann "})
    assert (status, answer["error"]) == (409, "there is already a driver named 'Ann'")
    status, answer = await admin(standings, "rename", {"driver": ids["Bob"], "name": "Robert"})
    assert status == 200
    rows = answer["standings"]["rows"]
    assert [(r["name"], r["lap"], r["gap"], r["points"]) for r in rows] == [
        ("Dan", "1:19.999", "", 25), ("Robert", "1:20.500", "+0.501", 18),
        ("Cat", "1:21.000", "+1.001", 15), ("Ann", "1:21.606", "+1.607", 12)]
    # A typo struck: Dan's only lap goes, and Dan stays, untimed; restored, it counts again.
    struck = rows[0]["lap_id"]
    status, answer = await admin(standings, "strike-lap", {"lap": struck})
    assert status == 200
    assert [r["name"] for r in answer["standings"]["rows"]] == ["Robert", "Cat", "Ann", "Dan"]
    assert answer["standings"]["rows"][-1]["position"] is None
    assert (await admin(standings, "restore-lap", {"lap": struck}))[0] == 200
    assert (await admin(standings, "remove-lap", {"lap": struck}))[0] == 200  # its old name
    status, answer = await admin(standings, "restore-lap", {"lap": "nope"})
    assert (status, answer["error"]) == (404, "no lap 'nope' in the standings")
    # Every lap of a driver, slower ones too, with its source, struck or not.
    assert (await admin(standings, "lap", {"driver": "Ann", "time": "1:30.000"}))[0] == 200
    async with aiohttp.ClientSession() as session, session.get(
            standings.url + "api/admin/laps?driver=ann",
            headers={"Authorization": "Bearer s3cret"}) as response:
        listed = await response.json()
    assert [(lap["lap"], lap["source"], lap["struck"], lap["best"])
            for lap in listed["laps"]] == [("1:21.606", "manual", False, True),
                                           ("1:30.000", "manual", False, False)]
    async with aiohttp.ClientSession() as session, session.get(
            standings.url + "api/admin/laps?driver=Dan",
            headers={"Authorization": "Bearer s3cret"}) as response:
        assert [lap["struck"] for lap in (await response.json())["laps"]] == [True]
    status, answer = await admin(standings, "driving", {"driver": ids["Cat"]})
    assert status == 200 and answer["standings"]["driving_name"] == "Cat"
    assert "without a token" not in standings.log()  # this broker wants one: no warning
    before = await view(standings)

    # The export: sorted by fastest lap, with points, written under a timestamped name.
    async with aiohttp.ClientSession() as session, session.get(
            standings.url + "api/export", headers={"Authorization": "Bearer s3cret"}) \
            as response:
        assert response.status == 200
        text = await response.text()
        written = Path(response.headers["X-Written-To"])
        assert response.headers["Content-Disposition"] == \
            f'attachment; filename="{written.name}"'
    assert written.parent == exports and written.read_text() == text
    assert written.name.startswith("standings-monza-") and written.suffix == ".csv"
    assert text.startswith("\ufeffposition,")  # a BOM: Excel reads it as UTF-8
    rows_read = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))
    assert all(datetime.fromisoformat(row[7]).utcoffset() is not None for row in rows_read[1:])
    assert [row[:6] for row in rows_read] == [
        ["position", "driver", "lap_time", "lap_ms", "gap", "points"],
        ["1", "Robert", "1:20.500", "80500", "", "25"],
        ["2", "Cat", "1:21.000", "81000", "+0.500", "18"],
        ["3", "Ann", "1:21.606", "81606", "+1.106", "15"]]

    # The broker is the record: a standings consumer killed and started again has it all,
    # and so does any client reading standings.* from the start.
    await standings.kill()
    standings = await processes.standings(broker.address, "--token", "s3cret", "--source",
                                          "manual", "--export-dir", str(exports))
    await until(lambda: _same(view(standings), before), "the standings rebuilt")
    async with Client(broker.address, token="s3cret") as client:
        drivers = await take(await client.subscribe("standings.driver", start="earliest"), 5)
        assert [m.data["name"] for m in drivers] == ["Ann", "Bob", "Cat", "Dan", "Robert"]

    # With the broker away, a change is refused and nothing changes.
    await broker.stop()
    status, answer = await admin(standings, "track", {"track": "Spa"})
    assert status == 503 and "the broker is not reachable" in answer["error"]
    assert (await view(standings))["track"] == "Monza"
    async with aiohttp.ClientSession() as session, \
            session.get(standings.url + "healthz") as response:
        assert response.status == 503


async def test_the_standings_refuse_formulas_hidden_characters_name_races_and_rebinding(
        processes: Processes, tmp_path: Path) -> None:
    """Issue 24, the standings: CSV cells a spreadsheet would run are neutralised, names
    with control or bidi characters are refused, twenty adds of one name at once make one
    driver, and on every interface a foreign Host is still refused."""
    broker = await processes.broker("--host", "0.0.0.0", "--allow-anonymous")
    standings = await processes.standings(broker.address, "--token", "s3cret", "--source",
                                          "manual", "--export-dir", str(tmp_path),
                                          http="0.0.0.0:0")
    async with aiohttp.ClientSession() as session:
        async with session.get(standings.url + "api/standings",
                               headers={"Host": "evil.example"}) as response:
            assert response.status == 403  # a DNS-rebinding page's request
            assert "DNS-rebinding" in (await response.json())["error"]
        async with session.get(standings.url + "api/standings") as response:
            assert response.status == 200  # by address: ours
    for hidden in ("Ann\x00", "Ann\u202eevil", "Ann\u200b"):
        status, answer = await admin(standings, "add-driver", {"name": hidden})
        assert status == 400 and "control or direction" in answer["error"], answer
    results = await asyncio.gather(*(admin(standings, "add-driver", {"name": "Racer"})
                                     for _ in range(20)))
    statuses = sorted(status for status, _ in results)
    assert statuses[:1] in ([200], [202]) and statuses[1:] == [409] * 19, statuses
    assert [d["name"] for d in (await view(standings))["drivers"]] == ["Racer"]
    formulas = ['=HYPERLINK("http://evil","win")', "+1", "-2", "@SUM(A1)"]
    assert (await admin(standings, "track", {"track": "Monza"}))[0] == 200
    for index, name in enumerate(formulas):
        status, answer = await admin(standings, "add-driver", {"name": name})
        assert status == 200, answer
        driver = next(d["id"] for d in answer["standings"]["drivers"] if d["name"] == name)
        status, _ = await admin(standings, "lap", {"driver": driver,
                                                    "time": f"1:2{index}.000"})
        assert status == 200
    async with aiohttp.ClientSession() as session, session.get(
            standings.url + "api/export", headers={"Authorization": "Bearer s3cret"}) \
            as response:
        rows = list(csv.reader(io.StringIO(await response.text())))
    assert [row[1] for row in rows[1:]] == ["'" + name for name in formulas]
    # This broker takes anyone, from anywhere: the standings said so at start.
    await until(lambda: _logged(standings, "lets clients in without a token"),
                "the standings' warning about an open broker")


async def _logged(process: RunningDashboard, words: str) -> bool:
    return words in process.log()


async def _same(got: Awaitable[dict[str, Any]], wanted: dict[str, Any]) -> bool:
    current = await got
    return all(current[key] == wanted[key] for key in ("rows", "track", "driving", "drivers"))


@pytest.mark.parametrize(("flags", "says"), [
    (["--points", "25,x"], "--points '25,x' is not a comma-separated list of whole numbers"),
    (["--http", "8081"], "--http '8081' is not HOST:PORT"),
    (["--source", "radio"], "invalid choice: 'radio'"),
    (["--durable", "standings"], "unrecognized arguments: --durable"),  # and not in --help
])
async def test_bad_flags_are_refused_with_a_reason(processes: Processes, flags: list[str],
                                                  says: str) -> None:
    broker = await processes.broker()
    code, _, err = await run_command("-m", "consumer", "standings", "--broker",
                                     broker.address, *flags)
    assert code == 2 and says in err, err


async def test_help_offers_only_the_flags_the_standings_take() -> None:
    code, out, _ = await run_command("-m", "consumer", "standings", "--help")
    assert code == 0 and "--from" in out and "--durable" not in out


def best_laps_in_the_raw_session() -> dict[str, int]:
    """Each driver's last BestLapTime in the bundled TimingData lines, in ms, by full name."""
    def lines(topic: str) -> list[dict[str, Any]]:
        text = (SESSION / f"{topic}.jsonStream").read_text(encoding="utf-8-sig")
        return [json.loads(line[12:]) for line in text.splitlines() if line.strip()]

    names: dict[str, str] = {}
    for update in lines("DriverList"):
        for number, driver in update.items():
            if isinstance(driver, dict) and driver.get("FullName"):
                names[number] = driver["FullName"]
    best: dict[str, str] = {}
    for update in lines("TimingData"):
        for number, line in (update.get("Lines") or {}).items():
            value = (line.get("BestLapTime") or {}).get("Value") if isinstance(line, dict) \
                else None
            if value:
                best[number] = value
    return {names[number]: parse_lap_time(value) for number, value in best.items()}


async def test_live_timings_best_laps_make_the_standings(processes: Processes) -> None:
    broker = await processes.broker()
    await replay_session(broker.address)
    standings = await processes.standings(broker.address, "--source", "live")
    best = best_laps_in_the_raw_session()
    assert len(best) == 20
    await until(lambda: _same_laps(timed_rows(standings), best), "every driver's best lap")
    rows = await timed_rows(standings)
    assert (rows[0]["name"], rows[0]["lap"], rows[0]["points"]) == ("Lewis HAMILTON",
                                                                    "1:25.606", 25)
    assert {row["source"] for row in rows} == {"live"}
    assert (await view(standings))["track"] == "Silverstone"


async def _same_laps(rows: Awaitable[list[dict[str, Any]]], best: dict[str, int]) -> bool:
    return {row["name"]: row["lap_ms"] for row in await rows} == best


async def test_one_rig_the_players_laps_go_to_whoever_is_at_the_wheel(
        processes: Processes) -> None:
    broker = await processes.broker()
    standings = await processes.standings(broker.address, "--game-cars", "player")
    status, answer = await admin(standings, "add-driver", {"name": "Alice"}, token=None)
    assert status == 200
    alice = answer["standings"]["drivers"][0]["id"]
    assert (await admin(standings, "driving", {"driver": alice}, token=None))[0] == 200
    code, _, err = await run_command("-m", "producer", "udp-replay", str(CAPTURE),
                                     "--as-fast-as-possible", "--broker", broker.address)
    assert code == 0, err
    best, _ = await final_classification(broker.address)
    player_best = best["DRIVER 01"]  # the capture's player car: index 0
    await until(lambda: _same_laps(timed_rows(standings), {"Alice": player_best}),
                "Alice's best lap")
    rows = (await view(standings))["rows"]
    assert [(r["name"], r["lap_ms"], r["source"]) for r in rows] == [
        ("Alice", player_best, "game")]  # and no AI car is timed


async def test_the_table_is_pushed_to_screens_at_every_change(processes: Processes,
                                                             tmp_path: Path) -> None:
    """/api/events: the table at once, then again at each change, without polling."""
    broker = await processes.broker()
    standings = await processes.standings(broker.address, "--token", "s3cret", "--source",
                                          "manual", "--export-dir", str(tmp_path))

    async def next_view(stream: aiohttp.StreamReader) -> dict[str, Any]:
        async with asyncio.timeout(10):
            while True:
                line = (await stream.readline()).decode()
                if line.startswith("data: "):
                    return dict(json.loads(line.removeprefix("data: ")))

    async with aiohttp.ClientSession() as session, \
            session.get(standings.url + "api/events") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        first = await next_view(response.content)
        assert (await admin(standings, "track", {"track": "Monza"}))[0] == 200
        pushed = await next_view(response.content)
        assert pushed["track"] == "Monza" and pushed["version"] > first["version"]
        # A driver added by mistake goes, by name, with the laps they had.
        assert (await admin(standings, "add-driver", {"name": "Eve"}))[0] == 200
        assert (await admin(standings, "lap", {"driver": "Eve", "time": "1:30.000"}))[0] == 200
        status, answer = await admin(standings, "remove-driver", {"driver": "eve"})
        assert status == 200 and answer["standings"]["rows"] == []
        while (pushed := await next_view(response.content))["rows"]:
            pass  # the views of the add and the lap, then the one without Eve
        assert pushed["last_lap"] is None


def player_laps(laps_each: int, hz: float, cars: int, uid: int) -> list[int]:
    """The valid laps (ms) the simulator's player car completes in a run: what a rig's
    driver must be credited with, lap for lap."""
    from f1vocab.game.decoder import GameDecoder, Packet
    from producer.game.simulator import SessionSimulator

    decoder, laps, before = GameDecoder(), [], None
    simulator = SessionSimulator(cars=cars, hz=hz, session_uid=uid, laps=laps_each)
    for _, datagrams in simulator.frames():
        for datagram in datagrams:
            packet = decoder.decode(datagram)
            if isinstance(packet, Packet) and packet.name == "lap_data":
                lap = packet.data["lap_data"][0]
                if before is not None and lap["current_lap_num"] > before \
                        and lap["last_lap_time_in_ms"]:
                    laps.append(lap["last_lap_time_in_ms"])
                before = lap["current_lap_num"]
    return laps


async def test_two_rigs_each_drivers_laps_land_on_their_own_rig(processes: Processes) -> None:
    """Issue 25: two simulated rigs (each its own session) into one bridge on two ports,
    game.<rig>.*; Alice at rig a's wheel, Bob at rig b's: every lap of each rig's player
    car is credited to its driver, none lost, none to the other."""
    broker = await processes.broker()
    standings = await processes.standings(broker.address, "--game-cars", "player")
    ids = {}
    for name, rig in (("Alice", "a"), ("Bob", "b")):
        status, answer = await admin(standings, "add-driver", {"name": name}, token=None)
        assert status == 200
        ids[name] = next(d["id"] for d in answer["standings"]["drivers"] if d["name"] == name)
        status, answer = await admin(standings, "driving", {"driver": name, "rig": rig},
                                     token=None)
        assert status == 200, answer
    assert answer["standings"]["driving_by_rig"] == {"a": ids["Alice"], "b": ids["Bob"]}
    port = free_udp_port(count=2)
    udp = await processes.command("-m", "producer", "udp", "--listen", f"127.0.0.1:{port}=a",
                                  "--listen", f"127.0.0.1:{port + 1}=b", "--broker",
                                  broker.address)
    out: Path = udp.out_path  # type: ignore[attr-defined]
    await wait_for(lambda: out.read_text().count("listening") == 2, "the bridge")
    code, _, err = await run_command(
        "-m", "producer", "udp-sim", "--rigs", "2", "--to", f"127.0.0.1:{port}", "--hz", "4",
        "--laps", "2", "--cars", "2", "--as-fast-as-possible", timeout_s=120)
    assert code == 0, err
    # Each rig is a session of its own (its own uid, so its own lap times).
    uid_a, uid_b = (int(uid) for uid in err.split("session uid ")[1].split(")")[0].split(", "))
    expected = {"Alice": player_laps(2, 4, 2, uid_a), "Bob": player_laps(2, 4, 2, uid_b)}
    assert [len(laps) for laps in expected.values()] == [2, 2]
    async with Client(broker.address) as client:
        published = await client.subscribe("standings.lap", start="earliest")
        laps = await take(published, 4)
        await assert_nothing_more(published)
    by_driver: dict[str, list[int]] = {}
    for lap in laps:
        by_driver.setdefault(lap.data["name"], []).append(lap.data["lap_ms"])
    assert by_driver == expected
    assert await udp.stop(signal.SIGINT) == 0
    assert "dropped 0" in udp.log() and "no topic matches" not in standings.log()
    # A broker on loopback without users (the demo's): not worth a warning.
    assert "lets clients in" not in standings.log()
