"""Alert rules: loading them from TOML (refusing bad ones clearly) and evaluating them.

A rule watches one field of the messages of a topic pattern. The field path
may contain `*`, so one rule covers every car or every driver; each match
(its "key", e.g. the racing number) is tracked on its own. Comparisons fire
when they become true (a held condition alerts once) and re-arm when they are
false again (past `rearm`, for hysteresis); `cooldown_s` keeps a flapping
value from alerting more than once in that many seconds, per `cooldown_key`
(by default each key; "{keys[0]}" groups a car's four wheels, "" the whole
rule), and the next alert says how many it held back. Messages read in words:
`{keys[1]:wheel}` is "front-left", `{...[penalty_type]:penalty}` "Time
penalty" (NAMED lists them). Pure logic, no I/O.
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

from broker.errors import ConfigError, ProtocolError
from broker.server.routing import validate_pattern
from f1vocab.game.names import (
    penalty_name,
    safety_car_event_name,
    safety_car_name,
    session_type_name,
    track_name,
    wheel_name,
)
from f1vocab.game.topics import game_packet_of, packet_patterns, split_game_topic

CONDITIONS = (">", "<", "==", "!=", "in", "changed", "rising")
SEVERITIES = ("info", "warning", "critical")
KEYS = {"name", "topic", "field", "condition", "value", "rearm", "cooldown_s", "cooldown_key",
        "severity", "message", "on_snapshot", "repeat"}
# Format specs that turn the game's codes into words: "{keys[1]:wheel}", "{x:penalty}".
NAMED: dict[str, Callable[[int], str]] = {
    "wheel": wheel_name, "penalty": penalty_name, "safety_car": safety_car_name,
    "safety_car_event": safety_car_event_name, "track": track_name,
    "session_type": session_type_name,
}
_MISSING: Any = object()


@dataclass
class Alert:
    rule: str
    severity: str
    message: str
    topic: str
    seq: int
    key: str
    value: Any
    previous: Any
    clock_us: int  # the time the rule reasoned with: the source's clock when it has one
    broker_ts_us: int = 0  # when the broker stored the message, µs since 1970 UTC

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Track:
    """What a rule remembers for one key."""

    previous: Any = _MISSING
    armed: bool = True


@dataclass
class _Cooldown:
    """One cooldown key's last alert, and the alerts held back since."""

    last_alert_us: int
    held: int = 0


@dataclass
class Rule:
    name: str
    topic: str
    field: str
    condition: str
    severity: str
    message: str
    value: Any = None
    rearm: Any = None
    cooldown_s: float = 0.0
    cooldown_key: str = "{key}"  # what one cooldown covers (a template like the message)
    on_snapshot: bool = False  # a snapshot sets the baseline silently unless this is true
    repeat: bool = False  # alert on every message the condition holds (discrete events)
    # By topic and key: two rigs' car 3 (game.a.*, game.b.*) are two cars.
    _tracks: dict[tuple[str, str], _Track] = dataclass_field(default_factory=dict, repr=False)
    _cooldowns: dict[tuple[str, str], _Cooldown] = dataclass_field(default_factory=dict,
                                                                   repr=False)

    def evaluate(self, topic: str, seq: int, clock_us: int, data: Any,
                 broker_ts_us: int = 0,
                 driver: Callable[[str, str], str] | None = None) -> Iterator[Alert]:
        """The alerts one message raises; cooldowns run on `clock_us` (the source's clock
        for a replay, so it alerts as the live session did)."""
        snapshot = isinstance(data, dict) and bool(data.get("snapshot"))
        rig = rig_of(topic)
        for key, value, parent in field_values(data, self.field.split(".")):
            track = self._tracks.setdefault((topic, key), _Track())
            fire = self._fires(track, value)
            previous, track.previous = track.previous, value
            if not fire or (snapshot and not self.on_snapshot):
                continue
            values = dict(value=value, key=key, keys=key.split("."), topic=topic, seq=seq,
                          previous=None if previous is _MISSING else previous, rule=self.name,
                          severity=self.severity, parent=parent, rig=rig or "",
                          driver=(driver or _car)(topic, _event_car(parent) or key))
            held = self._cooled_down((topic, render(self.cooldown_key, **values)), clock_us)
            if held is None:
                continue
            text = render(self.message, **values)
            if rig:
                text = f"rig {rig}: {text}"  # which rig's car 3
            if held:
                text += f" (+{held} more held back by the {self.cooldown_s:g} s cooldown)"
            yield Alert(self.name, self.severity, text, topic, seq, key, value,
                        None if previous is _MISSING else previous, clock_us, broker_ts_us)

    def _cooled_down(self, cooldown_key: tuple[str, str], now_us: int) -> int | None:
        """None while `cooldown_key` is cooling down (the alert is counted as held back);
        else how many were held back since its last alert."""
        if not self.cooldown_s:
            return 0
        cooldown = self._cooldowns.get(cooldown_key)
        if cooldown is not None and now_us - cooldown.last_alert_us < self.cooldown_s * 1e6:
            cooldown.held += 1
            return None
        self._cooldowns[cooldown_key] = _Cooldown(now_us)
        return cooldown.held if cooldown is not None else 0

    def _fires(self, track: _Track, value: Any) -> bool:
        if self.condition == "changed":
            return track.previous is not _MISSING and value != track.previous
        if self.condition == "rising":  # an edge needs a value seen before it, like "changed"
            return track.previous is not _MISSING and bool(value) and not bool(track.previous)
        holds = _compare(self.condition, value, self.value)
        if self.repeat:
            return holds
        if track.armed:
            track.armed = not holds
            return holds  # fires once, then stays quiet while the condition holds
        if self.rearm is not None:  # hysteresis: > 90 with rearm 85 re-arms below 85
            opposite = "<" if self.condition == ">" else ">"
            track.armed = _compare(opposite, value, self.rearm)
        else:
            track.armed = not holds
        return False


