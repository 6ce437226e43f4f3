"""The JavaScript client (clients/js, issue 26): its own tests under Node's test runner
against real brokers, and the client in headless Chromium from a page this test serves,
talking to a broker over WebSocket beside a Python client."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest
from aiohttp import web

from broker import Client
from tests.helpers import ROOT, Processes, replay_session
from tests.integration.test_dashboard_browser import CHROMIUM, FLAGS, TIMEOUT_MS

JS = ROOT / "clients" / "js"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(
    NODE is None or not (JS / "node_modules" / "@msgpack" / "msgpack").is_dir(),
    reason="node, or clients/js's dependency, is missing: make test installs the "
           "dependency with npm (scripts/ensure-node-deps.sh) when node and npm are here")


@needs_node
async def test_the_javascript_clients_own_tests_pass_under_node() -> None:
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE, "--experimental-websocket", "--test", "test/", cwd=JS,
        env={**os.environ, "SLIPSTREAM_PYTHON": sys.executable},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 100)
    text = out.decode()
    assert process.returncode == 0, text[-4000:]
    assert "# fail 0" in text and "# pass 11" in text, text[-2000:]


PAGE = """<!doctype html>
<meta charset="utf-8">
<script type="importmap">
{"imports": {"@msgpack/msgpack": "/node_modules/@msgpack/msgpack/dist.esm/index.mjs"}}
</script>
<p>received <span id="count">0</span> <span id="done"></span> <span id="error"></span></p>
<script type="module">
import { connect } from "/slipstream.js";
try {
  const client = await connect(new URLSearchParams(location.search).get("broker"),
                               { name: "chromium-page" });
  let count = 0;
  for await (const message of client.subscribe("page.>", { from: "earliest" })) {
    count += 1;
    document.getElementById("count").textContent = count;
    if (message.data.last) break;
  }
  await client.publish("reply.page", { got: count, who: await client.connections() },
                       { confirm: true });
  await client.close();
  document.getElementById("done").textContent = "done";
} catch (error) {
  document.getElementById("error").textContent = String(error.message || error);
}
</script>
"""


async def serve_page() -> tuple[web.AppRunner, int]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def client(request: web.Request) -> web.FileResponse:
        return web.FileResponse(JS / "slipstream.js")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/slipstream.js", client)
    app.router.add_static("/node_modules", JS / "node_modules")
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


@needs_node
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
async def test_the_client_in_chromium_reads_and_writes_beside_a_python_client(
        processes: Processes, tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.async_api")
    runner, port = await serve_page()
    try:
        origin = f"http://127.0.0.1:{port}"
        broker = await processes.broker("--ws", "0", "--ws-allow-origin", origin)
        count = 2_000
        async with Client(broker.address, name="python") as python:
            for index in range(count):
                await python.publish("page.x", {"n": index, "last": index == count - 1})
            replies = await python.subscribe("reply.page", start="earliest")
            async with playwright.async_playwright() as driver:
                browser = await driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                try:
                    page = await browser.new_page()
                    errors: list[str] = []
                    page.on("pageerror", lambda error: errors.append(str(error)))
                    await page.goto(f"{origin}/?broker={broker.ws_url}")
                    await page.wait_for_selector("#done:has-text('done')", timeout=TIMEOUT_MS)
                    assert await page.locator("#count").text_content() == str(count)
                    assert errors == []
                    # The same page from another origin (localhost is not 127.0.0.1 to a
                    # browser): the broker refuses it.
                    other = await browser.new_page()
                    await other.goto(f"http://localhost:{port}/?broker={broker.ws_url}")
                    await other.wait_for_selector("#error:not(:empty)", timeout=TIMEOUT_MS)
                    assert "cannot connect" in (await other.locator("#error").text_content()
                                                or "")
                finally:
                    await browser.close()
            reply = await asyncio.wait_for(anext(replies), 10)
        assert reply.data["got"] == count
        assert {"python", "chromium-page"} <= set(reply.data["who"])  # presence
        assert f"refusing WebSockets from pages of 'http://localhost:{port}'" in broker.log()
    finally:
        await runner.cleanup()


@needs_node
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
async def test_the_web_example_shows_a_replays_laps_and_who_is_watching(
        processes: Processes) -> None:
    """examples/web/: under 100 lines of HTML and JS, the laps of the bundled session from
    the broker's retained history, and presence from its connection list."""
    playwright = pytest.importorskip("playwright.async_api")
    page_file = ROOT / "examples" / "web" / "index.html"
    assert len(page_file.read_text().splitlines()) < 100
    app = web.Application()
    app.router.add_static("/examples", ROOT / "examples")
    app.router.add_static("/clients", ROOT / "clients")
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    origin = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        broker = await processes.broker("--ws", "0", "--ws-allow-origin", origin)
        await replay_session(broker.address)  # laps.live is in the broker's history now
        async with Client(broker.address) as client:
            laps = (await client.stats(topics="laps.live"))["topics"]["laps.live"]["published"]
        async with playwright.async_playwright() as driver:
            browser = await driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                pages = [await browser.new_page() for _ in range(2)]
                for page in pages:
                    await page.goto(f"{origin}/examples/web/index.html?broker={broker.ws_url}")
                page = pages[0]
                await page.wait_for_function(
                    "document.querySelectorAll('#laps tr').length === 20", timeout=TIMEOUT_MS)
                await page.wait_for_function(
                    "document.querySelector('#watching').textContent.startsWith('2 pages')",
                    timeout=TIMEOUT_MS)
                counted = await page.evaluate(
                    "[...document.querySelectorAll('#laps tr td:nth-child(5)')]"
                    ".reduce((sum, cell) => sum + Number(cell.textContent), 0)")
                assert counted == laps  # every lap of the session, from the history
                leader = await page.locator("#laps tr").first.locator("td").all_text_contents()
                assert leader[1].startswith("HAM") and leader[2] == "1:25.606"
            finally:
                await browser.close()
    finally:
        await runner.cleanup()
