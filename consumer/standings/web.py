"""The standings' HTTP side, on aiohttp: a public page, an admin page and their API.

    GET  /                      the standings, for a screen at the event (public)
    GET  /api/standings         the same as JSON (public)
    GET  /api/events            the same, pushed at every change (public; SSE)
    GET  /healthz               200 while the broker is connected, else 503 (public)
    GET  /login, POST /api/login, POST /api/logout   the admin's session (public)
    GET  /admin                 drivers, lap times, the track, who is driving (admin)
    POST /api/admin/ACTION      one change, as JSON (admin; see ACTIONS)
    GET  /api/admin/laps?driver=ID[&track=]   every lap of a driver (admin)
    GET  /api/export[?track=]   the table as CSV with points, also written to the
                                export directory under a timestamped name (admin)

With a password (the consumer's --admin-password, else its --token), the
admin side wants a session: the admin logs in once at /login, with the
password, and gets an HTTP-only cookie (scripts may send `Authorization:
Bearer PASSWORD` instead). The password never goes in an address, where it
would sit in the browser's history and on the screen. The standings
themselves stay public, since they are made to be shown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from consumer.standings.keeper import NotRecorded, StandingsKeeper, new_id
from consumer.standings.table import MAX_DRIVERS, StandingsError, clean_name
from consumer.website import SESSION_COOKIE, SESSION_TTL_S, Guard, LoginRefused, error, health
from f1vocab.game.topics import RigNameError, check_rig
from f1vocab.timing import LapTimeError, parse_lap_time

log = logging.getLogger("slipstream.standings")

STATIC = Path(__file__).with_name("static")
MAX_BODY = 4096  # an admin request is a name or a lap time
PUBLIC = {"/", "/api/standings", "/api/events", "/healthz", "/login", "/api/login",
          "/api/logout"}
# The screens' pushed table (/api/events): at most this many at once, a comment line when
# nothing changes (proxies keep the stream; a screen gone is found), and a screen that
# takes nothing for SEND_TIMEOUT_S is dropped so it cannot hold the standings.
MAX_EVENT_STREAMS = 100
KEEPALIVE_S = 15.0
SEND_TIMEOUT_S = 10.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Change = tuple[str, dict[str, Any]]  # (topic, message) to record


class Refused(Exception):
    """An admin request that cannot be done as asked: the status and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class StandingsWeb:
    def __init__(self, keeper: StandingsKeeper, export_dir: Path, token: str | None = None,
                 allow_hosts: tuple[str, ...] = ()) -> None:
        self.keeper = keeper
        self.standings = keeper.standings
        self.export_dir = export_dir
        self.guard = Guard(token, allow_hosts, token_in_url=False)
        self._claimed: set[str] = set()  # driver names (casefolded) published, not yet back
        self._streams = 0  # /api/events open now
        self.actions: dict[str, Callable[[dict[str, Any]], Change]] = {
            "add-driver": self._add_driver, "rename": self._rename, "lap": self._lap,
            "strike-lap": self._strike_lap, "restore-lap": self._restore_lap,
            "remove-lap": self._strike_lap,  # its first name
            "track": self._track, "driving": self._driving,
            "remove-driver": self._remove_driver}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        app.router.add_get("/", self._page("standings.html"))
        app.router.add_get("/admin", self._page("admin.html"))
        app.router.add_get("/login", self._page("login.html"))
        app.router.add_post("/api/login", self.log_in)
        app.router.add_post("/api/logout", self.log_out)
        app.router.add_get("/api/admin/laps", self.laps)
        app.router.add_get("/api/standings", self.table)
        app.router.add_get("/api/events", self.events)
        app.router.add_get("/api/export", self.export)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_post("/api/admin/{action}", self.admin)
        return app

    def serving_at(self, host: str, port: int) -> None:
        self.guard.serving_at(host, port)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        foreign = self.guard.foreign(request)
        if foreign is not None:
            return error(403, foreign)
        if request.path not in PUBLIC and not self.guard.authorised(request):
            if request.path == "/admin" and request.method == "GET":
                raise web.HTTPSeeOther("/login")
            return error(401, "the admin side needs the admin password: log in at /login "
                              "(or send Authorization: Bearer PASSWORD)")
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return error(404, f"no such path: {request.path} (pages: /, /admin; API: "
                              "/api/standings, /api/export, POST /api/admin/ACTION)")
        except web.HTTPMethodNotAllowed:
            return error(405, f"{request.method} is not allowed on {request.path}")
        except web.HTTPRequestEntityTooLarge:
            return error(413, f"a request body is at most {MAX_BODY} bytes")

    # --- reading ---------------------------------------------------------------------

    def _page(self, name: str) -> Handler:
        text = (STATIC / name).read_text(encoding="utf-8").replace(
            "/*STYLE*/", (STATIC / "style.css").read_text(encoding="utf-8"))

        async def page(request: web.Request) -> web.Response:
            return web.Response(text=text, content_type="text/html",
                                headers={"Cache-Control": "no-store"})
        return page

    async def table(self, request: web.Request) -> web.Response:
        return web.json_response(self._view())

    async def events(self, request: web.Request) -> web.StreamResponse:
        """The table pushed as Server-Sent Events: now, then at every change (what the
        public page shows, without polling)."""
        if self._streams >= MAX_EVENT_STREAMS:
            return error(503, f"{MAX_EVENT_STREAMS} screens follow the standings already; "
                              "poll /api/standings instead")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store"})
        self._streams += 1
        try:
            await response.prepare(request)
            version = None
            while True:
                if version is not None and not await self.keeper.changed(version, KEEPALIVE_S):
                    await asyncio.wait_for(response.write(b": keepalive\n\n"), SEND_TIMEOUT_S)
                    continue
                view = self._view()
                version = view["version"]
                frame = f"event: standings\ndata: {json.dumps(view)}\n\n".encode()
                await asyncio.wait_for(response.write(frame), SEND_TIMEOUT_S)
        except TimeoutError:
            if request.transport is not None:
                request.transport.abort()  # a screen that takes nothing: let it go
        except (ConnectionError, RuntimeError):
            pass  # the screen went away
        finally:
            self._streams -= 1
        return response

    async def log_in(self, request: web.Request) -> web.Response:
        """{"password"} -> a session cookie, HTTP-only (no page script can read it) and
        same-site only (another site's page cannot send it)."""
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        password = body.get("password") if isinstance(body, dict) else None
        if not isinstance(password, str):
            return error(400, 'send {"password": "..."} as JSON')
        try:
            session = self.guard.log_in(password)
        except LoginRefused as exc:
            log.warning("admin login refused from %s: %s", request.remote, exc)
            return error(exc.status, str(exc))
        log.info("admin logged in from %s", request.remote)
        response = web.json_response({"admin": "/admin"})
        response.set_cookie(SESSION_COOKIE, session, max_age=int(SESSION_TTL_S), path="/",
                            httponly=True, samesite="Strict", secure=request.secure)
        return response

    async def log_out(self, request: web.Request) -> web.Response:
        self.guard.log_out(request)
        response = web.json_response({"login": "/login"})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def laps(self, request: web.Request) -> web.Response:
        """Every lap of a driver on a track (default: the current one), struck or not."""
        try:
            driver = self._driver({"driver": request.query.get("driver")})
        except Refused as exc:
            return error(exc.status, str(exc))
        track = request.query.get("track") or self.standings.track
        return web.json_response({"driver": driver, "name": self.standings.drivers[driver],
                                  "track": track,
                                  "laps": self.standings.laps_of(driver, track)})

    async def healthz(self, request: web.Request) -> web.Response:
        client = self.keeper.client()
        return health(client is not None and client.connected)

    async def export(self, request: web.Request) -> web.Response:
        """The table as CSV: written to the export directory, and sent back."""
        track = request.query.get("track") or self.standings.track
        if track is None:
            return error(409, "no track yet, so no standings to export: set the track on "
                              "the admin page (or start a source)")
        if track not in self.standings.laps and track != self.standings.track:
            return error(404, f"no standings for track {track!r} (tracks with laps: "
                              f"{', '.join(sorted(self.standings.laps)) or 'none'})")
        # With a BOM: Excel then reads the file as UTF-8 (else "Chloé" shows as "ChloÃ©").
        text = "\ufeff" + self.standings.csv_text(track)
        slug = re.sub(r"[^a-z0-9]+", "-", track.lower()).strip("-") or "track"
        name = f"standings-{slug}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.csv"
        path = self.export_dir / name
        try:
            self.export_dir.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".csv.partial")
            with partial.open("w", encoding="utf-8", newline="") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            partial.replace(path)
        except OSError as exc:
            log.error("export not written to %s: %s", path, exc.strerror or exc)
            return error(507, f"the export could not be written to {path}: "
                              f"{exc.strerror or exc}")
        log.info("exported %s standings to %s", track, path)
        return web.Response(text=text, content_type="text/csv", charset="utf-8", headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Written-To": str(path)})

    def _view(self) -> dict[str, Any]:
        view = self.standings.view()
        drivers = self.standings.drivers
        view["driving_name"] = drivers.get(self.standings.driving or "")
        view["rigs"] = sorted(set(self.keeper.rigs) | set(self.standings.driving_by_rig))
        view["driving_names"] = {rig: drivers.get(driver)
                                 for rig, driver in self.standings.driving_by_rig.items()}
        view["drivers"] = [{"id": driver, "name": name}
                           for driver, name in self.standings.drivers.items()]
        return view

    # --- changing --------------------------------------------------------------------

    async def admin(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        make = self.actions.get(action)
        if make is None:
            return error(404, f"no admin action {action!r} (actions: "
                              f"{', '.join(self.actions)})")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "send the request as a JSON object")
        try:
            if not isinstance(body, dict):
                raise Refused(400, "send the request as a JSON object")
            topic, message = make(body)
            # Claimed from the check to the echo: a second add of the name racing this
            # one is refused here (and would be refused where changes are applied).
            claim = str(message["name"]).casefold() if topic == "standings.driver" else ""
            if claim:
                self._claimed.add(claim)
            try:
                shown = await self.keeper.record(topic, message)
            finally:
                self._claimed.discard(claim)
        except Refused as exc:
            return error(exc.status, str(exc))
        except (StandingsError, LapTimeError) as exc:
            return error(400, str(exc))
        except NotRecorded as exc:
            return error(503, str(exc))
        log.info("admin: %s %s", action, json.dumps(message, ensure_ascii=False))
        return web.json_response({"recorded": topic, "shown": shown,
                                  "standings": self._view()}, status=200 if shown else 202)

    def _driver(self, body: dict[str, Any]) -> str:
        """The driver's id, from its id or its name (names are unique, in any case)."""
        driver = body.get("driver")
        drivers = self.standings.drivers
        if isinstance(driver, str) and driver not in drivers:
            driver = next((known for known, name in drivers.items()
                           if name.casefold() == driver.strip().casefold()), driver)
        if not isinstance(driver, str) or driver not in drivers:
            raise Refused(404, f"no driver {driver!r}: add the driver first")
        return driver

    def _unique(self, name: str, driver: str | None = None) -> str:
        for known, known_name in self.standings.drivers.items():
            if known != driver and known_name.casefold() == name.casefold():
                raise Refused(409, f"there is already a driver named {known_name!r}")
        if name.casefold() in self._claimed:
            raise Refused(409, f"a driver named {name!r} is being added right now")
        return name

    def _add_driver(self, body: dict[str, Any]) -> Change:
        if len(self.standings.drivers) >= MAX_DRIVERS:
            raise Refused(409, f"the standings hold at most {MAX_DRIVERS:,} drivers")
        name = self._unique(clean_name(body.get("name")))
        return "standings.driver", {"id": new_id("driver"), "name": name}

    def _rename(self, body: dict[str, Any]) -> Change:
        driver = self._driver(body)
        return "standings.driver", {"id": driver,
                                    "name": self._unique(clean_name(body.get("name")), driver)}

    def _lap(self, body: dict[str, Any]) -> Change:
        driver = self._driver(body)
        time_text = body.get("time")
        lap_ms = parse_lap_time(time_text if isinstance(time_text, str) else "")
        if self.standings.track is None:
            raise Refused(409, "set the track first: a lap time is a time on a track")
        return "standings.lap", {"id": new_id("manual"), "driver": driver,
                                 "name": self.standings.drivers[driver],
                                 "track": self.standings.track, "lap_ms": lap_ms,
                                 "source": "manual"}

    def _strike_lap(self, body: dict[str, Any]) -> Change:
        return "standings.lap_struck", {"id": self._lap_id(body), "struck": True}

    def _restore_lap(self, body: dict[str, Any]) -> Change:
        return "standings.lap_struck", {"id": self._lap_id(body), "struck": False}

    def _lap_id(self, body: dict[str, Any]) -> str:
        lap = body.get("lap")
        if not isinstance(lap, str) or self.standings.lap(lap) is None:
            raise Refused(404, f"no lap {lap!r} in the standings")
        return lap

    def _remove_driver(self, body: dict[str, Any]) -> Change:
        return "standings.driver_removed", {"id": self._driver(body)}

    def _track(self, body: dict[str, Any]) -> Change:
        track = body.get("track")
        if not isinstance(track, str) or not track.strip() or len(track) > 64:
            raise Refused(400, "give the track's name (at most 64 characters)")
        return "standings.track", {"track": " ".join(track.split())}

    def _driving(self, body: dict[str, Any]) -> Change:
        """Who is at the wheel (of `rig`'s player car, with several rigs)."""
        rig = body.get("rig")
        if rig is not None:
            try:
                check_rig(rig if isinstance(rig, str) else "")
            except RigNameError as exc:
                raise Refused(400, str(exc)) from None
        where = {"rig": rig} if rig is not None else {}
        if body.get("driver") is None:
            return "standings.driving", {"driver": None, **where}
        return "standings.driving", {"driver": self._driver(body), **where}