def _car(topic: str, key: str) -> str:
    """`{driver}` when nothing says who drives: the car the key starts with."""
    return f"Car {key.split('.')[0]}"


def _event_car(parent: Any) -> str | None:
    """The car a game event is about (`event_details.vehicle_idx`: a fastest lap, a
    penalty), so `{driver}` names it; None for anything else."""
    details = parent.get("event_details") if isinstance(parent, dict) else None
    car = details.get("vehicle_idx") if isinstance(details, dict) else None
    return str(car) if isinstance(car, int) and not isinstance(car, bool) else None


def rig_of(topic: str) -> str | None:
    """The rig of a game.<rig>.<packet> topic; None for any other."""
    rig, _ = game_packet_of(topic) or (None, "")
    return rig


def patterns_of(rule: Rule) -> tuple[str, ...]:
    """What a rule subscribes to: its topic, and a one-rig game topic (game.<packet>)
    also from every rig (game.*.<packet>), so the default rules watch every rig."""
    if rule.topic.startswith("game.") and rule.topic.count(".") == 1 \
            and not {"*", ">"} & set(rule.topic):
        return packet_patterns(split_game_topic(rule.topic)[1])
    return (rule.topic,)


def _compare(condition: str, value: Any, threshold: Any) -> bool:
    try:
        match condition:
            case ">":
                return bool(_number(value) > _number(threshold))
            case "<":
                return bool(_number(value) < _number(threshold))
            case "==":
                return bool(value == threshold)
            case "!=":
                return bool(value != threshold)
            case "in":
                return value in threshold
    except (TypeError, ValueError):
        return False
    return False


def _number(value: Any) -> float:
    return float(value)  # F1 live timing sends numbers as strings ("28.6")


