"""A broker killed and restarted under a publisher: the loss is said, never silent (issue 12)."""

from __future__ import annotations

import signal
import socket

from tests.helpers import Processes, RunningProcess, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _says(process: RunningProcess, text: str) -> bool:
    out = process.out_path.read_text()  # type: ignore[attr-defined]
    return text in out or text in process.log()


async def test_subscriber_reports_a_gap_of_unknown_size_when_the_broker_restarts(
        processes: Processes) -> None:
    port = free_port()
    broker = await processes.broker(port=port)
    printer = await processes.command("-m", "consumer", "printer", "t",
                                      "--broker", broker.address)
    publisher = await processes.command("-m", "producer", "pub", "t", "--count", "100000",
                                        "--rate", "200", "--confirm", "--retry",
                                        "--broker", broker.address)
    await wait_for(lambda: _says(printer, " t #50 "), "50 messages at the printer")
    await broker.kill()
    broker = await processes.broker(port=port)
    await wait_for(lambda: _says(printer, "may be lost"), "the printer to report the restart")
    await wait_for(lambda: _says(publisher, "in doubt"), "the publisher to report in-doubt")
    await wait_for(lambda: _says(printer, " t #20 "), "messages of the new epoch")
    assert await printer.stop(signal.SIGINT) == 0
    assert await publisher.stop(signal.SIGINT) == 0
    out = printer.out_path.read_text()  # type: ignore[attr-defined]
    notices = [line for line in out.splitlines() if line.startswith("!!")]
    assert len(notices) == 1 and "the broker restarted (new epoch)" in notices[0], notices
    assert "1 gaps (0 messages missed, 1 of unknown size)" in printer.log()


async def test_confirmed_publish_in_doubt_without_retry_exits_1_and_says_so(
        processes: Processes) -> None:
    port = free_port()
    broker = await processes.broker(port=port)
    publisher = await processes.command("-m", "producer", "pub", "t", "--count", "100000",
                                        "--rate", "200", "--confirm",
                                        "--broker", broker.address)
    await wait_for(lambda: _published(broker), "some publishes")
    await broker.kill()
    await wait_for(lambda: _exited(publisher), "the publisher to stop")
    assert publisher.process.returncode == 1
    assert "1 publish in doubt (to t)" in publisher.log()
    assert "--retry" in publisher.log()


async def _published(broker: object) -> bool:
    from broker import Client
    async with Client(broker.address, name="probe") as client:  # type: ignore[attr-defined]
        topics = (await client.stats())["topics"]
        return "t" in topics and topics["t"]["published"] >= 20


async def _exited(process: RunningProcess) -> bool:
    return process.process.returncode is not None
