"""A broker killed and restarted under a publisher: the loss is said, never silent (issue 12)."""

from __future__ import annotations

import asyncio
import signal
import socket

from broker.wire import protocol as p
from tests.helpers import Processes, RunningProcess, run_command, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def output(process: RunningProcess) -> str:
    return str(process.out_path.read_text())  # type: ignore[attr-defined]


async def test_subscriber_reports_a_gap_of_unknown_size_when_the_broker_restarts(
        processes: Processes) -> None:
    port = free_port()
    broker = await processes.broker(port=port)
    printer = await processes.command("-m", "consumer", "printer", "t",
                                      "--broker", broker.address)
    publisher = await processes.command("-m", "producer", "pub", "t", "--count", "100000",
                                        "--rate", "200", "--broker", broker.address)

    async def printed(text: str) -> bool:
        return text in output(printer)

    await wait_for(lambda: printed(" t #50 "), "50 messages at the printer")
    await broker.kill()
    broker = await processes.broker(port=port)
    await wait_for(lambda: printed("!! "), "the printer to report the restart", 20)
    await wait_for(lambda: _after_notice(printer, 10), "messages of the new epoch", 20)
    assert await printer.stop(signal.SIGINT) == 0
    assert await publisher.stop(signal.SIGINT) == 0
    notices = [line for line in output(printer).splitlines() if line.startswith("!!")]
    assert len(notices) == 1 and "the broker restarted (new epoch)" in notices[0], notices
    assert "1 gaps (0 messages missed, 1 of unknown size)" in printer.log()


async def _after_notice(printer: RunningProcess, count: int) -> bool:
    lines = output(printer).splitlines()
    notice = next(i for i, line in enumerate(lines) if line.startswith("!!"))
    return len(lines) - notice - 1 >= count


class DroppingBroker:
    """A hand-driven broker: welcomes each client, and on the first connection reads one
    PUB and hangs up before confirming it, so that publish is certainly in doubt."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        first = self.connections == 1
        decoder = p.FrameDecoder()
        while data := await reader.read(65536):
            for frame in decoder.feed(data):
                if type(frame) is p.Hello:
                    writer.write(p.encode(p.Welcome(1, "dropping", 1, 1 << 20)))
                elif type(frame) is p.Publish and first:
                    writer.close()  # the PUB arrived; its PUBACK never will
                    return
                elif type(frame) is p.Publish and frame.confirm_id is not None:
                    writer.write(p.encode(p.PublishAck(frame.confirm_id, 1, 1)))
        writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_confirmed_publish_in_doubt_exits_1_or_is_retried_with_retry() -> None:
    broker = DroppingBroker()
    address = f"127.0.0.1:{await broker.start()}"
    try:
        code, out, err = await run_command("-m", "producer", "pub", "t", '{"n": 1}',
                                           "--confirm", "--broker", address)
        assert code == 1, err
        assert "1 publish in doubt (to t)" in err and "use --retry" in err
        broker.connections = 0
        code, out, err = await run_command("-m", "producer", "pub", "t", '{"n": 1}',
                                           "--confirm", "--retry", "--broker", address)
        assert code == 0, err
        assert "published t #1; 1 publishes were in doubt" in out
        assert broker.connections == 2
    finally:
        await broker.close()
