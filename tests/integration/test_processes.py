"""Whole processes: the CLI tools end to end, restarts, signals and exit codes."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

from broker import Client, Message
from broker.embedded.client import EmbeddedClient
from tests.helpers import Processes, RunningProcess, run_command, wait_for


async def wait_for_lines(path: Path, count: int, timeout_s: float = 15.0) -> list[str]:
    def lines() -> list[str]:
        found = path.read_text().splitlines() if path.exists() else []
        return found if len(found) >= count else []
    return await wait_for(lines, f"{count:,} lines in {path.name}", timeout_s)


async def wait_for_subscribers(address: str, topic_count: int, timeout_s: float = 10.0) -> None:
    """Wait until the broker reports `topic_count` subscriptions (so publishing is safe)."""
    async with Client(address, name="probe") as probe:
        async def subscribed() -> bool:
            connections = (await probe.stats())["connections"]
            return sum(len(c["subscriptions"]) for c in connections) >= topic_count
        await wait_for(subscribed, f"{topic_count} subscriptions", timeout_s)


async def test_pub_to_printer_json_end_to_end(processes: Processes, tmp_path: Path) -> None:
    broker = await processes.broker()
    printer = await processes.command("-m", "consumer", "printer", "demo.>", "--json",
                                      "--count", "500", "--broker", broker.address)
    await wait_for_subscribers(broker.address, 1)
    code, _, err = await run_command("-m", "producer", "pub", "demo.load", "--count", "500",
                                     "--size", "200", "--broker", broker.address)
    assert code == 0 and "published 500 messages of 200 bytes" in err
    code, _, _ = await run_command("-m", "producer", "pub", "demo.one", '{"lap": 3}',
                                   "--broker", broker.address)
    assert code == 0
    assert await asyncio.wait_for(printer.process.wait(), 15) == 0
    lines = [json.loads(line) for line in printer.out_path.read_text().splitlines()]  # type: ignore[attr-defined]
    assert len(lines) == 500
    assert [(r["topic"], r["seq"], r["data"]["n"]) for r in lines] == [
        ("demo.load", n + 1, n) for n in range(500)]
    assert "printer: handled 500 messages, 0 gaps" in printer.log()


async def test_printer_durable_resumes_across_a_restart(processes: Processes) -> None:
    broker = await processes.broker()
    code, _, _ = await run_command("-m", "producer", "pub", "lap.times", "--count", "30",
                                   "--broker", broker.address)
    assert code == 0
    runs = []
    for _ in range(3):
        code, out, _ = await run_command(
            "-m", "consumer", "printer", "lap.>", "--json", "--count", "10", "--from", "earliest",
            "--durable", "board", "--broker", broker.address)
        assert code == 0
        runs.append([json.loads(line)["seq"] for line in out.splitlines()])
    assert runs == [list(range(1, 11)), list(range(11, 21)), list(range(21, 31))]


async def test_clients_reconnect_after_the_broker_is_killed_and_restarted(
        processes: Processes) -> None:
    broker = await processes.broker()
    async with Client(broker.address, name="consumer") as consumer, \
               Client(broker.address, name="producer") as producer:
        sub = await consumer.subscribe("live.>")
        for n in range(100):
            await producer.publish("live.TimingData", n)
        before = [await anext(sub) for _ in range(100)]
        await broker.kill()  # SIGKILL: no goodbye
        await wait_for(lambda: _disconnected(producer), "the producer to notice")
        for n in range(100, 200):  # buffered by the client while the broker is down
            await producer.publish("live.TimingData", n)
        restarted = await processes.broker(port=broker.port)
        after: list[Message] = []
        async with asyncio.timeout(15):
            while len(after) < 100:
                after.append(await anext(sub))
        assert producer.reconnects == 1 and consumer.reconnects == 1
        assert await producer.publish("live.TimingData", 200, confirm=True) == 101
        assert (await anext(sub)).data == 200
    assert [m.data for m in before] == list(range(100))
    assert [m.data for m in after] == list(range(100, 200))
    assert [m.seq for m in after] == list(range(1, 101))  # a new epoch numbers from 1 again
    assert after[0].epoch != before[0].epoch
    assert restarted.port == broker.port


async def test_plain_subscriber_is_told_what_it_missed_while_disconnected(
        processes: Processes) -> None:
    """A broker that stays up, a consumer connection that drops: the loss is counted."""
    broker = await processes.broker()
    async with Client(broker.address, name="consumer") as consumer, \
               Client(broker.address, name="producer") as producer:
        sub = await consumer.subscribe("t")
        await producer.publish("t", 0)
        assert (await anext(sub)).seq == 1
        assert isinstance(consumer, EmbeddedClient)
        assert consumer._writer is not None
        consumer._writer.transport.abort()  # simulate a network cut
        for n in range(1, 6):
            await producer.publish("t", n, confirm=True)
        async with asyncio.timeout(10):
            while consumer.reconnects == 0:
                await asyncio.sleep(0.02)
        await producer.publish("t", 6)
        message = await asyncio.wait_for(anext(sub), 10)
    assert (message.seq, message.data) == (7, 6)
    assert message.gap is not None and (message.gap.first_seq, message.gap.missed) == (2, 5)
    assert message.gap.reason.startswith("reconnect")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_broker_stops_cleanly_within_a_second(processes: Processes, signum: int) -> None:
    broker = await processes.broker()
    async with Client(broker.address, name="connected", reconnect=False) as client:
        sub = await client.subscribe(">")
        await client.publish("t", 1)
        await anext(sub)
        started = time.monotonic()
        code = await broker.stop(signum, timeout_s=5)
        elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 1.0
    assert "stopped" in broker.log()
    assert "Traceback" not in broker.log()


async def test_printer_stops_cleanly_on_ctrl_c_and_reports(processes: Processes) -> None:
    broker = await processes.broker()
    printer: RunningProcess = await processes.command(
        "-m", "consumer", "printer", ">", "--broker", broker.address)
    await wait_for_subscribers(broker.address, 1)
    async with Client(broker.address) as client:
        for n in range(3):
            await client.publish("t", n)
    await wait_for_lines(printer.out_path, 3)  # type: ignore[attr-defined]
    assert await printer.stop(signal.SIGINT) == 0
    assert ("printer: handled 3 messages, 0 gaps (0 messages missed), 0 handler errors"
            in printer.log())
    assert "Traceback" not in printer.log()


async def test_broker_stats_command_prints_topics(processes: Processes) -> None:
    broker = await processes.broker()
    async with Client(broker.address) as client:
        await client.publish("game.lap_data", {"lap": 1}, confirm=True)
    code, out, _ = await run_command("-m", "broker", "stats", "--json", "--broker", broker.address)
    assert code == 0
    assert json.loads(out)["topics"]["game.lap_data"]["published"] == 1
    code, out, _ = await run_command("-m", "broker", "stats", "--broker", broker.address)
    assert code == 0 and "game.lap_data" in out


@pytest.mark.parametrize(("args", "message"), [
    (["-m", "broker", "--retain-bytes", "1000"], "--retain-bytes 1,000 is smaller than"),
    (["-m", "broker", "--retain-bytes", "lots"], "is not a size like 65536"),
    (["-m", "broker", "--on-full", "panic"], "invalid choice: 'panic'"),
    (["-m", "broker", "--max-publish-rate", "-5"], "--max-publish-rate -5.0 must be 0 or more"),
    (["-m", "broker", "--max-memory", "1MiB"], "--max-memory 1,048,576 is smaller than"),
    (["-m", "broker", "--data-dir", "/nonexistent/d", "--max-frame", "100MiB",
      "--retain-bytes", "1GiB"], "the largest record --data-dir keeps"),
    (["-m", "broker", "--topic-ttl", "soon"], "is not a duration like 30s"),
    (["-m", "consumer", "printer", "--from", "yesterday"], "'yesterday' is not 'new'"),
    (["-m", "consumer", "printer", "--broker", "localhost:http"], "is not HOST:PORT"),
    (["-m", "producer", "pub", "t", "{not json"], "the JSON argument is not valid JSON"),
])
async def test_bad_configuration_exits_2_with_a_reason(args: list[str], message: str) -> None:
    code, _, err = await run_command(*args, "--broker" if args[1] == "producer" else "-q",
                                     *(["127.0.0.1:1"] if args[1] == "producer" else []))
    assert code == 2, err
    assert message in err


async def test_unreachable_broker_exits_1_with_a_reason() -> None:
    code, _, err = await run_command("-m", "consumer", "printer", "--broker", "127.0.0.1:1")
    assert code == 1
    assert "cannot reach broker at 127.0.0.1:1: Connection refused" in err
    assert "Traceback" not in err


async def test_wrong_token_exits_2_with_the_brokers_reason(processes: Processes) -> None:
    broker = await processes.broker("--token", "pit-wall")
    code, _, err = await run_command("-m", "producer", "pub", "t", "1", "--broker",
                                     broker.address, env={"SLIPSTREAM_TOKEN": "nope"})
    assert code == 2
    assert "refused the handshake [auth]: token missing or wrong" in err
    code, _, _ = await run_command("-m", "producer", "pub", "t", "1", "--broker",
                                   broker.address, env={"SLIPSTREAM_TOKEN": "pit-wall"})
    assert code == 0


async def test_port_in_use_exits_1_with_a_reason(processes: Processes) -> None:
    broker = await processes.broker()
    code, _, err = await run_command("-m", "broker", "--port", str(broker.port))
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{broker.port}" in err


async def test_killed_durable_consumer_resumes_without_loss_and_others_are_unharmed(
        processes: Processes, tmp_path: Path) -> None:
    broker = await processes.broker()
    printer_args = ["-m", "consumer", "printer", "race.>", "--json", "--from", "earliest",
                    "--durable", "board", "--broker", broker.address]
    first = await processes.command(*printer_args, stdout_path=tmp_path / "first.out")
    async with Client(broker.address, name="bystander") as bystander:
        watched = await bystander.subscribe("race.>")
        await wait_for_subscribers(broker.address, 2)
        publisher = await processes.command("-m", "producer", "pub", "race.laps", "--count",
                                            "1000", "--rate", "400", "--broker", broker.address)
        await wait_for_lines(tmp_path / "first.out", 300)
        await first.kill()  # SIGKILL mid-stream: no goodbye, no final ACK
        second = await processes.command(*printer_args, stdout_path=tmp_path / "second.out")
        seen = [m.seq for m in [await asyncio.wait_for(anext(watched), 10) for _ in range(1000)]]
        assert await asyncio.wait_for(publisher.process.wait(), 15) == 0
        lines = await wait_for_lines(tmp_path / "second.out", 1, timeout_s=10)
        async with asyncio.timeout(10):
            while json.loads(lines[-1])["seq"] != 1000:
                await asyncio.sleep(0.05)
                lines = (tmp_path / "second.out").read_text().splitlines()
        assert await second.stop(signal.SIGINT) == 0
    before = [json.loads(line)["seq"] for line in (tmp_path / "first.out").read_text().splitlines()]
    after = [json.loads(line)["seq"] for line in lines]
    assert seen == list(range(1, 1001))  # the bystander never noticed
    assert after == list(range(after[0], 1001))  # in order, nothing missing
    assert before == list(range(1, len(before) + 1))
    # At-least-once: the second resumes at or before where the first got to, and at most
    # the messages the first had not yet acknowledged are printed twice.
    assert after[0] <= len(before) + 1
    assert len(before) - after[0] + 1 <= 8192 // 4
    assert "0 gaps" in second.log()


async def _disconnected(client: Client) -> bool:
    return not client.connected
