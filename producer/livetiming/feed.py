"""One live-timing message, from whichever source, and how it becomes a broker message.

F1 names its streams ("topics" in F1's words) like `TimingData` or
`CarData.z`; the `.z` ones carry base64 of raw-deflate JSON. Every source
(SignalR Core, classic SignalR, FastF1 recordings, the static archive)
yields `FeedMessage`s; `to_payload` turns one into what is published on
`live.<Topic>` (the `.z` dropped and decoded).
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from dataclasses import dataclass
from typing import Any

from f1vocab.timing import FeedError, parse_utc

# The topics FastF1 and livef1 subscribe to; `--topics` chooses others.
DEFAULT_TOPICS = (
    "Heartbeat", "CarData.z", "Position.z", "ExtrapolatedClock", "TopThree", "TimingStats",
    "TimingAppData", "WeatherData", "TrackStatus", "DriverList", "RaceControlMessages",
    "SessionInfo", "SessionData", "LapCount", "TimingData", "SessionStatus", "TeamRadio",
    "PitLaneTimeCollection", "ChampionshipPrediction", "TyreStintSeries", "DriverRaceInfo",
    "LapSeries", "PitStopSeries", "PitStop", "OvertakeSeries", "CurrentTyres", "TlaRcm",
)


@dataclass(frozen=True, slots=True)
class FeedMessage:
    topic: str  # as F1 names it, `.z` included
    data: Any  # as received: for `.z` topics, the base64 text
    timestamp: str | None = None  # the source's UTC timestamp (ISO 8601), when it has one
    offset_s: float | None = None  # seconds from the start of the stream (archive files)
    snapshot: bool = False  # full state (Subscribe's answer, or a stream's first message)

    @property
    def name(self) -> str:
        """The topic without `.z`: what consumers see."""
        return self.topic.removesuffix(".z")

    @property
    def broker_topic(self) -> str:
        return f"live.{self.name}"

    def sort_key(self) -> float:
        if self.offset_s is not None:
            return self.offset_s
        if self.timestamp is not None:
            return parse_utc(self.timestamp).timestamp()
        return 0.0

    def to_payload(self) -> dict[str, Any]:
        """The message published on `broker_topic` (see docs/live-timing.md)."""
        data = decode_z(self.data) if self.topic.endswith(".z") else self.data
        return {"topic": self.name, "data": data, "timestamp": self.timestamp,
                "offset_s": self.offset_s, "snapshot": self.snapshot}


def decode_z(text: Any) -> Any:
    """`.z` payload -> JSON value: base64, then raw deflate (no zlib header), then JSON."""
    if not isinstance(text, str):
        raise FeedError(f".z payload must be base64 text, got {type(text).__name__}")
    try:
        raw = base64.b64decode(text, validate=True)
        return json.loads(zlib.decompress(raw, -zlib.MAX_WBITS))
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise FeedError(f"damaged .z payload: {exc}") from None


def encode_z(value: Any) -> str:
    """The inverse of decode_z (for tests, the simulator and fake servers)."""
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw = compressor.compress(json.dumps(value, separators=(",", ":")).encode())
    return base64.b64encode(raw + compressor.flush()).decode()
