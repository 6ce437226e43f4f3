"""Keeps the standings in step with the broker: every change goes out, then comes back.

A change (a lap from the game, a driver added on the admin page) is
published as a `standings.*` message, and the table takes it only when the
broker delivers it back. So the broker is the one record: the table is what
its messages add up to, whoever published them, and an admin request is
answered only once its change is stored and shown. After each change the
table itself goes out as `standings.table`, at most every `table_every_s`.

A consumer that starts again reads the sources' retained messages again, and
would find their laps again: it publishes none until it has read back the
`standings.*` messages the broker retained when it started, so the laps it
already published are known and left out.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

from broker.client import Client, Message
from broker.errors import SlipstreamError
from consumer.standings.sources import AtTheWheel, GameLaps, LiveLaps, SourceLap
from consumer.standings.table import FACTS, Standings
from f1vocab.game.names import track_name
from f1vocab.game.topics import split_game_topic
from f1vocab.laps import rig_of_game_laps

log = logging.getLogger("slipstream.standings")

ECHO_TIMEOUT_S = 5.0  # an admin change not back from the broker by then is reported so
READ_BACK_TIMEOUT_S = 30.0  # the sources wait this long at most for the read-back


class NotRecorded(Exception):
    """The broker did not take a change (it is away, or refused it): nothing changed."""


def new_id(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(6)}"


class StandingsKeeper:
    def __init__(self, standings: Standings, client: Callable[[], Client | None],
                 game: GameLaps | None = None, live: LiveLaps | None = None,
                 table_every_s: float = 0.5) -> None:
        self.standings = standings
        self.game = game
        # Rigs seen (game.<rig>.session): the admin page says who is at each one's wheel.
        self.rigs: set[str] = set()
        self.live = live
        self.client = client
        self._table_every_s = table_every_s
        self._applied: dict[str, int] = {}  # topic -> the last seq applied
        self._changed = asyncio.Condition()
        self._table_due = asyncio.Event()
        self.published_laps = 0
        self.page: str | None = None  # the public page's address, for others to link to
        self.caught_up = asyncio.Event()  # the standings read back: sources may publish
        self._facts_read = 0
        self._facts_retained: int | None = None  # at start: what there is to read back

    def read_back(self, retained: int) -> None:
        """At start: the broker retained this many standings facts, which arrive first."""
        self._facts_retained = retained
        self._check_caught_up()

    def _check_caught_up(self) -> None:
        if self._facts_retained is not None and self._facts_read >= self._facts_retained:
            self.caught_up.set()

    # --- from the broker -------------------------------------------------------------

    async def on_standings(self, message: Message) -> None:
        """A `standings.*` message: apply it, and wake whoever waits for it."""
        try:
            if message.topic in FACTS:
                self._facts_read += 1
                self._check_caught_up()
            if self.standings.apply(message.topic, message.data, message.timestamp_us):
                self._table_due.set()
        finally:
            async with self._changed:
                self._applied[message.topic] = max(message.seq,
                                                   self._applied.get(message.topic, 0))
                self._changed.notify_all()

    async def on_game_session(self, message: Message) -> None:
        """`game[.<rig>].session`: which rigs there are (before their first lap, so the
        admin can say who drives), and the track the game is on."""
        rig, _ = split_game_topic(message.topic)
        if rig is not None and rig not in self.rigs:
            self.rigs.add(rig)
            log.info("timing rig %s (laps.game.%s)", rig, rig)
        await self._follow_track(track_name(message.data["track_id"]))

    async def on_game_lap(self, message: Message) -> None:
        """`laps.game[.<rig>]`: a lap the game bridge saw completed."""
        assert self.game is not None
        rig = rig_of_game_laps(message.topic)
        try:
            lap = self.game.lap(message.data, rig, self._at_the_wheel(rig))
        except ValueError as exc:
            log.warning("%s #%d left out: %s", message.topic, message.seq, exc)
            return
        if lap is not None:
            await self._follow_track(lap.track)
            await self._publish_laps([lap])

    async def on_live(self, message: Message) -> None:
        assert self.live is not None
        laps = self.live.apply(message.topic, message.data)
        if message.topic == "live.SessionInfo" and self.live.track:
            await self._follow_track(self.live.track)
        await self._publish_laps(laps)

    def _at_the_wheel(self, rig: str | None) -> AtTheWheel | None:
        driver = self.standings.driver_at(rig)
        name = self.standings.drivers.get(driver) if driver is not None else None
        return AtTheWheel(driver, name) if driver is not None and name is not None else None

    async def _follow_track(self, track: str) -> None:
        """The source is on another track: the standings follow it."""
        if track != self.standings.track:
            await self._publish("standings.track", {"track": track})

    async def _publish_laps(self, laps: list[SourceLap]) -> None:
        if laps and not self.caught_up.is_set():
            try:
                await asyncio.wait_for(self.caught_up.wait(), READ_BACK_TIMEOUT_S)
            except TimeoutError:  # some were evicted on the way: go on, and say so
                log.warning("read back %d of the %s standings messages retained at start "
                            "after %.0f s: publishing laps now (some may be published "
                            "again)", self._facts_read, self._facts_retained,
                            READ_BACK_TIMEOUT_S)
                self.caught_up.set()
        for lap in laps:
            if self.standings.knows_lap(lap.id):
                continue  # read again after a restart: already in the standings
            await self._publish("standings.lap", {
                "id": lap.id, "driver": lap.driver, "name": lap.name, "track": lap.track,
                "lap_ms": lap.lap_ms, "source": lap.source})
            self.published_laps += 1

    async def _publish(self, topic: str, data: dict[str, Any]) -> int:
        client = await self._connected_client()
        try:
            seq = await asyncio.wait_for(client.publish(topic, data, confirm=True),
                                         ECHO_TIMEOUT_S)
        except TimeoutError:
            raise NotRecorded(f"the broker did not confirm {topic} within "
                              f"{ECHO_TIMEOUT_S:.0f} s: it may or may not be stored") from None
        except SlipstreamError as exc:
            raise NotRecorded(f"{topic} was not stored: {exc}") from None
        assert seq is not None
        return seq

    async def _connected_client(self) -> Client:
        """The client, once connected: a change made while the consumer starts or
        reconnects waits a moment for it rather than failing at once."""
        deadline = asyncio.get_running_loop().time() + ECHO_TIMEOUT_S
        while True:
            client = self.client()
            if client is not None and client.connected:
                return client
            if asyncio.get_running_loop().time() > deadline:
                raise NotRecorded("the broker is not reachable: nothing was changed")
            await asyncio.sleep(0.05)

    # --- from the admin page ---------------------------------------------------------

    async def record(self, topic: str, data: dict[str, Any]) -> bool:
        """Publish one change and wait until it is back and applied; False if it was
        stored but not back within ECHO_TIMEOUT_S (it will show when it comes)."""
        seq = await self._publish(topic, data)
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(
                    lambda: self._applied.get(topic, 0) >= seq), ECHO_TIMEOUT_S)
            except TimeoutError:
                return False
        return True

    async def changed(self, since_version: int, timeout_s: float) -> bool:
        """Wait until the table is past `since_version` (True), or `timeout_s` (False)."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(
                    lambda: self.standings.version != since_version), timeout_s)
            except TimeoutError:
                return False
        return True

    # --- the table, for everyone ------------------------------------------------------

    async def publish_tables(self) -> None:
        """Publish `standings.table` after changes, at most every table_every_s; until
        cancelled. A broker away means the next change publishes it again."""
        while True:
            await self._table_due.wait()
            self._table_due.clear()
            try:
                await self._publish("standings.table", self.table())
            except NotRecorded as exc:
                log.warning("standings.table not published: %s", exc)
            await asyncio.sleep(self._table_every_s)

    def table(self) -> dict[str, Any]:
        return {**self.standings.view(), "page": self.page}

    async def flush_table(self) -> None:
        """On the way out: publish the table if a change since the last one is unsent."""
        if self._table_due.is_set():
            self._table_due.clear()
            try:
                await self._publish("standings.table", self.table())
            except NotRecorded as exc:
                log.warning("the last standings.table not published: %s", exc)

