"""The dashboard's state and views, fed the bundled real session and simulated game packets."""

from __future__ import annotations

import json
from typing import Any

from consumer.dashboard.model import MAX_RIGS, Dashboard
from consumer.dashboard.tower import timing_tower, track_status
from f1vocab.game.decoder import GameDecoder, Packet
from producer.game.simulator import TRACK_LENGTH_M, SessionSimulator
from producer.livetiming.recordings import ReadReport, read_archive_folder
from tests.helpers import SESSION


def session_messages() -> list[tuple[str, dict[str, Any]]]:
    messages = read_archive_folder(SESSION, ReadReport())
    return [(m.broker_topic, m.to_payload()) for m in messages]


def race_control_lines() -> list[str]:
    """Every race-control message text in the raw file, in order."""
    texts = []
    for line in (SESSION / "RaceControlMessages.jsonStream").read_text("utf-8-sig").splitlines():
        messages = json.loads(line[12:])["Messages"]
        items = messages if isinstance(messages, list) else [messages[k] for k in sorted(
            messages, key=int)]
        texts += [m["Message"] for m in items]
    return texts


def test_the_whole_session_gives_a_20_driver_tower_and_every_race_control_message() -> None:
    dashboard = Dashboard(history=100)
    events = []
    for topic, payload in session_messages():
        events += dashboard.apply(topic, payload)

    assert [e["Message"] for _, e in events] == race_control_lines()
    assert len(events) == 21
    views = dashboard.take_changed()
    tower = views["dashboard.tower"]
    assert len(tower) == 20
    assert [row["position"] for row in tower] == list(range(1, 21))
    leader = tower[0]
    # HAM's 1:25.606 is the session's best (the sqlite test checks it against the sectors).
    assert (leader["tla"], leader["team"], leader["colour"]) == ("HAM", "Mercedes", "#00D2BE")
    assert leader["best_lap"] == {"value": "1:25.606", "colour": "purple"}
    assert [row["best_lap"]["colour"] for row in tower[1:]] == [""] * 19
    assert tower[1]["gap"] == "+0.176" and tower[1]["interval"] == "+0.176"
    assert tower[0]["tyre"] == {"compound": "MEDIUM", "age": 16, "new": False}
    assert views["live.TrackStatus"] == {"status": "5", "message": "Red", "level": "red",
                                         "text": "Red flag"}
    assert views["dashboard.session"]["meeting"] == "70th Anniversary Grand Prix"
    assert dashboard.take_changed() == {}  # nothing changed since


def test_views_change_only_when_their_topics_do() -> None:
    dashboard = Dashboard()
    dashboard.apply("live.TrackStatus", {"data": {"Status": "2", "Message": "Yellow"},
                                         "snapshot": True})
    assert dashboard.take_changed() == {"live.TrackStatus": {
        "status": "2", "message": "Yellow", "level": "yellow", "text": "Yellow flag"}}
    dashboard.apply("live.TrackStatus", {"data": {"Status": "4", "Message": "SCDeployed"}})
    dashboard.apply("live.TrackStatus", {"data": {"Status": "1", "Message": "AllClear"}})
    assert dashboard.take_changed()["live.TrackStatus"]["level"] == "green"  # the latest only


def test_a_repeated_race_control_snapshot_sends_nothing_twice_and_a_new_session_starts_over(
) -> None:
    dashboard = Dashboard()
    first = {"Utc": "2020-08-07T14:00:00", "Message": "GREEN LIGHT"}
    second = {"Utc": "2020-08-07T14:36:59", "Message": "TIME DELETED"}
    assert dashboard.apply("live.RaceControlMessages",
                           {"data": {"Messages": [first]}, "snapshot": True}) == [
        ("live.RaceControlMessages", first)]
    assert dashboard.apply("live.RaceControlMessages",
                           {"data": {"Messages": {"1": second}}}) == [
        ("live.RaceControlMessages", second)]
    again = {"data": {"Messages": [first, second]}, "snapshot": True}
    assert dashboard.apply("live.RaceControlMessages", again) == []
    new_session = {"data": {"Messages": [{"Message": "NEW SESSION"}]}, "snapshot": True}
    assert [e["Message"] for _, e in dashboard.apply("live.RaceControlMessages",
                                                     new_session)] == ["NEW SESSION"]


