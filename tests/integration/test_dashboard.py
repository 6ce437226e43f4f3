"""The dashboard as users run it: real broker, real replay of the bundled session, real
WebSocket and SSE clients, counting exactly what each one received."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import aiohttp
import pytest

from broker.client import Client
from tests.helpers import (
    REPLAY_MESSAGES,
    Processes,
    RunningDashboard,
    replay_session,
    run_command,
    wait_for,
)
from tests.unit.test_dashboard_model import race_control_lines

Frame = dict[str, Any]


async def until(condition: Callable[[], bool | Awaitable[bool]],
                timeout_s: float = 20.0) -> None:
    """Wait for `condition` (a function, or an async one) to hold."""
    await wait_for(condition, "the dashboard", timeout_s)


class Viewer:
    """A client that keeps every frame it gets, over WebSocket or SSE."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def events(self, prefix: str) -> list[Any]:
        return [f["data"] for f in self.frames if f["kind"] == "event" and
                f["topic"].startswith(prefix)]

    def last(self, topic: str) -> Any:
        return next((f["data"] for f in reversed(self.frames) if f["topic"] == topic), None)

    def topics(self) -> set[str]:
        return {f["topic"] for f in self.frames}

    async def websocket(self, session: aiohttp.ClientSession, url: str) -> None:
        async with session.ws_connect(url) as ws:
            async for message in ws:
                self.frames.append(json.loads(message.data))

    async def sse(self, session: aiohttp.ClientSession, url: str) -> None:
        async with session.get(url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            kind = None
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    frame = json.loads(line.removeprefix("data: "))
                    assert frame["kind"] == kind
                    self.frames.append(frame)


@asynccontextmanager
async def watching(*runs: Any) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(run) for run in runs]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def publish_alerts(broker: str, count: int, padding: int = 0, batch: int = 100) -> None:
    async with Client(broker, name="test-alerts") as client:
        for start in range(0, count, batch):
            for n in range(start, min(count, start + batch)):
                await client.publish("alerts.warning", {"severity": "warning", "rule": "test",
                                                        "message": f"alert {n}",
                                                        "padding": "x" * padding},
                                     confirm=n == count - 1)
            await asyncio.sleep(0.02)  # a steady stream, as a busy alerter would make


async def test_websocket_and_sse_clients_get_every_event_and_the_final_state(
        processes: Processes) -> None:
    broker = await processes.broker()
    dashboard = await processes.dashboard(broker.address)
    browser, script = Viewer(), Viewer()
    async with aiohttp.ClientSession() as session, watching(
            browser.websocket(session, dashboard.url + "ws"),
            script.sse(session, dashboard.url + "events?topics=live.RaceControlMessages,"
                                                "live.TrackStatus,alerts.>")):
        await until(lambda: viewers(session, dashboard, 2))
        await replay_session(broker.address)
        await publish_alerts(broker.address, 5)
        await until(lambda: len(browser.events("alerts.")) == 5 and
                    len(script.events("alerts.")) == 5)
        # live.> and alerts.> are separate subscriptions: wait for the last live message
        # too, then for the final state to reach both clients.
        await until(lambda: handled(session, dashboard, "live.", REPLAY_MESSAGES))
        state = await get_json(session, dashboard.url + "api/state")
        views = state["views"]
        await until(lambda: browser.last("dashboard.tower") == views["dashboard.tower"] and
                    browser.last("live.TrackStatus") == views["live.TrackStatus"] and
                    script.last("live.TrackStatus") == views["live.TrackStatus"])
        stats = await get_json(session, dashboard.url + "api/stats")

    assert sum(v for k, v in stats["handled"].items() if k.startswith("live.")) == \
        REPLAY_MESSAGES
    assert stats["handled"]["alerts.warning"] == 5
    expected_race_control = race_control_lines()
    for viewer in (browser, script):
        assert [m["Message"] for m in viewer.events("live.RaceControlMessages")] == \
            expected_race_control
        assert [a["message"] for a in viewer.events("alerts.")] == [
            f"alert {n}" for n in range(5)]
        assert viewer.last("live.TrackStatus")["level"] == "red"
        assert "dashboard.dropped" not in viewer.topics()
    assert len(browser.last("dashboard.tower")) == 20
    assert {"dashboard.heartbeat", "dashboard.viewers", "dashboard.session"} <= browser.topics()
    assert script.topics() == {"live.RaceControlMessages", "live.TrackStatus", "alerts.warning"}
    assert sorted(c["kind"] for c in stats["clients"]) == ["sse", "websocket"]
    assert all(c["dropped"] == 0 for c in stats["clients"])
    assert state["live"]["TrackStatus"] == {"Status": "5", "Message": "Red"}
    assert len(state["live"]["DriverList"]) == 20
    assert await dashboard.stop(signal.SIGINT) == 0
    assert "17,985 messages shown" in dashboard.log()



