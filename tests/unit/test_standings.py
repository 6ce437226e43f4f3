"""The standings without sockets: the table folded from standings.* messages, points, CSV,
and the laps the game and live timing reveal."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from consumer.standings.sources import AtTheWheel, GameLaps, LiveLaps
from consumer.standings.table import (
    LAPS_KEPT,
    MAX_DRIVERS,
    Standings,
    StandingsError,
    parse_points,
)
from f1vocab.laps import GameLapTracker


def lap(table: Standings, lap_id: str, driver: str, ms: int, track: str = "Monza",
        at_us: int = 0, source: str = "manual", name: str | None = None) -> bool:
    return table.apply("standings.lap", {"id": lap_id, "driver": driver, "name": name or driver,
                                         "track": track, "lap_ms": ms, "source": source}, at_us)


def test_each_driver_stands_on_a_single_fastest_lap_with_points() -> None:
    table = Standings(points=(10, 6, 4))
    table.apply("standings.track", {"track": "Monza"})
    for index, (driver, ms) in enumerate([("ann", 81_000), ("bob", 80_500), ("ann", 80_100),
                                          ("cat", 82_000), ("dan", 83_000), ("bob", 85_000)]):
        lap(table, f"l{index}", driver, ms)
    table.apply("standings.driver", {"id": "eve", "name": "Eve"})
    rows = table.rows()
    assert [(r["position"], r["name"], r["lap"], r["gap"], r["points"]) for r in rows] == [
        (1, "ann", "1:20.100", "", 10), (2, "bob", "1:20.500", "+0.400", 6),
        (3, "cat", "1:22.000", "+1.900", 4), (4, "dan", "1:23.000", "+2.900", 0),
        (None, "Eve", "", "", 0)]


def test_equal_times_go_to_whoever_set_theirs_first() -> None:
    table = Standings()
    lap(table, "late", "bob", 80_000, at_us=2_000)
    lap(table, "early", "ann", 80_000, at_us=1_000)
    assert [r["driver"] for r in table.rows("Monza")] == ["ann", "bob"]


def test_laps_are_kept_per_track_and_the_table_is_the_current_tracks() -> None:
    table = Standings()
    lap(table, "a", "ann", 80_000, track="Monza")
    lap(table, "b", "bob", 90_000, track="Spa")
    table.apply("standings.track", {"track": "Spa"})
    assert [r["driver"] for r in table.rows() if r["position"]] == ["bob"]
    assert [r["driver"] for r in table.rows("Monza") if r["position"]] == ["ann"]
    assert table.view()["tracks"] == ["Monza", "Spa"]


def test_a_lap_read_twice_counts_once_and_a_struck_lap_stays_struck() -> None:
    table = Standings()
    assert lap(table, "x", "ann", 80_000)
    assert not lap(table, "x", "ann", 80_000)  # a restart re-reading its source
    lap(table, "y", "ann", 81_000)
    assert table.apply("standings.lap_removed", {"id": "x"})
    assert table.best("ann", "Monza") == 81_000
    # The broker keeps order within a topic only: a strike may arrive before its lap.
    assert not table.apply("standings.lap_removed", {"id": "z"})
    assert lap(table, "z", "ann", 70_000)  # kept, to be listed and restored, but struck
    assert table.best("ann", "Monza") == 81_000 and table.view()["last_lap"]["id"] == "y"


def test_a_struck_lap_can_be_restored_and_every_lap_is_listed() -> None:
    """Issue 25: the admin sees every lap of a driver with its source, and strikes or
    restores any of them; strike and restore share a topic, so their order holds."""
    table = Standings()
    lap(table, "a", "ann", 82_000, at_us=1)
    lap(table, "b", "ann", 80_000, at_us=2)
    lap(table, "c", "ann", 81_000, at_us=3)
    assert table.apply("standings.lap_struck", {"id": "b", "struck": True})
    assert table.best("ann", "Monza") == 81_000
    listed = table.laps_of("ann", "Monza")
    assert [(lap["id"], lap["struck"], lap["best"]) for lap in listed] == [
        ("a", False, False), ("b", True, False), ("c", False, True)]
    assert not table.apply("standings.lap_struck", {"id": "b", "struck": True})  # again
    assert table.apply("standings.lap_struck", {"id": "b", "struck": False})
    assert table.best("ann", "Monza") == 80_000 and table.rows("Monza")[0]["lap_id"] == "b"
    # A restore before its lap (on another topic than the lap) leaves it counted.
    assert not table.apply("standings.lap_struck", {"id": "d", "struck": True})
    assert not table.apply("standings.lap_struck", {"id": "d", "struck": False})
    assert lap(table, "d", "ann", 79_000) and table.best("ann", "Monza") == 79_000
    with pytest.raises(StandingsError, match="struck 'yes' is not true or false"):
        table.apply("standings.lap_struck", {"id": "d", "struck": "yes"})


def test_a_rename_sticks_whichever_comes_first() -> None:
    after = Standings()
    lap(after, "x", "game:D1", 80_000, name="D1")
    after.apply("standings.driver", {"id": "game:D1", "name": "Alice"})
    before = Standings()
    before.apply("standings.driver", {"id": "game:D1", "name": "Alice"})
    lap(before, "x", "game:D1", 80_000, name="D1")
    assert after.rows()[0]["name"] == before.rows("Monza")[0]["name"] == "Alice"


def test_only_the_best_few_laps_of_a_driver_are_kept() -> None:
    table = Standings()
    for index in range(LAPS_KEPT + 5):
        lap(table, f"l{index}", "ann", 90_000 - index)
    kept = table.laps["Monza"]["ann"]
    assert len(kept) == LAPS_KEPT and kept[0].lap_ms == 90_000 - LAPS_KEPT - 4
    assert not lap(table, "slow", "ann", 99_000)  # slower than all kept: changes nothing


def test_every_change_counts_a_version_and_a_repeat_does_not() -> None:
    table = Standings()
    assert table.apply("standings.track", {"track": "Monza"}) and table.version == 1
    assert not table.apply("standings.track", {"track": "Monza"}) and table.version == 1
    assert not table.apply("standings.table", {"rows": []})  # published, never applied
    table.apply("standings.driver", {"id": "ann", "name": "Ann"})
    assert table.apply("standings.driving", {"driver": "ann"}) and table.driving == "ann"
    assert table.apply("standings.driving", {"driver": None}) and table.driving is None


@pytest.mark.parametrize(("topic", "data", "says"), [
    ("standings.lap", {"id": "x", "driver": "a", "name": "A", "track": "T", "lap_ms": 0,
                       "source": "manual"}, "lap_ms 0 is not a lap time"),
    ("standings.lap", {"id": "x", "driver": "a", "name": "A", "track": "T", "lap_ms": 1.5,
                       "source": "manual"}, "lap_ms 1.5 is not a lap time"),
    ("standings.lap", {"id": "x", "driver": "a", "name": "A", "track": "T", "lap_ms": 80_000,
                       "source": "radio"}, "source 'radio' is not one of game, live, manual"),
    ("standings.lap", {"id": "x", "driver": "a", "track": "T", "lap_ms": 80_000,
                       "source": "game"}, "a driver's name must be non-empty text"),
    ("standings.lap", {"driver": "a", "name": "A", "track": "T", "lap_ms": 80_000,
                       "source": "game"}, "standings.lap: 'id' must be non-empty text"),
    ("standings.driver", {"id": "a", "name": "x" * 65}, "at most 64 characters (65 given)"),
    ("standings.driver", {"id": "a", "name": "  "}, "must be non-empty text"),
    ("standings.track", ["Monza"], "standings.track: expected a map, got list"),
    ("standings.driving", {"driver": 7}, "driver 7 is not a driver id"),
])
def test_a_message_that_is_not_what_its_topic_holds_is_refused_by_name(
        topic: str, data: Any, says: str) -> None:
    table = Standings()
    with pytest.raises(StandingsError) as caught:
        table.apply(topic, data)
    assert says in str(caught.value)
    assert table.version == 0


def test_the_number_of_drivers_is_bounded() -> None:
    table = Standings()
    for index in range(MAX_DRIVERS):
        table.apply("standings.driver", {"id": f"d{index}", "name": f"D {index}"})
    with pytest.raises(StandingsError, match="at most 1,000 drivers"):
        lap(table, "x", "one-more", 80_000)
    table.apply("standings.driver", {"id": "d0", "name": "Renamed"})  # a rename still works
    assert table.drivers["d0"] == "Renamed"


def test_the_csv_is_sorted_by_fastest_lap_with_points() -> None:
    table = Standings(points=(25, 18))
    table.apply("standings.track", {"track": "Monza"})
    lap(table, "a", "ann", 81_234, at_us=1_700_000_000_000_000)
    lap(table, "b", "bob", 80_000, at_us=1_700_000_001_000_000, source="game")
    lap(table, "c", "cat", 82_000, at_us=1_700_000_002_000_000)
    table.apply("standings.driver", {"id": "dan", "name": "Dan, \"the\" Untimed"})
    rows = list(csv.reader(io.StringIO(table.csv_text())))
    assert rows == [
        ["position", "driver", "lap_time", "lap_ms", "gap", "points", "source", "set_at"],
        ["1", "bob", "1:20.000", "80000", "", "25", "game", "2023-11-14T22:13:21.000+00:00"],
        ["2", "ann", "1:21.234", "81234", "+1.234", "18", "manual",
         "2023-11-14T22:13:20.000+00:00"],
        ["3", "cat", "1:22.000", "82000", "+2.000", "0", "manual",
         "2023-11-14T22:13:22.000+00:00"]]


@pytest.mark.parametrize(("text", "points"), [("25,18,15", (25, 18, 15)), ("1", (1,))])
def test_points_are_configurable(text: str, points: tuple[int, ...]) -> None:
    assert parse_points(text) == points


@pytest.mark.parametrize("text", ["", "25,x", "25,-1", "25;18"])
def test_bad_points_are_refused(text: str) -> None:
    with pytest.raises(StandingsError, match="--points"):
        parse_points(text)


# --- the sources ------------------------------------------------------------------------

def header(player: int = 0, uid: int = 1) -> dict[str, Any]:
    return {"session_uid": uid, "player_car_index": player}


def lap_data(cars: list[tuple[int, int, int]], player: int = 0, uid: int = 1
             ) -> dict[str, Any]:
    """cars: (current lap, last lap ms, current lap invalid) per car."""
    return {"header": header(player, uid), "lap_data": [
        {"car_position": index + 1, "current_lap_num": number, "last_lap_time_in_ms": last,
         "current_lap_invalid": invalid} for index, (number, last, invalid) in enumerate(cars)]
        + [{"car_position": 0, "current_lap_num": 0, "last_lap_time_in_ms": 0,
            "current_lap_invalid": 0}]}  # an empty slot


def participants(*names: str, uid: int = 1) -> dict[str, Any]:
    return {"header": header(uid=uid), "num_active_cars": len(names),
            "participants": [{"name": name} for name in names]}


def session(track_id: int = 7, uid: int = 1) -> dict[str, Any]:
    return {"header": header(uid=uid), "track_id": track_id}


def laps_of(tracker: GameLapTracker, *packets: tuple[str, dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """What the game bridge publishes on laps.game for these packets."""
    return [lap for name, packet in packets for lap in tracker.observe(name, packet)]


def test_the_game_times_valid_completed_laps_named_and_placed() -> None:
    tracker, game = GameLapTracker(), GameLaps()
    laps = laps_of(tracker, ("session", session()), ("participants", participants("ANN", "BOB")),
                   ("lap_data", lap_data([(1, 0, 0), (1, 0, 0)])),
                   ("lap_data", lap_data([(1, 0, 1), (1, 0, 0)])),  # car 0 cuts a corner
                   ("lap_data", lap_data([(2, 80_000, 0), (2, 81_000, 0)])),
                   ("lap_data", lap_data([(3, 79_000, 0), (2, 81_000, 0)])),
                   ("lap_data", lap_data([(3, 79_000, 0), (2, 81_000, 0)])))  # same packet
    timed = [game.lap(lap, None) for lap in laps]
    assert [(lap.id, lap.driver, lap.name, lap.lap_ms, lap.track, lap.source)
            for lap in timed if lap is not None] == [
        ("game:1:1:1", "game:BOB", "BOB", 81_000, "Silverstone", "game"),
        ("game:1:0:2", "game:ANN", "ANN", 79_000, "Silverstone", "game")]
    assert timed[0] is None  # car 0's first lap: the game flagged it
    # Another rig's ANN is another driver.
    other = game.lap(laps[2], "b")
    assert other is not None and (other.driver, other.name) == ("game:b:ANN", "ANN (b)")


def test_the_players_laps_go_to_whoever_is_at_the_wheel() -> None:
    tracker, game = GameLapTracker(), GameLaps(player_only=True)
    laps = laps_of(tracker, ("session", session()),
                   ("participants", participants("PLAYER", "AI")),
                   ("lap_data", lap_data([(1, 0, 0), (1, 0, 0)])),
                   ("lap_data", lap_data([(2, 80_000, 0), (2, 81_000, 0)])))
    assert [lap["player"] for lap in laps] == [True, False]
    timed = [game.lap(lap, None, AtTheWheel("driver-1", "Alice")) for lap in laps]
    assert [(lap.driver, lap.name, lap.lap_ms) for lap in timed if lap is not None] == [
        ("driver-1", "Alice", 80_000)]  # and the AI car is not timed


def test_a_new_game_session_starts_its_laps_again() -> None:
    tracker = GameLapTracker()
    laps = laps_of(tracker, ("session", session()), ("participants", participants("ANN")),
                   ("lap_data", lap_data([(5, 80_000, 0)])),
                   # Session 2 starts at lap 1: not "lap 5 -> 1", and its first lap is its own.
                   ("lap_data", lap_data([(1, 0, 0)], uid=2)),
                   ("lap_data", lap_data([(2, 82_000, 0)], uid=2)))
    assert [GameLaps().lap(lap, None).id for lap in laps] == ["game:2:0:1"]  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [{}, {"player": True}, "a lap", {
    "player": False, "valid": True, "track": "Monza", "number": "x", "lap": 1,
    "time_ms": 1, "session": "1", "name": "A"}])
def test_a_message_that_is_not_a_lap_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"not a laps\.game lap"):
        GameLaps().lap(bad, None)


def live(data: dict[str, Any], snapshot: bool = False) -> dict[str, Any]:
    return {"data": data, "snapshot": snapshot}


def test_live_timing_gives_each_drivers_new_best_lap_once_named() -> None:
    source = LiveLaps()
    assert source.apply("live.TimingData", live(
        {"Lines": {"44": {"BestLapTime": {"Value": "1:28.451"}}}}, snapshot=True)) == []
    assert source.apply("live.SessionInfo", live(
        {"Key": 5778, "Meeting": {"Circuit": {"ShortName": "Silverstone"}}})) == []
    laps = source.apply("live.DriverList", live({"44": {"FullName": "Lewis HAMILTON"}}))
    assert [(lap.id, lap.driver, lap.name, lap.lap_ms, lap.track) for lap in laps] == [
        ("live:5778:44:88451", "live:44", "Lewis HAMILTON", 88_451, "Silverstone")]
    assert source.apply("live.TimingData", live({"Lines": {"44": {"NumberOfLaps": 5}}})) == []
    laps = source.apply("live.TimingData", live(
        {"Lines": {"44": {"BestLapTime": {"Value": "1:27.999"}}}}))
    assert [lap.lap_ms for lap in laps] == [87_999]
    # A damaged value is passed over, not a crash and not a lap.
    assert source.apply("live.TimingData", live(
        {"Lines": {"44": {"BestLapTime": {"Value": "1:2x.000"}}}})) == []


def test_a_name_is_unique_where_changes_are_applied_the_first_wins() -> None:
    table = Standings()
    assert table.apply("standings.driver", {"id": "d1", "name": "Racer"})
    with pytest.raises(StandingsError, match="there is already a driver named 'Racer'"):
        table.apply("standings.driver", {"id": "d2", "name": " racer "})  # a racing add
    assert table.drivers == {"d1": "Racer"}
    assert table.apply("standings.driver", {"id": "d1", "name": "RACER"})  # its own rename


@pytest.mark.parametrize("name", ["Ann\x00", "Ann\u202eevil", "A\u200bnn", "Ann\x7f"])
def test_names_with_control_or_bidi_characters_are_refused(name: str) -> None:
    with pytest.raises(StandingsError, match="control or direction characters"):
        Standings().apply("standings.driver", {"id": "d1", "name": name})


def test_csv_cells_a_spreadsheet_would_run_are_neutralised() -> None:
    from consumer.standings.table import spreadsheet_text

    assert [spreadsheet_text(text) for text in ("=1+1", "+1", "-1", "@A1", "\tx", "Ann")] == [
        "'=1+1", "'+1", "'-1", "'@A1", "'\tx", "Ann"]


def test_a_removed_driver_goes_with_their_laps_and_stays_out() -> None:
    standings = Standings()
    standings.apply("standings.track", {"track": "Monza"})
    for driver, name, lap_id, ms in (("d1", "Ann", "l1", 81_000), ("d2", "Bob", "l2", 80_000)):
        standings.apply("standings.driver", {"id": driver, "name": name})
        standings.apply("standings.lap", {"id": lap_id, "driver": driver, "name": name,
                                          "track": "Monza", "lap_ms": ms, "source": "manual"})
    standings.apply("standings.driving", {"driver": "d2", "rig": "a"})
    assert standings.view()["last_lap"]["name"] == "Bob"
    assert standings.apply("standings.driver_removed", {"id": "d2"})
    assert [row["name"] for row in standings.rows()] == ["Ann"]
    assert standings.driving_by_rig == {} and standings.view()["last_lap"] is None
    assert not standings.apply("standings.lap", {
        "id": "l3", "driver": "d2", "name": "Bob", "track": "Monza", "lap_ms": 70_000,
        "source": "game"})  # a lap of theirs arriving later stays out
    standings.apply("standings.lap", {"id": "l4", "driver": "d1", "name": "Ann",
                                      "track": "Monza", "lap_ms": 82_000, "source": "game"})
    assert standings.view()["last_lap"] == {
        "id": "l4", "driver": "d1", "name": "Ann", "lap": "1:22.000", "track": "Monza",
        "source": "game", "position": 1, "best": False}  # slower than her best: said too