def test_history_is_bounded_and_alerts_pass_through() -> None:
    dashboard = Dashboard(history=3)
    for n in range(5):
        assert dashboard.apply("alerts.warning", {"message": f"alert {n}"}) == [
            ("alerts.warning", {"message": f"alert {n}"})]
    assert [e["message"] for _, e in dashboard.recent_events()] == [
        "alert 2", "alert 3", "alert 4"]
    assert dashboard.apply("live.TimingData", "not a map") == []
    assert dashboard.handled["live.TimingData"] == 1


def test_game_views_from_a_simulated_session() -> None:
    decoder = GameDecoder()
    dashboard = Dashboard(trace_bin_m=10.0)
    events = []
    for _, datagrams in SessionSimulator(cars=6, hz=20, duration_s=200).frames():
        for datagram in datagrams:
            packet = decoder.decode(datagram)
            assert isinstance(packet, Packet)
            events += dashboard.apply(f"game.{packet.name}", packet.data)
    views = dashboard.take_changed()

    assert views["dashboard.game.session"]["track"] == "Silverstone"
    assert views["dashboard.game.session"]["session_type"] == "Race"
    board = views["dashboard.game.leaderboard"]
    assert [row["position"] for row in board] == list(range(1, 7))
    assert sum(row["player"] for row in board) == 1
    assert board[0]["gap_ms"] == 0 and all(row["gap_ms"] > 0 for row in board[1:])
    car = views["dashboard.game.car"]
    assert car["index"] == 0 and car["compound"] in {"soft", "medium", "hard"}
    assert len(car["tyres_wear"]) == 4
    trace = views["dashboard.game.trace"]
    previous = trace["previous"]
    assert previous["lap"] is not None and trace["current"]["lap"] == previous["lap"] + 1
    # A whole lap of Silverstone in 10 m bins, in distance order, every field per bin.
    assert 0.9 * TRACK_LENGTH_M / 10 <= len(previous["distance"]) <= TRACK_LENGTH_M / 10 + 1
    assert previous["distance"] == sorted(previous["distance"])
    assert {len(previous[f]) for f in trace["fields"]} == {len(previous["distance"])}
    assert max(previous["speed"]) > 200
    codes = [e["code"] for _, e in events]
    assert "PENA" in codes and "FTLP" in codes
    penalty = next(e for _, e in events if e["code"] == "PENA")
    assert penalty["name"] == "penalty: Time penalty"


def test_track_status_and_tower_cope_with_missing_state() -> None:
    assert track_status({})["level"] == "unknown"
    assert timing_tower({}, {}, {}) == []
    # Timing lines before the driver list arrives still make rows (named by number).
    rows = timing_tower({}, {"Lines": {"44": {"Position": "1"}}}, {})
    assert [(r["tla"], r["position"]) for r in rows] == [("44", 1)]


def test_the_standings_table_is_shown_as_the_standings_consumer_sent_it() -> None:
    model = Dashboard()
    assert model.all_views()["standings.table"] is None  # no standings consumer yet
    model.take_changed()
    table = {"track": "Monza", "rows": [{"position": 1, "name": "Ann", "lap": "1:20.000"}]}
    assert model.apply("standings.table", table) == []
    assert model.take_changed() == {"standings.table": table}
    assert model.apply("standings.lap", {"id": "x"}) == []  # the facts are not shown
    assert model.take_changed() == {}


def stamped(session: str, first_us: int) -> list[tuple[str, dict[str, Any], int]]:
    """The bundled session as one replay run publishes it: announced, each message
    stamped with the run, with the broker's clock (1 µs apart) after `first_us`."""
    start = ("live.session_start", {"session": session, "source": "replay"}, first_us)
    return [start] + [(topic, {**payload, "session": session}, first_us + index + 1)
                      for index, (topic, payload) in enumerate(session_messages())]


