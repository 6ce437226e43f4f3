"""`slipstream event`, as an organiser runs it: one command, the admin logs in, a lap typed
and one driven on a rig, Ctrl-C, and the same event again (issue 25)."""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker import Client
from broker.errors import BrokerError
from producer.game.simulator import SessionSimulator
from tests.helpers import (
    Processes,
    RunningProcess,
    free_port,
    free_udp_port,
    run_command,
    wait_for,
)

READY = "Ctrl-C stops everything"


async def start_event(processes: Processes, directory: Path, *flags: str
                      ) -> tuple[RunningProcess, str]:
    event = await processes.command("-m", "slipstream", "event", str(directory), *flags)
    out: Path = event.out_path  # type: ignore[attr-defined]
    await wait_for(lambda: READY in out.read_text() or event.process.returncode is not None,
                   "the event to start", 60.0)
    said = out.read_text()
    assert READY in said, said + event.log()
    return event, said


def driven_lap(uid: int) -> int:
    """The one lap the simulator's player car times in `--laps 1 --cars 1 --hz 10`."""
    simulator = SessionSimulator(cars=1, hz=10, session_uid=uid, laps=1)
    for _ in simulator.frames():
        pass
    return simulator.cars[0].last_lap_ms


async def table(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url + "api/standings") as got:
        return dict(await got.json())


async def test_race_night_in_one_command_and_again(processes: Processes,
                                                   tmp_path: Path) -> None:
    broker_port, standings_port, dashboard_port = free_port(), free_port(), free_port()
    udp_port = free_udp_port(count=2)
    directory = tmp_path / "night"
    event, said = await start_event(
        processes, directory, "--local", "--rigs", "2", "--broker-port", str(broker_port),
        "--udp-port", str(udp_port), "--standings-port", str(standings_port),
        "--dashboard-port", str(dashboard_port))
    # What to type where: each rig's UDP port, the screens, the admin and its password.
    assert f"rig1  UDP IP Address 127.0.0.1, UDP Port {udp_port}" in said
    assert f"rig2  UDP IP Address 127.0.0.1, UDP Port {udp_port + 1}" in said
    url = f"http://127.0.0.1:{standings_port}/"
    assert f"http://127.0.0.1:{dashboard_port}/" in said and f"{url}admin" in said
    match = re.search(r"\(password (\S+); it is kept in", said)
    assert match is not None, said
    password = match[1]
    assert "token=" not in said

    jar = aiohttp.CookieJar(unsafe=True)  # keeps 127.0.0.1's cookie, as a browser does
    async with aiohttp.ClientSession(cookie_jar=jar) as admin:
        async def act(action: str, body: dict[str, Any]) -> dict[str, Any]:
            async with admin.post(f"{url}api/admin/{action}", json=body) as response:
                assert response.status == 200, await response.text()
                return dict(await response.json())

        async with admin.post(f"{url}api/login", json={"password": password}) as response:
            assert response.status == 200
        await act("add-driver", {"name": "Alice"})
        await act("add-driver", {"name": "Bob"})
        await act("track", {"track": "Silverstone"})
        await act("driving", {"driver": "Alice", "rig": "rig1"})
        await act("lap", {"driver": "Bob", "time": "1:29,500"})  # typed, decimal comma
        code, _, err = await run_command(
            "-m", "producer", "udp-sim", "--to", f"127.0.0.1:{udp_port}", "--laps", "1",
            "--cars", "1", "--hz", "10", "--as-fast-as-possible", timeout_s=60)
        assert code == 0, err
        uid = int(err.split("session uid ")[1].split(")")[0])
        alice = driven_lap(uid)

        async def alice_timed() -> bool:
            rows = (await table(url))["rows"]
            return any(row["name"] == "Alice" and row["lap_ms"] for row in rows)
        await wait_for(alice_timed, "Alice's lap from rig1", 20.0)
    rows = [(row["name"], row["lap_ms"], row["source"]) for row in (await table(url))["rows"]]
    assert sorted(rows, key=lambda row: row[1]) == sorted(
        [("Alice", alice, "game"), ("Bob", 89_500, "manual")], key=lambda row: row[1])

    # The broker holds the users it was given: a screen (anyone, no password) reads but
    # cannot write the standings.
    async with Client(f"127.0.0.1:{broker_port}", name="screen") as screen:
        with pytest.raises(BrokerError, match="permission"):
            await screen.publish("standings.track", {"track": "Monza"}, confirm=True)

    assert await event.stop(signal.SIGINT, timeout_s=40) == 0
    out: Path = event.out_path  # type: ignore[attr-defined]
    stopped = out.read_text()
    assert stopped.index("stopped rig2's bridge") < stopped.index("stopped the standings") \
        < stopped.index("stopped the broker")
    assert "standings: 2 drivers, 2 with a time on Silverstone" in stopped
    with pytest.raises(aiohttp.ClientConnectionError):
        await table(url)  # nothing left serving

    # Started again, flags and all from event.toml: the same table, the same password.
    again, said = await start_event(processes, directory)
    assert "going on with the event" in said and password not in said
    await wait_for(lambda: _same_rows(url, rows), "the standings read back", 30.0)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as admin, \
            admin.post(f"{url}api/login", json={"password": password}) as response:
        assert response.status == 200
    assert await again.stop(signal.SIGINT, timeout_s=40) == 0


async def _same_rows(url: str, rows: list[tuple[str, int, str]]) -> bool:
    got = [(row["name"], row["lap_ms"], row["source"]) for row in (await table(url))["rows"]]
    return got == rows


async def test_bad_settings_are_refused_before_anything_starts(tmp_path: Path) -> None:
    code, _, err = await run_command("-m", "slipstream", "event", str(tmp_path / "e"),
                                     "--rig", "lap_data", "--local")
    assert code == 2 and "slipstream event: error: rig name 'lap_data' is a packet's name" \
        in err, err
    assert not (tmp_path / "e" / "secrets.toml").exists()


async def test_a_part_that_cannot_start_stops_the_event_with_the_reason(
        processes: Processes, tmp_path: Path) -> None:
    """A port already in use: the event names the part and the end of its log, stops what
    it started, and exits 1; nothing is left listening."""
    broker_port, standings_port, dashboard_port = free_port(), free_port(), free_port()
    taken = socket.socket()
    taken.bind(("127.0.0.1", standings_port))
    taken.listen()
    try:
        code, out, err = await run_command(
            "-m", "slipstream", "event", str(tmp_path / "night"), "--local", "--broker-port",
            str(broker_port), "--standings-port", str(standings_port), "--dashboard-port",
            str(dashboard_port), "--udp-port", str(free_udp_port()), timeout_s=60)
    finally:
        taken.close()
    assert code == 1, out + err
    assert "slipstream event: error: the standings did not start (exit 2)" in err, err
    assert f"cannot serve on 127.0.0.1:{standings_port}" in err  # the end of its log
    assert "stopped the broker" in out
    with socket.socket() as probe:  # the broker it started is gone
        assert probe.connect_ex(("127.0.0.1", broker_port)) != 0