async def handled(session: aiohttp.ClientSession, dashboard: RunningDashboard, prefix: str,
                  count: int) -> bool:
    stats = await get_json(session, dashboard.url + "api/stats")
    return bool(sum(n for topic, n in stats["handled"].items() if topic.startswith(prefix))
                == count)


async def viewers(session: aiohttp.ClientSession, dashboard: RunningDashboard,
                  count: int) -> bool:
    stats = await get_json(session, dashboard.url + "api/stats")
    return bool(stats["viewers"]["total"] == count)


async def test_bad_requests_get_clear_answers_and_the_token_guards_everything(
        processes: Processes) -> None:
    broker = await processes.broker("--token", "s3cret")
    dashboard = await processes.dashboard(broker.address, "--token", "s3cret")
    url = dashboard.url
    async with aiohttp.ClientSession() as session:
        async def status(path: str, method: str = "GET", **kwargs: Any) -> tuple[int, str]:
            async with session.request(method, url + path, **kwargs) as response:
                return response.status, (await response.json())["error"]

        code, message = await status("api/state")
        assert code == 401 and "needs its token" in message
        code, message = await status("ws")
        assert code == 401
        async with session.get(url + "?token=s3cret") as page:
            assert page.status == 200 and "<canvas" in await page.text()
        await get_json(session, url + "api/stats?token=s3cret")
        async with session.get(url + "api/state",
                               headers={"Authorization": "Bearer s3cret"}) as response:
            assert response.status == 200
        code, message = await status("api/state?token=wrong")
        assert code == 401
        code, message = await status("nowhere?token=s3cret")
        assert code == 404 and "no such path: /nowhere" in message and "/events" in message
        code, message = await status("events?topics=live..x&token=s3cret")
        assert code == 400 and "topics: bad pattern 'live..x'" in message
        code, message = await status("api/state?token=s3cret&pretty=1")
        assert code == 400 and "unknown query parameter 'pretty'" in message
        code, message = await status("api/state?token=s3cret", method="POST")
        assert code == 405

        ws_url = url + "ws?token=s3cret"
        async with session.ws_connect(ws_url) as ws:
            await ws.send_str('{"type": "ping"}')
            await ws.send_str('{"type": "dance"}')
            await ws.send_str("not json")
            await ws.send_str('{"type": "topics", "topics": "alerts.>"}')
            notices = []
            async for received in ws:
                frame = json.loads(received.data)
                if frame["kind"] == "notice":
                    notices.append(frame)
                if len(notices) == 4:
                    break
            assert [n["topic"] for n in notices] == [
                "dashboard.pong", "dashboard.error", "dashboard.error", "dashboard.topics"]
            assert "unknown request 'dance'" in notices[1]["data"]["error"]
            assert notices[3]["data"] == {"topics": ["alerts.>"]}
        async with session.ws_connect(ws_url) as ws:  # over the 4 KiB inbound limit
            await ws.send_str("x" * 5000)
            async with asyncio.timeout(5):
                async for _ in ws:
                    pass
            assert ws.close_code == 1009
        async with session.ws_connect(ws_url) as ws:  # far over 5 messages a second
            for _ in range(40):
                await ws.send_str('{"type": "ping"}')
            async with asyncio.timeout(5):
                async for _ in ws:
                    pass
            assert ws.close_code == 1008
    code, _, err = await run_command("-m", "consumer", "dashboard", "--http", "nonsense",
                                     "--broker", broker.address, "--token", "s3cret")
    assert code == 2 and "--http 'nonsense' is not HOST:PORT" in err
    code, _, err = await run_command("-m", "consumer", "dashboard", "--http",
                                     f"127.0.0.1:{dashboard.port}", "--broker", broker.address,
                                     "--token", "s3cret")
    assert code == 2 and f"cannot serve on 127.0.0.1:{dashboard.port}" in err
    code, _, err = await run_command("-m", "consumer", "dashboard", "--refresh", "0",
                                     "--broker", broker.address, "--token", "s3cret")
    assert code == 2 and "--refresh must be more than 0" in err


