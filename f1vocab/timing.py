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


def lap_seconds(text: Any) -> float | None:
    """A lap or sector time as F1 writes it, '1:27.123' or '27.123', in seconds;
    None for '' or anything else."""
    if not isinstance(text, str) or not text:
        return None
    minutes, _, rest = text.rpartition(":")
    try:
        return (int(minutes) * 60 if minutes else 0) + float(rest)
    except ValueError:
        return None
