"""A clock that moves only when told: the broker's sans-I/O parts read time from it."""

from __future__ import annotations

START_WALL_US = 1_765_000_000_000_000


class VirtualClock:
    def __init__(self, start_s: float = 1000.0) -> None:
        self.now_s = start_s
        self._start_s = start_s

    def monotonic(self) -> float:
        return self.now_s

    def wall_us(self) -> int:
        return START_WALL_US + round((self.now_s - self._start_s) * 1e6)

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "time never goes back"
        self.now_s += seconds
