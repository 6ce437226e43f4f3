"""The dashboard in a real browser: headless Chromium, driven by Playwright, during a replay
of the bundled session. `make test` installs Chromium (scripts/ensure-chromium.sh)."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import pytest

from tests.helpers import ROOT, SESSION, Processes, run_command

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed: make test installs Debian's chromium "
                             "package with apt-get, which needs root or sudo here")
playwright = pytest.importorskip("playwright.async_api")

CAPTURE = ROOT / "samples" / "game" / "session-2026.cap"
# Headless on a machine with no internet: no sandbox (we may be root), and none of the
# background requests to Google's servers that Chromium makes at start.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000


# Every track-status level the banner shows, in order, however briefly.
RECORD_LEVELS = """() => {
  window.levelsSeen = [];
  const banner = document.querySelector('#track-status');
  new MutationObserver(() => {
    if (window.levelsSeen.at(-1) !== banner.dataset.level) {
      window.levelsSeen.push(banner.dataset.level);
    }
  }).observe(banner, {attributes: true});
}"""


async def test_the_page_shows_the_session_live_and_survives_a_dashboard_restart(
        processes: Processes, tmp_path: Path) -> None:
    broker = await processes.broker()
    dashboard = await processes.dashboard(broker.address, "--game-label", "Simulated F1 game")
    async with playwright.async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(dashboard.url)
            await page.evaluate(RECORD_LEVELS)
            await page.wait_for_selector("#connection[data-state=stale]", timeout=TIMEOUT_MS)
            assert await page.locator("#tower tbody tr").count() == 0

            # 1:30:30 into the session at 15x: the track goes yellow ~2 s later, VSC ~4 s.
            replay = await processes.command(
                "-m", "producer", "replay", str(SESSION), "--from", "01:30:30", "--speed", "15",
                "--broker", broker.address)
            await page.wait_for_function(
                "document.querySelectorAll('#tower tbody tr').length === 20", timeout=TIMEOUT_MS)
            drivers = await page.locator("#tower td.tla").all_text_contents()
            assert len(set(drivers)) == 20 and {"HAM", "BOT", "VER", "LEC"} <= set(drivers)
            await page.wait_for_function("window.levelsSeen.includes('vsc')", timeout=TIMEOUT_MS)
            levels = [level for level in await page.evaluate("window.levelsSeen")
                      if level != "unknown"]
            assert levels[:3] == ["green", "yellow", "vsc"]
            await page.wait_for_selector("#race-control li:has-text('VIRTUAL SAFETY CAR "
                                         "DEPLOYED')", timeout=TIMEOUT_MS)
            await page.wait_for_selector("#connection[data-state=ok]", timeout=TIMEOUT_MS)
            assert await page.locator("#viewers").text_content() == "1 viewer"

            # A game session alongside: the bundled capture, replayed into the broker.
            code, _, err = await run_command("-m", "producer", "udp-replay", str(CAPTURE),
                                             "--as-fast-as-possible", "--broker", broker.address)
            assert code == 0, err
            await page.wait_for_selector("#game:not([hidden])", timeout=TIMEOUT_MS)
            await page.wait_for_function(
                "document.querySelectorAll('#game .leaderboard tbody tr').length === 20",
                timeout=TIMEOUT_MS)
            # game.session is another topic than the lap data: no order between them is
            # promised, so wait for it as for the rows, then check it.
            await page.wait_for_function(
                "(document.querySelector('#game .game-session').textContent || '')"
                ".startsWith('Silverstone, Race, 10 laps')", timeout=TIMEOUT_MS)
            assert (await page.locator("#game .game-session").text_content() or ""
                    ).startswith("Silverstone, Race, 10 laps")
            title = await page.locator("#game h2").text_content() or ""
            assert title.startswith("Simulated F1 game Silverstone")  # says what it is
            assert await page.locator("#game .leaderboard tr.player").count() == 1
            assert await page.locator("#game .tyres > div").count() == 4
            assert int(await page.locator("#game .car-rpm").text_content() or "0") > 0
            # Issue 25: another rig's game gets a panel of its own, beside the first.
            code, _, err = await run_command("-m", "producer", "udp-replay", str(CAPTURE),
                                             "--as-fast-as-possible", "--rig", "b",
                                             "--broker", broker.address)
            assert code == 0, err
            await page.wait_for_function(
                "document.querySelectorAll('#game-b .leaderboard tbody tr').length === 20",
                timeout=TIMEOUT_MS)
            assert (await page.locator("#game-b h2").text_content() or "").startswith(
                "Simulated F1 game: b Silverstone")
            assert await page.locator("section.game").count() == 2
            assert await page.locator("#game-b .game-events li").count() > 0
            screenshot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 20_000

            # The page says when its connection is lost, and comes back by itself.
            assert await dashboard.stop(signal.SIGTERM) == 0
            await page.wait_for_selector("#connection[data-state=lost]", timeout=TIMEOUT_MS)
            await processes.dashboard(broker.address, http=f"127.0.0.1:{dashboard.port}")
            await page.wait_for_selector("#connection[data-state=ok]", timeout=TIMEOUT_MS)
            await page.wait_for_function(
                "document.querySelectorAll('#tower tbody tr').length === 20", timeout=TIMEOUT_MS)
            assert errors == []
        finally:
            await browser.close()
    await replay.stop()


async def test_the_standings_pages_show_the_game_laps_and_take_the_admins_changes(
        processes: Processes, tmp_path: Path) -> None:
    broker = await processes.broker()
    code, _, err = await run_command("-m", "producer", "udp-replay", str(CAPTURE),
                                     "--as-fast-as-possible", "--broker", broker.address)
    assert code == 0, err
    standings = await processes.standings(broker.address, "--token", "s3cret",
                                          "--export-dir", str(tmp_path / "exports"))
    async with playwright.async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            errors: list[str] = []
            screen = await browser.new_page(viewport={"width": 1200, "height": 900})
            screen.on("pageerror", lambda error: errors.append(str(error)))
            asked: list[str] = []  # what the screen fetched: pushed to, it does not poll
            screen.on("request", lambda request: asked.append(request.url))
            await screen.goto(standings.url)  # the public page: no token
            await screen.wait_for_function(
                "document.querySelectorAll('#standings tbody tr').length === 20",
                timeout=TIMEOUT_MS)
            assert await screen.locator("#track").text_content() == "Silverstone"
            first = await screen.locator("#standings tbody tr").first.locator(
                "td").all_text_contents()
            assert first[0] == "1" and first[4] == "25" and first[1].startswith("DRIVER")

            admin = await browser.new_page(viewport={"width": 1200, "height": 900},
                                           accept_downloads=True)
            admin.on("pageerror", lambda error: errors.append(str(error)))
            # Issue 25: the admin logs in once, at /login; a session cookie does the rest.
            await admin.goto(standings.url + "admin")
            assert admin.url == standings.url + "login"
            await admin.fill("#password", "s3cret")
            await admin.click("#login-form button")
            await admin.wait_for_url(standings.url + "admin", timeout=TIMEOUT_MS)
            await admin.wait_for_function(
                "document.querySelectorAll('#standings tbody tr').length === 20",
                timeout=TIMEOUT_MS)
            await admin.fill("#driver-name", "Alice <b>Fast</b>")
            await admin.click("#driver-form button")
            await admin.wait_for_selector("#lap-driver option:has-text('Alice <b>Fast</b>')",
                                          state="attached", timeout=TIMEOUT_MS)
            await admin.select_option("#lap-driver", label="Alice <b>Fast</b>")
            await admin.fill("#lap-time", "1:75.000")
            await admin.click("#lap-form button")
            await admin.wait_for_selector("#message.error:has-text('seconds must be below 60')",
                                          timeout=TIMEOUT_MS)
            await admin.fill("#lap-time", "48.1s")
            await admin.click("#lap-form button")
            await admin.wait_for_selector("#message.ok", timeout=TIMEOUT_MS)
            # The screen at the event shows the new leader by itself, name as text.
            await screen.wait_for_function(
                "document.querySelector('#standings tbody tr td:nth-child(2)').textContent"
                " === 'Alice <b>Fast</b>'", timeout=TIMEOUT_MS)
            assert await screen.locator("#standings b").count() == 0
            assert await screen.locator("#standings tbody tr").count() == 21
            leader = await screen.locator("#standings tbody tr").first.locator(
                "td").all_text_contents()
            assert leader == ["1", "Alice <b>Fast</b>", "48.100", "", "25"]
            # The lap that landed is said, with where it puts its driver.
            assert await screen.locator("#landed").text_content() == \
                "Alice <b>Fast</b> 48.100, P1"
            assert not [url for url in asked if "/api/standings" in url]
            assert [url for url in asked if url.endswith("/api/events")]
            # Her laps, listed: struck, the screen goes back to the game's leader by
            # itself; restored, she leads again.
            await admin.locator("#standings tbody tr", has_text="Alice").get_by_role(
                "button", name="Laps").click()
            await admin.wait_for_selector("#laps tbody tr", timeout=TIMEOUT_MS)
            assert await admin.locator("#laps tbody tr td").nth(1).text_content() == "48.100"
            admin.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
            await admin.locator("#laps tbody tr").get_by_role("button", name="Strike").click()
            await screen.wait_for_function(
                "document.querySelector('#standings tbody tr td:nth-child(2)').textContent"
                " !== 'Alice <b>Fast</b>'", timeout=TIMEOUT_MS)
            await admin.wait_for_selector("#laps tr.struck", timeout=TIMEOUT_MS)
            await admin.locator("#laps tbody tr").get_by_role("button", name="Restore").click()
            await screen.wait_for_function(
                "document.querySelector('#standings tbody tr td:nth-child(2)').textContent"
                " === 'Alice <b>Fast</b>'", timeout=TIMEOUT_MS)

            async with admin.expect_download() as download_info:
                await admin.click("#export")
            download = await download_info.value
            assert download.suggested_filename.startswith("standings-silverstone-")
            exported = (tmp_path / "exports" / download.suggested_filename).read_text()
            assert exported.splitlines()[1].startswith("1,Alice <b>Fast</b>,48.100,48100,,25,")
            await screen.screenshot(path=str(tmp_path / "standings.png"), full_page=True)
            assert (tmp_path / "standings.png").stat().st_size > 10_000

            # The main dashboard shows the top ten from standings.table, linking to it all.
            dashboard = await processes.dashboard(broker.address)
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(dashboard.url)
            await page.wait_for_selector("#standings-panel:not([hidden])", timeout=TIMEOUT_MS)
            await page.wait_for_function(
                "document.querySelector('#standings tbody td:nth-child(2)').textContent"
                " === 'Alice <b>Fast</b>'", timeout=TIMEOUT_MS)
            assert await page.locator("#standings tbody tr").count() == 10
            assert await page.locator("#standings-page").get_attribute("href") == standings.url
            assert errors == []
        finally:
            await browser.close()