def test_a_second_replay_starts_the_live_state_again() -> None:
    dashboard = Dashboard(history=100)
    for topic, payload, at_us in stamped("first", 1_000_000):
        dashboard.apply(topic, payload, at_us)
    assert dashboard.take_changed()["live.TrackStatus"]["level"] == "red"  # how it ended
    # The second run: its announcement clears the red flag, the tower and race control.
    second = stamped("second", 2_000_000)
    events = dashboard.apply(*second[0])
    assert events == [("live.session_start", {"session": "second", "name": ""})]
    views = dashboard.take_changed()
    assert views["live.TrackStatus"]["level"] == "unknown"
    assert views["dashboard.tower"] == [] and dashboard.recent_events() == []
    race_control = []
    for topic, payload, at_us in second[1:]:
        race_control += dashboard.apply(topic, payload, at_us)
    assert len(race_control) == 21  # each message once: the first run's are not repeated
    assert dashboard.take_changed()["live.TrackStatus"]["level"] == "red"


def test_catching_up_topic_by_topic_shows_only_the_latest_session() -> None:
    """A dashboard started after two replays reads the retained messages topic by topic
    (the broker keeps order within a topic only): the first run's stay out."""
    messages = stamped("first", 1_000_000) + stamped("second", 2_000_000)
    messages.sort(key=lambda message: message[0])  # by topic; in order within each
    dashboard = Dashboard(history=100)
    events = []
    for topic, payload, at_us in messages:
        events += dashboard.apply(topic, payload, at_us)
    only_second = Dashboard(history=100)
    for topic, payload, at_us in stamped("second", 2_000_000):
        only_second.apply(topic, payload, at_us)
    assert dashboard.take_changed() == only_second.take_changed()
    assert [e for e in events if e[0] != "live.session_start"] == \
        only_second.recent_events()


def test_each_rig_has_views_of_its_own() -> None:
    """Issue 25: game.<rig>.* make dashboard.game.<rig>.<view>, apart from the single
    rig's dashboard.game.<view> and from each other; a rig's events say which rig."""
    decoder = GameDecoder()
    dashboard = Dashboard(trace_bin_m=10.0)
    events = []
    for rig, cars in (("a", 3), ("b", 5)):
        for _, datagrams in SessionSimulator(cars=cars, hz=5, duration_s=20).frames():
            for datagram in datagrams:
                packet = decoder.decode(datagram)
                assert isinstance(packet, Packet)
                events += dashboard.apply(f"game.{rig}.{packet.name}", packet.data)
    views = dashboard.take_changed()
    assert len(views["dashboard.game.a.leaderboard"]) == 3
    assert len(views["dashboard.game.b.leaderboard"]) == 5
    assert views["dashboard.game.b.session"]["track"] == "Silverstone"
    assert "dashboard.game.leaderboard" not in views  # the single rig sent nothing
    assert dashboard.all_views()["dashboard.game.leaderboard"] == []
    assert {(topic, event["rig"]) for topic, event in events} == {
        ("game.a.event", "a"), ("game.b.event", "b")}
    # A topic that is no game packet's is ignored, not taken for a rig.
    assert dashboard.apply("game.a.b.c", {}) == [] and len(dashboard.rigs) == 3


def test_panels_are_bounded_and_the_rigs_left_out_are_named() -> None:
    dashboard = Dashboard()
    session = GameDecoder().decode(next(iter(SessionSimulator(cars=1).frames()))[1][0])
    assert isinstance(session, Packet)
    for index in range(MAX_RIGS + 2):
        dashboard.apply(f"game.r{index:02d}.{session.name}", session.data)
    assert len(dashboard.rigs) == MAX_RIGS + 1  # the named ones, and the single rig's
    assert dashboard.rigs_not_shown == {f"r{MAX_RIGS:02d}", f"r{MAX_RIGS + 1:02d}"}
