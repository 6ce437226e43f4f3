"""Alert rules, evaluated on scripted values (no sockets), and refused when malformed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from broker.errors import ConfigError
from consumer.alerter.rules import Rule, field_values, load_rules, patterns_of

SHIPPED = Path(__file__).resolve().parents[2] / "consumer" / "alerter" / "rules.toml"


def fired(rule: Rule, script: Sequence[tuple[float, Any]]) -> list[tuple[float, Any]]:
    """(time s, value) in; (time s, value) of each alert out."""
    alerts = []
    for seq, (at_s, data) in enumerate(script, 1):
        for alert in rule.evaluate("t", seq, int(at_s * 1e6), data):
            alerts.append((at_s, alert.value))
    return alerts


def test_threshold_alerts_once_while_held_and_rearms_past_hysteresis() -> None:
    rule = Rule("hot", "t", "v", ">", "warning", "{value}", value=90, rearm=85)
    script = [(0, {"v": 80}), (1, {"v": 95}), (2, {"v": 96}), (3, {"v": 88}), (4, {"v": 97}),
              (5, {"v": 80}), (6, {"v": 99})]
    assert fired(rule, script) == [(1, 95), (6, 99)]


def test_cooldown_keeps_a_flapping_value_quiet() -> None:
    rule = Rule("hot", "t", "v", ">", "warning", "{value}", value=90, cooldown_s=10)
    script = [(0, {"v": 95}), (1, {"v": 80}), (2, {"v": 95}), (3, {"v": 80}), (12, {"v": 91})]
    assert fired(rule, script) == [(0, 95), (12, 91)]


def test_changed_rising_and_in() -> None:
    changed = Rule("c", "t", "mode", "changed", "info", "{previous}->{value}")
    assert fired(changed, [(0, {"mode": "A"}), (1, {"mode": "A"}), (2, {"mode": "B"}),
                           (3, {}), (4, {"mode": "A"})]) == [(2, "B"), (4, "A")]
    rising = Rule("r", "t", "pit", "rising", "info", "{key}")
    assert fired(rising, [(0, {"pit": True}), (1, {"pit": False}), (2, {"pit": True}),
                          (3, {"pit": True})]) == [(2, True)]  # the first sighting is no edge
    flags = Rule("f", "t", "flag", "in", "warning", "{value}", value=["RED", "YELLOW"])
    assert fired(flags, [(0, {"flag": "GREEN"}), (1, {"flag": "RED"}),
                         (2, {"flag": "YELLOW"}), (3, {"flag": "GREEN"}),
                         (4, {"flag": "RED"})]) == [(1, "RED"), (4, "RED")]


def test_wildcards_track_each_key_and_templates_see_the_parent() -> None:
    rule = Rule("wear", "t", "cars.*.tyres.*", ">", "warning",
                "car {key} at {value}% ({parent})", value=70)
    data = {"cars": [{"tyres": [10, 75, 20, 71]}, {"tyres": [80, 0, 0, 0]}]}
    alerts = list(rule.evaluate("t", 1, 0, data))
    assert [(a.key, a.value) for a in alerts] == [("0.1", 75), ("0.3", 71), ("1.0", 80)]
    assert alerts[0].message == "car 0.1 at 75% ([10, 75, 20, 71])"
    assert list(rule.evaluate("t", 2, 1, data)) == []  # held: no repeat
    assert list(field_values({"a": {"b": 1}}, ["a", "c"])) == []


def test_a_snapshot_sets_the_baseline_silently() -> None:
    rule = Rule("c", "t", "data.Status", "==", "critical", "red", value="5")
    assert fired(rule, [(0, {"snapshot": True, "data": {"Status": "5"}}),
                        (1, {"snapshot": False, "data": {"Status": "1"}}),
                        (2, {"snapshot": False, "data": {"Status": "5"}})]) == [(2, "5")]


def test_the_shipped_rules_load() -> None:
    assert [rule.name for rule in load_rules(SHIPPED)] == [
        "track-status", "yellow-flag", "safety-car", "red-flag", "race-control-flag",
        "race-control-penalty", "tyre-wear", "brake-temperature",
        "tyre-temperature", "engine-temperature", "game-fastest-lap", "game-penalty",
        "game-safety-car", "lap-not-counted"]  # pit-lane entries: routine, not alerts


def test_repeat_alerts_on_every_discrete_event() -> None:
    rule = Rule("sc", "game.event", "event_string_code", "==", "warning", "{value}",
                value="SCAR", repeat=True)
    events = [(0, {"event_string_code": code}) for code in ("SSTA", "SCAR", "SCAR", "SEND")]
    assert fired(rule, events) == [(0, "SCAR"), (0, "SCAR")]
    held = Rule("sc", "game.event", "event_string_code", "==", "warning", "{value}",
                value="SCAR")
    assert fired(held, events) == [(0, "SCAR")]  # without repeat: once while it holds


def test_templates_may_format_numbers_and_reach_into_the_parent() -> None:
    rule = Rule("fl", "game.event", "event_string_code", "==", "info",
                "car {parent[event_details][vehicle_idx]} {parent[event_details][lap_time]:.3f}",
                value="FTLP", repeat=True)
    data = {"event_string_code": "FTLP", "event_details": {"vehicle_idx": 3, "lap_time": 49.3}}
    (alert,) = rule.evaluate("game.event", 1, 0, data)
    assert alert.message == "car 3 49.300"


@pytest.mark.parametrize(("text", "message"), [
    ('[[rule]]\nname = "a"\ntopic = "t"\nfield = "v"\ncondition = "bigger"\nvalue = 1\n'
     'severity = "info"\nmessage = "x"\n',
     "line 1 (rule 'a'): unknown condition 'bigger' (one of: >, <, ==, !=, in, changed, rising)"),
    ('\n\n[[rule]]\nname = "a"\ntopic = "t"\nfield = "v"\ncondition = ">"\nseverity = "info"\n'
     'message = "x"\n', "line 3 (rule 'a'): condition '>' needs a 'value'"),
    ('[[rule]]\nname = "a"\ntopic = "t"\nfield = "v"\ncondition = "in"\nvalue = "RED"\n'
     'severity = "info"\nmessage = "x"\n', "condition 'in' needs a list 'value'"),
    ('[[rule]]\nname = "a"\ntopic = "t"\nfield = "v"\ncondition = "changed"\n'
     'severity = "urgent"\nmessage = "x"\n', "severity 'urgent' is not one of"),
    ('[[rule]]\nname = "a"\ntopic = "t..x"\nfield = "v"\ncondition = "changed"\n'
     'severity = "info"\nmessage = "x"\n', "bad pattern 't..x'"),
    ('[[rule]]\nname = "a"\ntopic = "t"\nfeild = "v"\ncondition = "changed"\n'
     'severity = "info"\nmessage = "x"\n', "unknown key 'feild'"),
    ('[[rule]]\nname = "a"\ntopic = "t"\ncondition = "changed"\nseverity = "info"\n'
     'message = "x"\n', "'field' is required"),
    ('[[rule]]\nname = "a"\ntopic = "t"\nfield = "v"\ncondition = "changed"\n'
     'severity = "info"\nmessage = "{value"\n', "bad message template"),
    ('[[rule]]\nname = "a"\ntopic = "t"\nfield = "v"\ncondition = "=="\nvalue = 1\n'
     'rearm = 0\nseverity = "info"\nmessage = "x"\n', "'rearm' (hysteresis) only goes with"),
    ('[[rule]\nname = "a"\n', "not valid TOML: "),
    ('title = "no rules"\n', "no [[rule]] tables"),
])
def test_a_bad_rules_file_is_refused_with_file_line_and_reason(
        tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_rules(path)
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


def test_shipped_game_rules_speak_in_words_and_one_cooldown_covers_a_cars_wheels() -> None:
    rules = {rule.name: rule for rule in load_rules(SHIPPED)}
    wear = rules["tyre-wear"]

    def damage(at_s: float, worn: list[list[float]]) -> list[str]:
        data = {"car_damage_data": [{"tyres_wear": wheels} for wheels in worn]}
        return [a.message for a in wear.evaluate("game.car_damage", 1, int(at_s * 1e6), data)]

    assert damage(0, [[50, 50, 50, 50], [50, 50, 50, 50]]) == []
    # Every wheel of both cars crosses 70% at once: one line per car, not eight.
    assert damage(1, [[71, 72, 73, 74], [71, 72, 73, 74]]) == [
        "Car 0: rear-left tyre 71% worn", "Car 1: rear-left tyre 71% worn"]
    penalty = rules["game-penalty"].evaluate("game.event", 2, 0, {
        "event_string_code": "PENA",
        "event_details": {"vehicle_idx": 14, "penalty_type": 4, "time": 5}})
    assert [a.message for a in penalty] == ["Penalty for Car 14: Time penalty, 5 s"]
    # Named by the game's participants, as the cars are: an event's car is its vehicle_idx.
    names = {"game.event": {"14": "Sam Okafor"}}
    fastest = rules["game-fastest-lap"].evaluate(
        "game.event", 4, 0, {"event_string_code": "FTLP",
                             "event_details": {"vehicle_idx": 14, "lap_time": 87.402}},
        driver=lambda topic, car: names[topic][car])
    assert [a.message for a in fastest] == ["Fastest lap: Sam Okafor, 87.402 s"]
    # A lap the game flagged, from laps.* (one shape for every source): said by name.
    lap = {"source": "game", "rig": "rig1", "number": "0", "name": "Alex Moreau", "lap": 3,
           "time": "1:28.410", "valid": False}
    flagged = rules["lap-not-counted"].evaluate("laps.game.rig1", 5, 0, lap)
    assert [a.message for a in flagged] == [
        "Alex Moreau: lap 3 in 1:28.410 not counted (the game flagged it)"]
    assert list(rules["lap-not-counted"].evaluate("laps.game.rig1", 6, 0,
                                                  {**lap, "valid": True})) == []
    safety = rules["game-safety-car"].evaluate("game.event", 3, 0, {
        "event_string_code": "SCAR", "event_details": {"safety_car_type": 1, "event_type": 0}})
    assert [a.message for a in safety] == ["Safety car deploying"]


def test_a_game_rule_watches_every_rig_and_keeps_each_rig_s_cars_apart() -> None:
    """Issue 25: with rigs (game.<rig>.<packet>) car 3 of rig a is not car 3 of rig b: each
    alerts once, says its rig, and cools down on its own."""
    [rule] = [r for r in load_rules(SHIPPED) if r.name == "tyre-wear"]
    assert patterns_of(rule) == ("game.car_damage", "game.*.car_damage")
    worn = {"car_damage_data": [{"tyres_wear": [10.0, 10.0, 10.0, 10.0]},
                                {"tyres_wear": [75.0, 10.0, 10.0, 10.0]}]}
    texts = [alert.message for topic in ("game.a.car_damage", "game.b.car_damage",
                                         "game.a.car_damage", "game.car_damage")
             for alert in rule.evaluate(topic, 1, 0, worn)]
    assert texts == ["rig a: Car 1: rear-left tyre 75% worn",
                     "rig b: Car 1: rear-left tyre 75% worn",
                     "Car 1: rear-left tyre 75% worn"]  # rig a's car 1 already alerted
    other = Rule("x", "live.TrackStatus", "v", ">", "info", "{value}", value=1)
    assert patterns_of(other) == ("live.TrackStatus",)


def test_alerts_name_the_driver_once_the_source_has_said_who_it_is() -> None:
    """Issue 25: `Car 99 in the pit lane` and `Car 3: front-right tyre 70% worn`, car after
    car, told nobody who; the game's participants and live timing's driver list do."""
    from consumer.alerter.names import Drivers

    rules = {rule.name: rule for rule in load_rules(SHIPPED)}
    drivers = Drivers()
    worn = {"car_damage_data": [{"tyres_wear": [10.0] * 4}, {"tyres_wear": [75.0, 0, 0, 0]}]}

    def alerts(topic: str) -> list[str]:
        return [a.message for a in rules["tyre-wear"].evaluate(topic, 1, 0, worn, 0,
                                                              drivers.name)]

    assert alerts("game.x.car_damage") == ["rig x: Car 1: rear-left tyre 75% worn"]
    drivers.observe("game.a.participants", {"num_active_cars": 2, "participants": [
        {"name": "Alice"}, {"name": "Bob"}]})
    assert alerts("game.a.car_damage") == ["rig a: Bob: rear-left tyre 75% worn"]
    assert alerts("game.car_damage") == ["Car 1: rear-left tyre 75% worn"]  # not rig a's
    drivers.observe("live.DriverList", {"snapshot": True, "data": {"44": {"Tla": "HAM"}}})
    assert drivers.name("live.TimingData", "44") == "HAM"
    assert drivers.name("live.TimingData", "16") == "Car 16"
