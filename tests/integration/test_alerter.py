"""The alerter as users run it: the shipped rules on the real session, a scripted sequence
with a cooldown, alerts on all three outputs, and a bad rules file refused."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from broker import Client
from tests.helpers import (
    SESSION,
    Processes,
    RunningProcess,
    replay_session,
    run_command,
    wait_drained,
)

FLAGS = {"YELLOW", "DOUBLE YELLOW", "RED", "CHEQUERED", "BLACK AND WHITE", "BLACK AND ORANGE"}


def raw(topic: str) -> list[dict[str, Any]]:
    path = SESSION / f"{topic}.jsonStream"
    return [json.loads(line.lstrip("\ufeff")[12:])
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


async def alerts_in(log: Path, count: int, timeout_s: float = 15) -> list[dict[str, Any]]:
    async with asyncio.timeout(timeout_s):
        while not log.exists() or len(log.read_text().splitlines()) < count:
            await asyncio.sleep(0.05)
    return [json.loads(line) for line in log.read_text().splitlines()]


async def stop(alerter: RunningProcess) -> None:
    assert await alerter.stop(signal.SIGINT) == 0, alerter.log()


@pytest.mark.usefixtures("engine")
async def test_shipped_rules_on_the_real_session(processes: Processes, tmp_path: Path) -> None:
    broker = await processes.any_broker()
    await replay_session(broker.address)
    log = tmp_path / "alerts.jsonl"
    alerter = await processes.command("-m", "consumer", "alerter", "--from", "earliest",
                                      "--log", str(log), "--broker", broker.address)
    statuses = [s["Message"] for s in raw("TrackStatus")]
    flags = [item["Message"] for message in raw("RaceControlMessages")[1:]  # [0]: snapshot
             for item in (message["Messages"].values() if isinstance(message["Messages"], dict)
                          else message["Messages"]) if item.get("Flag") in FLAGS]
    await wait_drained(broker.address, "alerter")
    await stop(alerter)
    alerts = await alerts_in(log, 1)
    track = [(a["rule"], a["message"]) for a in alerts if a["topic"] == "live.TrackStatus"]
    assert track == [
        ("track-status", f"Track status: {statuses[1]} (was {statuses[0]})"),
        ("yellow-flag", "Yellow flag"),
        ("track-status", "Track status: VSCDeployed (was Yellow)"),
        ("safety-car", "Safety car: VSCDeployed"),
        ("track-status", "Track status: VSCEnding (was VSCDeployed)"),
        ("track-status", "Track status: AllClear (was VSCEnding)"),
        ("track-status", "Track status: Yellow (was AllClear)"),
        ("yellow-flag", "Yellow flag"),
        ("track-status", "Track status: Red (was Yellow)"),
        ("red-flag", "RED FLAG: session stopped")]
    assert [a["message"] for a in alerts if a["rule"] == "race-control-flag"] == [
        f"Race control: {text}" for text in flags]
    assert not [a for a in alerts if "pit" in a["message"]]  # routine: not alerts by default
    # Published too: the same alerts on alerts.<severity>.
    async with Client(broker.address) as client:
        topics = (await client.stats())["topics"]
    assert sum(t["published"] for name, t in topics.items() if name.startswith("alerts.")) \
        == len(alerts)
    assert topics["alerts.critical"]["published"] == 1
    assert f"alerter: {len(alerts)} alerts" in alerter.log()


async def test_a_scripted_sequence_fires_exactly_the_expected_alerts(
        processes: Processes, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "hot-brakes"\ntopic = "car.*"\nfield = "brakes.*"\n'
                     'condition = ">"\nvalue = 900\nrearm = 800\ncooldown_s = 10\n'
                     'severity = "critical"\nmessage = "brake {key} of {topic} at {value} C"\n')
    broker = await processes.broker()
    log = tmp_path / "alerts.jsonl"
    alerter = await processes.command("-m", "consumer", "alerter", "--rules", str(rules),
                                      "--log", str(log), "--broker", broker.address)
    async with Client(broker.address) as client:
        async with asyncio.timeout(10):
            while "alerter" not in [c["name"] for c in (await client.stats())["connections"]]:
                await asyncio.sleep(0.05)
        critical = await client.subscribe("alerts.critical")
        script = [(0, [700, 700]), (1, [950, 700]), (2, [960, 910]), (3, [850, 700]),
                  (4, [970, 700]), (5, [700, 700]), (6, [990, 700]), (7, [700, 700]),
                  (12, [905, 700])]  # (seconds, [front-left, front-right])
        for at_s, brakes in script:
            await client.publish("car.44", {"offset_s": at_s, "brakes": brakes})
        seen = [await asyncio.wait_for(anext(critical), 10) for _ in range(3)]
    logged = await alerts_in(log, 3)
    # clock_us is the source's clock (offset_s), broker_ts_us the broker's, in Unix µs.
    assert [a["clock_us"] for a in logged] == [1_000_000, 2_000_000, 12_000_000]
    assert all(a["broker_ts_us"] > 1_700_000_000 * 10**6 for a in logged)
    assert [(a["key"], a["value"], a["message"]) for a in logged] == [
        ("0", 950, "brake 0 of car.44 at 950 C"),   # t=1: hot
        ("1", 910, "brake 1 of car.44 at 910 C"),   # t=2: the other brake, its own key
        # t=12: re-armed at t=5, cooled down; it says the t=6 one was held back
        ("0", 905, "brake 0 of car.44 at 905 C (+1 more held back by the 10 s cooldown)")]
    # t=2,4: still hot or not below the re-arm mark; t=6: re-armed but within 10 s of t=1.
    assert [m.data["value"] for m in seen] == [950, 910, 905]
    await wait_drained(broker.address, "alerter")  # anything extra would be logged by now
    await stop(alerter)
    assert len(log.read_text().splitlines()) == 3


async def test_a_bad_rules_file_is_refused_at_startup(processes: Processes,
                                                     tmp_path: Path) -> None:
    broker = await processes.broker()
    rules = tmp_path / "rules.toml"
    rules.write_text('# my rules\n\n[[rule]]\nname = "oops"\ntopic = "t"\nfield = "v"\n'
                     'condition = "above"\nvalue = 3\nseverity = "info"\nmessage = "x"\n')
    code, _, err = await run_command("-m", "consumer", "alerter", "--rules", str(rules),
                                     "--broker", broker.address)
    assert code == 2
    assert f"{rules}, line 3 (rule 'oops'): unknown condition 'above'" in err
    code, _, err = await run_command("-m", "consumer", "alerter", "--rules", "missing.toml",
                                     "--broker", broker.address)
    assert code == 2 and "cannot read rules file missing.toml" in err
