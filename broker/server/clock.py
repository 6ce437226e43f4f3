"""The time the broker's sans-I/O parts are given, so a simulator can give another.

broker/server/core.py and broker/server/session.py never read the time themselves: the
asyncio broker gives them `SYSTEM_CLOCK`, tests/sim/broker.py a virtual one
that moves only when the simulation says so.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds, for timeouts and ages: never goes back."""
        ...

    def wall_us(self) -> int:
        """Microseconds since the epoch, for the stamps messages carry."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall_us(self) -> int:
        return time.time_ns() // 1000


SYSTEM_CLOCK = SystemClock()