class _Template(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class _Anything:
    """Stands in for every placeholder when a template is checked at load time:
    it takes any index ({parent[Message]}) and any format ({value:.1f})."""

    def __getitem__(self, key: Any) -> _Anything:
        return self

    def __format__(self, spec: str) -> str:
        return ""


class _AnyKey(dict[str, Any]):
    def __missing__(self, key: str) -> _Anything:
        return _Anything()


class _Words(string.Formatter):
    """str.format, plus the NAMED specs: a code formatted as its name."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        named = NAMED.get(format_spec)
        if named is None:
            return super().format_field(value, format_spec)
        if isinstance(value, _Anything):  # a template checked at load time
            return ""
        return named(int(value))

    def get_value(self, key: int | str, args: Any, kwargs: Any) -> Any:
        return kwargs[key] if isinstance(key, str) else args[key]


_WORDS = _Words()


def render(template: str, **values: Any) -> str:
    """The alert text; a placeholder that does not fit the message is left as it is."""
    try:
        return _WORDS.vformat(template, (), _Template(values))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return f"{template} [value={values.get('value')!r}]"


def field_values(data: Any, path: list[str], key: tuple[str, ...] = (),
                 parent: Any = None) -> Iterator[tuple[str, Any, Any]]:
    """(key, value, parent) for every match of `path` in `data`; `*` matches every item."""
    if not path:
        yield ".".join(key), data, parent
        return
    head, rest = path[0], path[1:]
    if isinstance(data, dict):
        items = list(data.items()) if head == "*" else \
            [(head, data[head])] if head in data else []
    elif isinstance(data, list):
        if head == "*":
            items = [(str(i), item) for i, item in enumerate(data)]
        elif head.isdigit() and int(head) < len(data):
            items = [(head, data[int(head)])]
        else:
            items = []
    else:
        return
    for name, item in items:
        yield from field_values(item, rest, key + ((name,) if head == "*" else ()), data)


# --- loading -----------------------------------------------------------------------


def load_rules(path: Path) -> list[Rule]:
    """Every rule of a TOML file, or ConfigError naming the file, the line and the reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read rules file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start:,} is "
                          f"0x{exc.object[exc.start]:02x}); rules files are TOML") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    entries = document.get("rule")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: no [[rule]] tables")
    lines = [number for number, line in enumerate(text.splitlines(), 1)
             if line.strip().replace(" ", "") == "[[rule]]"]
    rules = []
    for index, entry in enumerate(entries):
        where = f"{path}, line {lines[index] if index < len(lines) else '?'}"
        rules.append(_rule(entry, f"{where} (rule {entry.get('name', index + 1)!r})"))
    names = [rule.name for rule in rules]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"{path}: rule names must be unique: {', '.join(duplicates)}")
    return rules


def _rule(entry: dict[str, Any], where: str) -> Rule:
    def bad(reason: str) -> ConfigError:
        return ConfigError(f"{where}: {reason}")

    unknown = sorted(set(entry) - KEYS)
    if unknown:
        raise bad(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(KEYS))})")
    for key in ("name", "topic", "field", "condition", "severity", "message"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise bad(f"{key!r} is required and must be a non-empty string")
    try:
        validate_pattern(entry["topic"])
    except ProtocolError as exc:
        raise bad(str(exc)) from None
    if entry["condition"] not in CONDITIONS:
        raise bad(f"unknown condition {entry['condition']!r} (one of: {', '.join(CONDITIONS)})")
    if entry["severity"] not in SEVERITIES:
        raise bad(f"severity {entry['severity']!r} is not one of {', '.join(SEVERITIES)}")
    needs_value = entry["condition"] not in ("changed", "rising")
    if needs_value and "value" not in entry:
        raise bad(f"condition {entry['condition']!r} needs a 'value'")
    if entry["condition"] == "in" and not isinstance(entry.get("value"), list):
        raise bad("condition 'in' needs a list 'value', e.g. value = [\"RED\", \"YELLOW\"]")
    if entry["condition"] in (">", "<") and not isinstance(entry["value"], int | float):
        raise bad(f"condition {entry['condition']!r} needs a number 'value'")
    if "repeat" in entry and entry["condition"] in ("changed", "rising"):
        raise bad("'repeat' goes with comparisons, not 'changed' or 'rising'")
    if "rearm" in entry and entry["condition"] not in (">", "<"):
        raise bad("'rearm' (hysteresis) only goes with '>' or '<'")
    cooldown = entry.get("cooldown_s", 0)
    if not isinstance(cooldown, int | float) or cooldown < 0:
        raise bad(f"'cooldown_s' must be a number >= 0, got {cooldown!r}")
    cooldown_key = entry.get("cooldown_key", "{key}")
    if not isinstance(cooldown_key, str):
        raise bad(f"'cooldown_key' must be a string template, got {cooldown_key!r}")
    for what, template in (("message", entry["message"]), ("cooldown_key", cooldown_key)):
        try:
            _WORDS.vformat(template, (), _AnyKey())
        except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
            raise bad(f"bad {what} template {template!r}: {exc}") from None
    return Rule(name=entry["name"], topic=entry["topic"], field=entry["field"],
                condition=entry["condition"], severity=entry["severity"],
                message=entry["message"], value=entry.get("value"), rearm=entry.get("rearm"),
                cooldown_s=float(cooldown), cooldown_key=cooldown_key,
                on_snapshot=bool(entry.get("on_snapshot", False)),
                repeat=bool(entry.get("repeat", False)))
