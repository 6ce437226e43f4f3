"""deploy/: the systemd units and compose.yaml, checked and their commands run.

The units are verified by `systemd-analyze verify` where it exists, and their
ExecStart lines are run as plain processes (paths and ports moved into the
test's own directory); compose.yaml is parsed and each service's command is
run the same way, with the address its environment gives replaced by ours.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from broker import Client
from tests.helpers import REPLAY_MESSAGES, ROOT, Processes, RunningProcess, wait_for

DEPLOY = ROOT / "deploy"
UNITS = ("slipstream-broker.service", "slipstream-consumer@.service")


def exec_start(unit: str, instance: str = "") -> list[str]:
    """The unit's ExecStart as argv, its defaults filled in (no extra arguments)."""
    text = (DEPLOY / unit).read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    command = line.removeprefix("ExecStart=").replace("%i", instance)
    return [word for word in shlex.split(command) if not word.startswith("$")]


def on_this_machine(argv: list[str], directory: Path) -> list[str]:
    """A deployed command, run here: `slipstream` from this checkout, free ports, and the
    test's directory where the deployment keeps its data."""
    replacements = {"20778": "0", "127.0.0.1:8222": "127.0.0.1:0", "0.0.0.0:8222": "127.0.0.1:0",
                    "0.0.0.0:8080": "127.0.0.1:0", "0.0.0.0": "127.0.0.1"}
    command = ["-m", "slipstream"]
    for word in argv[1:]:
        word = replacements.get(word, word)
        for deployed in ("/var/lib/slipstream", "/data"):
            word = word.replace(deployed, str(directory), 1) if word.startswith(deployed) \
                else word
        command.append(word)
    assert Path(argv[0]).name == "slipstream", argv
    return command


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed here (the units are still run "
                           "by the next test)")
@pytest.mark.parametrize(("unit", "as_name"), [
    ("slipstream-broker.service", "slipstream-broker.service"),
    ("slipstream-consumer@.service", "slipstream-consumer@sqlite.service"),
])
def test_systemd_analyze_verifies_the_units(tmp_path: Path, unit: str, as_name: str) -> None:
    slipstream = Path(sys.executable).parent / "slipstream"  # the set-up installs it
    text = (DEPLOY / unit).read_text().replace("/opt/slipstream/.venv/bin/slipstream",
                                               str(slipstream))
    (tmp_path / as_name).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / as_name)],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


async def test_the_units_commands_run_a_broker_and_a_durable_sqlite_writer(
        processes: Processes, tmp_path: Path) -> None:
    broker = await processes.command(*on_this_machine(exec_start(UNITS[0]), tmp_path))
    address = await listening(broker)
    assert (tmp_path / "broker").is_dir()  # --data-dir as the unit gives it
    writer = await processes.command(
        *on_this_machine(exec_start(UNITS[1], "sqlite"), tmp_path),
        env={"SLIPSTREAM_BROKER": address}, cwd=tmp_path)  # WorkingDirectory
    async with Client(address) as client:
        await wait_for(lambda: _subscribed(client, "sqlite"), "the writer to subscribe")
        for n in range(3):
            await client.publish("live.Heartbeat", {"n": n})
    database = tmp_path / "data" / "slipstream.db"
    await wait_for(lambda: _rows(database, 3), "3 rows in the writer's database")
    assert live_rows(database) == 3
    assert await writer.stop(signal.SIGTERM) == 0
    assert await broker.stop(signal.SIGTERM) == 0


async def test_compose_services_run_as_plain_processes(processes: Processes,
                                                       tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"broker", "replay", "dashboard", "sqlite"}
    broker = await processes.command(*on_this_machine(services["broker"]["command"], tmp_path))
    address = await listening(broker)
    env = {key: value.replace("broker:20778", address)
           for key, value in services["sqlite"]["environment"].items()}
    assert env == {"SLIPSTREAM_BROKER": address}
    sqlite = await processes.command(*on_this_machine(services["sqlite"]["command"], tmp_path),
                                     env=env)
    dashboard = await processes.command(
        *on_this_machine(services["dashboard"]["command"], tmp_path), env=env)
    replay = services["replay"]["command"]
    assert replay[-2:] == ["--speed", "30"]
    replayed = await processes.command(  # as fast as it goes: the test need not take 3 min
        *on_this_machine([*replay[:-2], "--as-fast-as-possible"], tmp_path), env=env)
    assert await asyncio.wait_for(replayed.process.wait(), 60) == 0
    await wait_for(lambda: _rows(tmp_path / "slipstream.db", REPLAY_MESSAGES),
                   "the whole session in the writer's database", timeout_s=60)
    assert live_rows(tmp_path / "slipstream.db") == REPLAY_MESSAGES
    url = await _dashboard_url(dashboard)
    async with aiohttp.ClientSession() as session, session.get(url + "healthz") as response:
        assert response.status == 200
    for process in (dashboard, sqlite, broker):
        assert await process.stop(signal.SIGTERM) == 0


async def listening(broker: RunningProcess) -> str:
    out: Path = broker.out_path  # type: ignore[attr-defined]
    await wait_for(lambda: _has(out, "listening on"), "the broker to listen")
    line = next(line for line in out.read_text().splitlines() if "listening on" in line)
    return "127.0.0.1:" + line.rsplit(":", 1)[1]


async def _dashboard_url(dashboard: RunningProcess) -> str:
    out: Path = dashboard.out_path  # type: ignore[attr-defined]
    await wait_for(lambda: _has(out, "dashboard: http"), "the dashboard to serve")
    return out.read_text().split("dashboard: ", 1)[1].split()[0]


async def _has(path: Path, text: str) -> bool:
    return text in path.read_text()


async def _subscribed(client: Client, name: str) -> bool:
    stats = await client.stats()
    return any(c["name"] == name and c["subscriptions_total"] for c in stats["connections"])


def live_rows(database: Path) -> int:
    with sqlite3.connect(database) as db:
        (rows,) = db.execute("SELECT count(*) FROM messages WHERE topic LIKE 'live.%'").fetchone()
    return int(rows)


async def _rows(database: Path, count: int) -> bool:
    try:
        return database.exists() and live_rows(database) >= count
    except sqlite3.OperationalError:  # the writer has not made its tables yet
        return False
