"""F1's time formats: live timing's UTC timestamps and its lap and sector times.

Shared by the live-timing producer (reading the feed) and the consumers
(lap tables, the timing tower, alert times).
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any


class FeedError(ValueError):
    """A message that cannot be used: damaged, truncated, not what F1 sends."""


def parse_utc(text: str) -> datetime:
    """F1's timestamps: ISO 8601 with 'Z', sometimes with 7 fraction digits (Python takes 6)."""
    cleaned = text.strip().replace("Z", "+00:00")
    head, dot, rest = cleaned.partition(".")
    if dot:
        digits = "".join(itertools.takewhile(str.isdigit, rest))
        zone = rest[len(digits):]
        cleaned = f"{head}.{digits[:6]}{zone}"
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise FeedError(f"bad timestamp {text!r}") from None
    if moment.tzinfo is None:
        raise FeedError(f"timestamp {text!r} has no time zone")
    return moment


class LapTimeError(ValueError):
    """A lap time that cannot be read; the message says what was expected."""


LAP_TIME_FORMS = "1:25.606, 1.25.606, 85.606 or 85.606s"
MAX_LAP_MS = 60 * 60 * 1000  # no lap lasts an hour: a typo, not a lap


def parse_lap_time(text: str) -> int:
    """A lap time typed by a person or sent by F1, in milliseconds.

    Accepts minutes and seconds as `1:25.606` or `1.25.606`, seconds alone as
    `85.606` or `85.606s`, with up to three decimals (`1:25.6` is 85,600 ms); a
    decimal comma (`1:25,606`, as typed in much of Europe) is a dot.
    Anything else raises LapTimeError saying what is wrong with it.
    """
    cleaned = text.strip().lower().removesuffix("s").rstrip().replace(",", ".")
    if not cleaned:
        raise LapTimeError(f"no lap time given; type it as {LAP_TIME_FORMS}")
    # With a colon, the part before it is minutes; without one, two dots mean
    # minutes.seconds.fraction (a keypad has no colon), one dot seconds.fraction.
    if ":" in cleaned:
        minutes_text, _, seconds_text = cleaned.partition(":")
    elif cleaned.count(".") == 2:
        minutes_text, _, seconds_text = cleaned.partition(".")
    else:
        minutes_text, seconds_text = "", cleaned
    whole, dot, fraction = seconds_text.partition(".")
    for part, what in ((minutes_text, "minutes"), (whole, "seconds"), (fraction, "decimals")):
        if part and not (part.isascii() and part.isdigit()):
            raise LapTimeError(f"{text.strip()!r} is not a lap time: the {what} "
                               f"{part!r} are not digits; type it as {LAP_TIME_FORMS}")
    if not whole or (dot and not fraction):
        raise LapTimeError(f"{text.strip()!r} is not a lap time: it has no whole seconds "
                           f"or no decimals after the dot; type it as {LAP_TIME_FORMS}")
    if len(fraction) > 3:
        raise LapTimeError(f"{text.strip()!r} has {len(fraction)} decimals: lap times are "
                           "timed to the millisecond, so give at most 3")
    if minutes_text and int(whole) >= 60:
        raise LapTimeError(f"{text.strip()!r} has {whole} seconds after the minutes: "
                           "seconds must be below 60 (did you mean "
                           f"{int(minutes_text) + int(whole) // 60}:{int(whole) % 60:02d}?)")
    ms = (int(minutes_text or 0) * 60 + int(whole)) * 1000 + int(fraction.ljust(3, "0"))
    if not 0 < ms < MAX_LAP_MS:
        raise LapTimeError(f"{text.strip()!r} is not a lap time: it must be more than 0 "
                           "and under an hour")
    return ms


def format_lap_time(ms: int) -> str:
    """Milliseconds as F1 writes a lap: 85606 -> '1:25.606' (under a minute: '58.120')."""
    minutes, rest = divmod(ms, 60_000)
    if not minutes:
        return f"{rest // 1000}.{rest % 1000:03d}"
    return f"{minutes}:{rest // 1000:02d}.{rest % 1000:03d}"


def lap_seconds(text: Any) -> float | None:
    """A lap or sector time as F1 writes it, '1:27.123' or '27.123', in seconds;
    None for '' or anything else."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return parse_lap_time(text) / 1000
    except LapTimeError:
        return None
