"""The `slipstream` command: every subcommand reaches the entry point it stands for, with
the same flags and exit codes; the console script is installed by the set-up."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest

from tests.helpers import Processes, RunningProcess, run_command, wait_for


def test_the_console_script_is_installed_beside_python() -> None:
    assert (Path(sys.executable).parent / "slipstream").is_file()


async def test_help_lists_every_command_and_mistakes_exit_2_with_a_hint() -> None:
    code, out, _ = await run_command("-m", "slipstream", "--help")
    assert code == 0
    for command in ("broker", "stats", "pub", "sub", "replay", "live", "archive", "udp",
                    "udp-sim", "udp-replay", "event", "consumer", "run"):
        assert f"\n  {command} " in out
    code, _, err = await run_command("-m", "slipstream")
    assert code == 2
    code, _, err = await run_command("-m", "slipstream", "pu")
    assert code == 2 and "no command 'pu' (did you mean pub?)" in err
    code, out, _ = await run_command("-m", "slipstream", "sub", "--help")
    assert code == 0 and out.startswith("usage: slipstream sub")
    code, out, _ = await run_command("-m", "slipstream", "event", "--help")
    assert code == 0 and out.startswith("usage: slipstream event")
    assert "--local" in out and "--rigs N" in out


async def test_broker_pub_sub_and_stats_through_one_command(processes: Processes) -> None:
    broker = await processes.command("-m", "slipstream", "broker", "--port", "0")
    await wait_for(lambda: _listening(broker), "the broker to listen")
    address = "127.0.0.1:" + broker.out_path.read_text().split()[-1].rsplit(":", 1)[1]  # type: ignore[attr-defined]
    for n in (1, 2):
        code, out, err = await run_command("-m", "slipstream", "pub", "demo.hello",
                                           json.dumps({"n": n}), "--broker", address)
        assert (code, out) == (0, f"published demo.hello #{n}\n"), err
    code, out, err = await run_command("-m", "slipstream", "sub", "demo.>", "--from",
                                       "earliest", "--count", "2", "--json", "--broker", address)
    assert code == 0, err
    assert [json.loads(line)["data"] for line in out.splitlines()] == [{"n": 1}, {"n": 2}]
    code, out, _ = await run_command("-m", "slipstream", "stats", "--json", "--broker", address)
    assert code == 0 and json.loads(out)["topics"]["demo.hello"]["published"] == 2
    code, _, err = await run_command("-m", "slipstream", "pub", "demo.hello", "{not json",
                                     "--broker", address)
    assert code == 2 and "the JSON argument is not valid JSON" in err
    assert await broker.stop(signal.SIGINT) == 0


async def _listening(broker: RunningProcess) -> bool:
    """The broker's first line (its address) is out."""
    await asyncio.sleep(0)
    out: Path = broker.out_path  # type: ignore[attr-defined]
    return out.read_text().endswith("\n")


async def test_an_interrupted_pub_count_still_reports_how_far_it_got(
        processes: Processes) -> None:
    broker = await processes.broker()
    pub = await processes.command("-m", "slipstream", "pub", "demo.load", "--count", "100000",
                                  "--rate", "200", "--broker", broker.address)
    await wait_for(lambda: _published_some(broker.address), "some messages to arrive")
    assert await pub.stop(signal.SIGINT) == 0
    report = pub.log().strip().splitlines()[-1]
    assert report.startswith("published ") and " of 100,000)" in report, report


async def _published_some(address: str) -> bool:
    from broker import Client

    async with Client(address) as client:
        topics = (await client.stats())["topics"]
    return int(topics.get("demo.load", {}).get("published", 0)) > 0


@pytest.mark.parametrize(("command", "report"), [
    (["replay", "samples/livetiming/2020-08-07_70th-anniversary-fp2", "--speed", "1"],
     "replay: published"),
    (["udp", "--listen", "127.0.0.1:0"], "udp: received"),
    (["sub", ">"], "printer: handled"),
    (["consumer", "alerter", "--no-publish"], "alerter: handled"),
])
async def test_ctrl_c_is_exit_0_with_the_commands_report(
        processes: Processes, command: list[str], report: str) -> None:
    """One convention for every long-running command: Ctrl-C stops it cleanly, exit 0,
    after its usual report."""
    broker = await processes.broker()
    running = await processes.command("-m", "slipstream", *command, "--broker", broker.address)
    await wait_for(lambda: _connected(broker.address, 2), "the command to connect")
    assert await running.stop(signal.SIGINT) == 0
    assert report in running.log() + running.out_path.read_text()  # type: ignore[attr-defined]


async def _connected(address: str, connections: int) -> bool:
    from broker import Client

    async with Client(address, name="probe") as client:
        return len((await client.stats())["connections"]) >= connections


async def test_broker_errors_name_the_command_that_was_typed() -> None:
    code, _, err = await run_command("-m", "slipstream", "broker", "--port", "99999")
    assert code == 2 and err.strip().splitlines()[-1] == (
        "slipstream broker: error: --port 99999 is outside 0..65535")


async def test_stats_says_what_memory_holds_and_what_the_disk_holds(
        processes: Processes, tmp_path: Path) -> None:
    """Issue 25: after a restart `stats` said 'holding 6 of 1,073,741,824 B' of a broker
    that had 4 MB on disk (memory-held bytes only)."""
    broker = await processes.broker("--data-dir", str(tmp_path / "data"))
    code, _, err = await run_command("-m", "slipstream", "pub", "demo.big", "--size", "1000",
                                     "--count", "200", "--broker", broker.address)
    assert code == 0, err
    assert await broker.stop() == 0
    again = await processes.broker("--data-dir", str(tmp_path / "data"))
    code, out, err = await run_command("-m", "slipstream", "stats", "--broker", again.address)
    assert code == 0, err
    line = next(line for line in out.splitlines() if "topics holding" in line)
    in_memory = int(line.split("holding ")[1].split(" of ")[0].replace(",", ""))
    on_disk = int(line.split(" and ")[1].split(" B on disk")[0].replace(",", ""))
    assert "in memory (--max-memory)" in line
    assert on_disk >= 200 * 995 > in_memory  # 200 payloads of 995 bytes, and their records
