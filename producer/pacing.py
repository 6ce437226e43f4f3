"""Keeping a source's timing: wait for each message's moment, at any speed.

Replays, the game simulator and `pub --rate` all send things at given
moments; a `Pacer` turns "at_s seconds into the source" into a sleep,
measured from when it was created, so a slow send never drifts the schedule.
"""

from __future__ import annotations

import asyncio
import time


class Pacer:
    def __init__(self, speed: float = 1.0) -> None:
        self.speed = speed  # 0 (or less): as fast as possible, never wait
        self.started = time.monotonic()

    async def wait_until(self, at_s: float) -> None:
        """Sleep until `at_s` seconds of source time (divided by speed) since the start."""
        if self.speed <= 0:
            return
        delay = self.started + at_s / self.speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
