"""A clock that moves only when told, and the timers due by it: the broker's sans-I/O parts
read time from it (broker/server/clock.py's Clock), and so does a client subscription
(broker/subscription.py's Timers), so a test of what happens after a delay never waits."""

from __future__ import annotations

from collections.abc import Callable

START_WALL_US = 1_765_000_000_000_000


class VirtualClock:
    def __init__(self, start_s: float = 1000.0) -> None:
        self.now_s = start_s
        self._start_s = start_s
        self._due: list[tuple[float, Callable[[], None], _Handle]] = []

    def monotonic(self) -> float:
        return self.now_s

    time = monotonic  # the Timers protocol's name for it

    def wall_us(self) -> int:
        return START_WALL_US + round((self.now_s - self._start_s) * 1e6)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle()
        self._due.append((self.now_s + delay_s, callback, handle))
        return handle

    def advance(self, seconds: float) -> None:
        """Move on, and run the timers now due (in the order they were set)."""
        assert seconds >= 0, "time never goes back"
        self.now_s += seconds
        ready = [entry for entry in self._due if entry[0] <= self.now_s]
        self._due = [entry for entry in self._due if entry[0] > self.now_s]
        for _, callback, handle in ready:
            if not handle.cancelled:
                callback()


class _Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
