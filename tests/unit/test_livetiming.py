"""Live-timing parsing, decoding and state merging, on the real recorded session (no sockets)."""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path
from typing import Any

import pytest

from f1vocab.state import apply, as_list, merge
from f1vocab.timing import FeedError, parse_utc
from producer.livetiming import signalr
from producer.livetiming.feed import FeedMessage, decode_z, encode_z
from producer.livetiming.recordings import (
    ReadReport,
    format_fastf1_line,
    parse_fastf1_line,
    parse_jsonstream_line,
    read_archive_folder,
    read_fastf1,
    read_recording,
)
from producer.livetiming.replay import state_at

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "livetiming"
SESSION = SAMPLES / "2020-08-07_70th-anniversary-fp2"
WITH_ERRORS = SAMPLES / "with_errors.txt"


def lines_per_topic() -> dict[str, list[str]]:
    """The session's lines, read without any of our parsing code."""
    return {path.name.removesuffix(".jsonStream"):
            [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            for path in SESSION.glob("*.jsonStream")}


# --- .z payloads -------------------------------------------------------------------


def test_z_payload_is_base64_of_raw_deflate_json() -> None:
    timing = [json.loads(line.lstrip("\ufeff")[12:])
              for line in lines_per_topic()["TimingData"][:50]]
    for message in timing:
        assert decode_z(encode_z(message)) == message
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    text = base64.b64encode(raw.compress(b'{"Entries":[]}') + raw.flush()).decode()
    assert decode_z(text) == {"Entries": []}


def test_real_damaged_z_payload_is_refused_but_is_real_deflate() -> None:
    line = WITH_ERRORS.read_text(encoding="utf-8").splitlines()[0]
    payload = line.split("'")[3]  # ['CarData.z', '<payload>', ...]
    with pytest.raises(FeedError, match=r"damaged \.z payload"):
        decode_z(payload)
    # Up to the damage, it inflates (raw deflate, no header) to real CarData JSON.
    usable = base64.b64decode(payload[: len(payload) // 4 * 4])
    inflater = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
    start = b""
    with pytest.raises(zlib.error):
        for index in range(len(usable)):
            start += inflater.decompress(usable[index:index + 1])
    assert start.startswith(b'{"Entries":[{"Utc":"2021-03-28T14:52:29.6845831Z",')


def test_f1_timestamps_with_seven_fraction_digits_parse() -> None:
    assert parse_utc("2021-03-28T14:52:34.2188616Z").microsecond == 218861
    with pytest.raises(FeedError, match="bad timestamp"):
        parse_utc("2021-0341.297Z")


# --- state merging -------------------------------------------------------------------


def test_merge_updates_nested_dicts_lists_as_dicts_and_deletions() -> None:
    state: dict[str, Any] = {"Lines": {"44": {"Sectors": [{"Value": ""}, {"Value": ""}],
                                              "Position": "2"}},
             "Old": 1}
    merge(state, {"Lines": {"44": {"Sectors": {"1": {"Value": "28.112"}}, "Position": "1"},
                            "33": {"Position": "2"}},
                  "_deleted": ["Old"]})
    assert state == {"Lines": {"44": {"Sectors": [{"Value": ""}, {"Value": "28.112"}],
                                      "Position": "1"},
                               "33": {"Position": "2"}}}
    merge(state, {"Lines": {"44": {"Sectors": {"3": {"Value": "19.9"}}}}})
    assert state["Lines"]["44"]["Sectors"][3] == {"Value": "19.9"}  # a list grows if F1 says so


def test_apply_replaces_on_a_snapshot_and_merges_otherwise() -> None:
    state = apply({}, {"Status": "1", "Message": "AllClear"}, snapshot=True)
    state = apply(state, {"Status": "2"}, snapshot=False)
    assert state == {"Status": "2", "Message": "AllClear"}
    fresh = {"Status": "5"}
    assert apply(state, fresh, snapshot=True) is fresh  # no copy, and nothing of the old state
    assert as_list({"1": "b", "0": "a", "10": "c"}) == ["a", "b", "c"]
    assert as_list(["a"]) == ["a"] and as_list(None) == []


def test_merging_the_whole_real_session_gives_the_timing_tower() -> None:
    state: dict[str, Any] = {}
    for line in lines_per_topic()["TimingData"]:
        merge(state, json.loads(line.lstrip("\ufeff")[12:]))
    lines = state["Lines"]
    assert isinstance(lines, dict) and len(lines) == 20
    positions = sorted(int(driver["Position"]) for driver in lines.values())
    assert positions == list(range(1, 21))
    best = [driver["BestLapTime"]["Value"] for driver in lines.values()]
    assert all(len(value) == 8 and value[1] == ":" for value in best)  # M:SS.mmm


# --- recordings ------------------------------------------------------------------------


def test_archive_folder_yields_every_line_in_time_order() -> None:
    report = ReadReport()
    messages = read_archive_folder(SESSION, report)
    expected = lines_per_topic()
    assert (report.messages, report.damaged) == (17_979, 0)
    assert len(messages) == sum(len(lines) for lines in expected.values()) == 17_979
    keys = [message.sort_key() for message in messages]
    assert keys == sorted(keys)
    for topic, lines in expected.items():
        mine = [message for message in messages if message.topic == topic]
        assert [m.data for m in mine] == [json.loads(line.lstrip("\ufeff")[12:]) for line in lines]
        assert [m.snapshot for m in mine] == [True] + [False] * (len(lines) - 1)


def test_jsonstream_line_with_byte_order_mark() -> None:
    message = parse_jsonstream_line("TrackStatus", '\ufeff01:31:03.558{"Status":"2"}')
    assert (message.offset_s, message.data) == (5463.558, {"Status": "2"})
    with pytest.raises(FeedError, match=r"HH:MM:SS\.mmm"):
        parse_jsonstream_line("TrackStatus", '{"Status":"2"}')
    with pytest.raises(FeedError, match="bad JSON"):
        parse_jsonstream_line("TrackStatus", '01:31:03.558{"Status":')


def test_damaged_fastf1_recording_loads_every_valid_line_and_counts_the_rest() -> None:
    report = ReadReport()
    messages = read_fastf1([WITH_ERRORS], report)
    assert (report.messages, report.damaged, len(messages)) == (19, 32, 19)
    assert {m.topic for m in messages} == {"Heartbeat", "WeatherData", "RaceControlMessages",
                                           "TimingAppData", "TrackStatus", "SessionData",
                                           "TimingData"}
    assert report.first_damage[0].startswith("with_errors.txt:1: damaged .z payload")


def test_fastf1_lines_round_trip_as_python_literals() -> None:
    message = FeedMessage("TrackStatus", {"Status": "1", "_kf": True}, "2021-03-28T14:57:41.297Z")
    line = format_fastf1_line(message)
    assert line == "['TrackStatus', {'Status': '1', '_kf': True}, '2021-03-28T14:57:41.297Z']"
    assert parse_fastf1_line(line) == message


def test_overlapping_recordings_merge_without_duplicates(tmp_path: Path) -> None:
    lines = [format_fastf1_line(FeedMessage("LapCount", {"CurrentLap": n},
                                            f"2021-03-28T15:{n:02d}:00.000Z")) for n in range(10)]
    (tmp_path / "a.txt").write_text("\n".join(lines[:7]) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(lines[4:]) + "\n")
    report = ReadReport()
    merged = read_recording([tmp_path / "b.txt", tmp_path / "a.txt"], report)  # any order
    assert [m.data["CurrentLap"] for m in merged] == list(range(10))
    assert (report.messages, report.duplicates) == (10, 3)


def test_state_at_a_point_merges_everything_before_it() -> None:
    messages = read_archive_folder(SESSION, ReadReport())
    snapshots, resume = state_at(messages, 5500.0)
    assert resume == sum(1 for m in messages if m.sort_key() - messages[0].sort_key() < 5500.0)
    track = next(s for s in snapshots if s.topic == "TrackStatus")
    assert track.snapshot and track.data == {"Status": "6", "Message": "VSCDeployed"}


# --- SignalR dialects -------------------------------------------------------------------


def test_signalr_core_conversation() -> None:
    protocol = signalr.CoreProtocol()
    assert protocol.handshake() == '{"protocol": "json", "version": 1}\x1e'
    assert json.loads(protocol.subscribe(["TimingData"]).rstrip("\x1e")) == {
        "type": 1, "target": "Subscribe", "arguments": [["TimingData"]], "invocationId": "1"}
    assert protocol.receive("{}\x1e") == [signalr.HandshakeDone()]
    result = json.dumps({"type": 3, "invocationId": "1",
                         "result": {"TrackStatus": {"Status": "1"}}})
    feed = json.dumps({"type": 1, "target": "feed",
                       "arguments": ["TrackStatus", {"Status": "2"}, "2020-08-07T15:31:03Z"]})
    text = result + "\x1e" + feed + "\x1e" + '{"type":6}\x1e{"type":7,"error":"bye"}\x1e'
    events = protocol.receive(text[:40]) + protocol.receive(text[40:])  # split mid-record
    assert isinstance(events[0], signalr.Snapshot)
    assert events[0].messages[0].topic == "TrackStatus" and events[0].messages[0].snapshot
    assert events[1] == signalr.Feed(FeedMessage("TrackStatus", {"Status": "2"},
                                                 "2020-08-07T15:31:03Z"))
    assert events[2:] == [signalr.KeepAlive(), signalr.ServerClosed("bye")]


def test_signalr_core_refusals_and_garbage() -> None:
    protocol = signalr.CoreProtocol()
    assert protocol.receive('{"error":"Unauthorized"}\x1e') == [
        signalr.Refused("handshake refused: Unauthorized")]
    assert [type(e).__name__ + ":" + getattr(e, "kind", "") for e in protocol.receive(
        'nope\x1e[1]\x1e{"type":42}\x1e{"type":1,"target":"feed","arguments":7}\x1e')] == [
        "Malformed:not-json", "Malformed:not-an-object", "Malformed:type-42",
        "Malformed:feed-arguments"]


def test_signalr_classic_conversation() -> None:
    protocol = signalr.ClassicProtocol()
    assert json.loads(protocol.subscribe(["Heartbeat"])) == {
        "H": "Streaming", "M": "Subscribe", "A": [["Heartbeat"]], "I": 1}
    assert protocol.receive("{}") == [signalr.KeepAlive()]
    assert protocol.receive('{"C":"s-0","S":1,"M":[]}') == []
    snapshot = protocol.receive('{"R":{"Heartbeat":{"Utc":"x"}},"I":"1"}')[0]
    assert isinstance(snapshot, signalr.Snapshot) and snapshot.messages[0].data == {"Utc": "x"}
    events = protocol.receive(json.dumps({"C": "d-1", "M": [
        {"H": "Streaming", "M": "feed", "A": ["LapCount", {"CurrentLap": 3}, "2021-01-01T00:00Z"]},
        {"H": "Streaming", "M": "feed", "A": ["LapCount", {"CurrentLap": 4}, "2021-01-01T00:01Z"]},
    ]}))
    assert [e.message.data for e in events if isinstance(e, signalr.Feed)] == [
        {"CurrentLap": 3}, {"CurrentLap": 4}]
    assert protocol.receive('{"E":"denied","I":"1"}') == [
        signalr.Refused("Subscribe refused: denied")]
