"""The printer's one-line summaries, on real messages of the bundled session."""

from __future__ import annotations

import json
from typing import Any

from consumer.summaries import summarise
from tests.helpers import SESSION


def live(topic: str, index: int) -> dict[str, Any]:
    """Line `index` of a topic, as the replay publishes it (first line: a snapshot)."""
    lines = (SESSION / f"{topic}.jsonStream").read_text(encoding="utf-8").splitlines()
    data = json.loads(lines[index].lstrip("\ufeff")[12:])
    return {"topic": topic, "data": data, "timestamp": None, "offset_s": 0.0,
            "snapshot": index == 0}


def test_summaries_of_known_live_topics() -> None:
    assert summarise("live.SessionInfo", live("SessionInfo", 0)) == \
        "snapshot: 70th Anniversary Grand Prix, Practice 2 at Silverstone"
    assert summarise("live.TrackStatus", live("TrackStatus", 6)) == "Red (status 5)"
    assert summarise("live.RaceControlMessages", live("RaceControlMessages", 1)) == \
        "[Other] CAR 3 (RIC) TIME 1:27.113 DELETED - TRACK LIMITS AT TURN 9"
    assert summarise("live.WeatherData", live("WeatherData", 1)) == \
        "air 30.4°C track 42.4°C humidity 33.4% wind 2.7 m/s rain 0"
    assert summarise("live.DriverList", live("DriverList", 0)).startswith(
        "snapshot: #3 RIC (Renault), #4 NOR (McLaren)")


def test_timing_summaries_say_what_changed() -> None:
    lap = {"Lines": {"44": {"NumberOfLaps": 9, "LastLapTime": {"Value": "1:25.606"},
                            "Sectors": {"2": {"Value": "23.470"}}, "Position": "1"}}}
    assert summarise("live.TimingData", {"data": lap, "snapshot": False}) == \
        "#44 P1 lap 9 1:25.606 S3 23.470"
    segment = {"Lines": {"10": {"Sectors": {"0": {"Segments": {"5": {"Status": 2049}}}}}}}
    assert summarise("live.TimingData", {"data": segment}) == "#10 S1 mini-sector 6"
    trap = {"Lines": {"7": {"Speeds": {"ST": {"Value": "324"}}, "InPit": True}}}
    assert summarise("live.TimingData", {"data": trap}) == "#7 in pit ST 324 km/h"


def test_alerts_and_unknown_topics() -> None:
    assert summarise("alerts.critical", {"severity": "critical", "message": "RED FLAG",
                                         "rule": "red-flag"}) == "[critical] RED FLAG (red-flag)"
    assert summarise("demo.counter", {"n": 1}) == '{"n":1}'
    assert summarise("live.TrackStatus", {"data": "not a map"}) == '{"data":"not a map"}'


def test_game_session_and_penalty_summaries_use_readable_names() -> None:
    from f1vocab.game.decoder import GameDecoder, Packet
    from producer.game.simulator import SessionSimulator

    decoder = GameDecoder()
    seen: dict[str, str] = {}
    for _, datagrams in SessionSimulator(cars=4, hz=5, duration_s=60).frames():
        for datagram in datagrams:
            packet = decoder.decode(datagram)
            assert isinstance(packet, Packet)
            if packet.name == "session" or packet.data.get("event_string_code") == "PENA":
                seen.setdefault(packet.name, summarise(f"game.{packet.name}", packet.data))
    assert seen["session"] == "Silverstone, Race, 10 laps, 60 s left"
    assert seen["event"].startswith("PENA penalty_type=4 ")
    assert seen["event"].endswith("(Time penalty)")


def test_a_new_session_says_what_it_replays() -> None:
    assert summarise("live.session_start", {
        "session": "3f2a9c1d", "source": "replay", "name": "2020-08-07_70th-anniversary-fp2",
        "start": "00:14:00"}) == \
        "new session 3f2a9c1d: replay of 2020-08-07_70th-anniversary-fp2 from 00:14:00"
    assert summarise("live.session_start", {"session": "0a1b2c3d", "source": "live"}) == \
        "new session 0a1b2c3d: live"
