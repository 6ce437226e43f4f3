"""Small tools for staying inside limits: a token bucket and a log line that cannot flood.

The broker uses the bucket for per-connection publish rates; the broker, the
consumers and the UDP bridge use `LogThrottle` wherever a peer (or a bug in a
handler) could otherwise write one log line per message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` saved up; taking may go into debt.

    `take` returns how long the caller should wait before going on, so a
    publisher over its rate is slowed (by not reading its socket), never refused.
    """

    __slots__ = ("_clock", "_level", "_stamp", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst if burst is not None else rate_per_s  # one second's worth
        self._clock = clock
        self._level = self.burst
        self._stamp = clock()

    def take(self, amount: float) -> float:
        self._refill()
        self._level -= amount
        return 0.0 if self._level >= 0 else -self._level / self.rate_per_s

    def has(self, amount: float) -> bool:
        """Whether `amount` could be taken now without waiting (nothing is taken)."""
        self._refill()
        return self._level >= amount

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.burst, self._level + (now - self._stamp) * self.rate_per_s)
        self._stamp = now


class LogThrottle:
    """Log the first occurrence of each key at once, then at most one summary per interval.

        throttle = LogThrottle(logger)
        throttle.warning("undecodable:bad-length", "undecodable datagram from %s: %s", peer, err)

    Later lines with the same key within `interval_s` are counted, not written;
    the next one after the interval is written with "(and N more like this)".
    Keys must come from a bounded set (an error kind, a handler's name), never
    from what a peer sends, and at most `max_keys` are remembered.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 max_keys: int = 1024) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object,
            exc_info: bool = False) -> bool:
        """Write or count one occurrence; True when it was written."""
        now = time.monotonic()
        due = self._next.get(key)
        if due is not None and now < due:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        if due is None and len(self._next) >= self.max_keys:
            self._next.pop(next(iter(self._next)))  # forget the oldest key, not the newest line
        self._next[key] = now + self.interval_s
        more = self._suppressed.pop(key, 0)
        if more:
            message += f" (and {more:,} more like this in the last {self.interval_s:g} s)"
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True

    def warning(self, key: str, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, message, *args)

    def flush(self) -> None:
        """Write the counts still owed (on the way out)."""
        for key, count in self._suppressed.items():
            self.logger.warning("... and %s more like %r not logged", f"{count:,}", key)
        self._suppressed.clear()
