"""SSE keepalives, in process: the dashboard's web side on a loopback port, no broker."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from consumer.dashboard.hub import Hub
from consumer.dashboard.model import Dashboard
from consumer.dashboard.web import DashboardWeb, Limits


async def test_a_quiet_sse_stream_gets_keepalives_and_a_gone_client_is_noticed() -> None:
    hub = Hub(Dashboard())
    runner = web.AppRunner(DashboardWeb(hub, limits=Limits(keepalive_s=0.2)).app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        quiet = f"http://127.0.0.1:{port}/events?topics=nothing.here"
        async with aiohttp.ClientSession() as session, session.get(quiet) as response:
            assert response.status == 200
            first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
            assert first == b": keepalive\n\n"  # no frame matches, so only keepalives
            assert hub.stats()["viewers"]["sse"] == 1
        # The client has gone: the next keepalive fails to write and the hub lets it go.
        async with asyncio.timeout(5):
            while hub.fanout.clients:
                await asyncio.sleep(0.05)
        assert hub.stats()["viewers"] == {"total": 0, "websocket": 0, "sse": 0}
    finally:
        await runner.cleanup()