async def stalled_websocket(port: int) -> socket.socket:
    """A browser that completes the WebSocket handshake, then never reads another byte."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    host = f"Host: 127.0.0.1:{port}\r\n".encode()  # as a browser sends it
    await loop.sock_sendall(sock, b"GET /ws HTTP/1.1\r\n" + host + b"Upgrade: websocket\r\n"
                                  b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                                  b"Sec-WebSocket-Key: c2xpcHN0cmVhbSB0ZXN0IQ==\r\n\r\n")
    reply = await loop.sock_recv(sock, 1024)
    assert reply.startswith(b"HTTP/1.1 101"), reply
    return sock


async def test_a_stalled_browser_does_not_hold_up_the_others(processes: Processes) -> None:
    broker = await processes.broker()
    dashboard = await processes.dashboard(broker.address, "--max-events", "256",
                                          "--send-timeout", "10")
    count = 3000  # 4 KB each: 12 MB, far more than the stalled socket's buffers hold
    reader = Viewer()
    stalled = await stalled_websocket(dashboard.port)
    try:
        async with aiohttp.ClientSession() as session, watching(
                reader.websocket(session, dashboard.url + "ws")):
            await until(lambda: viewers(session, dashboard, 2))
            # About 1,000 a second (4 MB/s), read by a client in this same process.
            await publish_alerts(broker.address, count, padding=4000, batch=20)
            await until(lambda: len(reader.events("alerts.")) == count)
            stats = await get_json(session, dashboard.url + "api/stats")
            # Still connected, still stalled: wait until the dashboard gives up on it.
            await until(lambda: viewers(session, dashboard, 1), 30)
    finally:
        stalled.close()

    assert [a["message"] for a in reader.events("alerts.")] == [f"alert {n}"
                                                              for n in range(count)]
    assert "dashboard.dropped" not in reader.topics()
    assert stats["handled"]["alerts.warning"] == count
    by_kind = {c["id"]: c for c in stats["clients"]}
    stuck, fine = sorted(by_kind.values(), key=lambda c: c["sent"])
    assert fine["dropped"] == 0 and fine["sent"] >= count
    assert stuck["dropped"] > 0 and stuck["sent"] < count // 2
    assert stuck["queue_depth"] <= 256 + 10  # its events, plus one value per state view
    assert "took no frame for 10 s: disconnecting it" in dashboard.log()


async def test_other_sites_and_rebound_names_are_refused(processes: Processes) -> None:
    """A page on another site must not read the feed (Origin), nor a DNS-rebinding one (Host)."""
    broker = await processes.broker()
    dashboard = await processes.dashboard(broker.address)
    own = f"127.0.0.1:{dashboard.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(dashboard.url + "api/state",
                               headers={"Host": f"attacker.example:{dashboard.port}"}) as r:
            assert r.status == 403 and "DNS-rebinding" in (await r.json())["error"]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(dashboard.url + "ws",
                                     headers={"Origin": "http://evil.example"})
        assert refused.value.status == 403
        async with session.get(dashboard.url + "events",
                               headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403
        # The dashboard's own page, under each loopback name, still works.
        for name in (own, f"localhost:{dashboard.port}"):
            async with session.ws_connect(dashboard.url + "ws", headers={
                    "Host": name, "Origin": f"http://{name}"}) as ws:
                assert await ws.receive_json(timeout=5)  # the first frame of the feed


async def test_healthz_needs_no_token_and_follows_the_broker(processes: Processes) -> None:
    broker = await processes.broker("--token", "s3cret")
    dashboard = await processes.dashboard(broker.address, "--token", "s3cret")
    async with aiohttp.ClientSession() as session:
        async def health() -> tuple[int, Any]:
            async with session.get(dashboard.url + "healthz",
                                   headers={"Host": "probe.internal:1"}) as response:
                return response.status, await response.json()

        await until(lambda: _is(health(), (200, {"status": "ok"})))
        assert await broker.stop(signal.SIGTERM) == 0
        await until(lambda: _is(health(), (503, {"status": "broker unreachable"})))


async def _is(answer: Awaitable[tuple[int, Any]], expected: tuple[int, Any]) -> bool:
    return await answer == expected


async def test_a_second_replay_into_the_same_broker_starts_the_page_again(
        processes: Processes) -> None:
    """The second run's race control, flags and tower replace the first's: nothing of the
    first is shown twice, for a viewer watching or a dashboard started afterwards."""
    broker = await processes.broker()
    watching_dashboard = await processes.dashboard(broker.address)
    await replay_session(broker.address)
    await replay_session(broker.address)
    late_dashboard = await processes.dashboard(broker.address)  # catches up topic by topic
    async with aiohttp.ClientSession() as session:
        for dashboard in (watching_dashboard, late_dashboard):
            await until(partial(handled, session, dashboard, "live.", 2 * REPLAY_MESSAGES))
            state = await get_json(session, dashboard.url + "api/state")
            race_control = [e["data"]["Message"] for e in state["events"]
                            if e["topic"] == "live.RaceControlMessages"]
            assert race_control == race_control_lines()  # once: the second run's
            assert state["views"]["live.TrackStatus"]["level"] == "red"
            assert len(state["views"]["dashboard.tower"]) == 20
