"""`slipstream event`'s directory without processes: settings kept between starts, the
passwords private, and a users file the broker takes that gives each part only its own
(issue 25)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from broker.errors import ConfigError
from broker.users.passwords import verify_password
from broker.users.table import load_users
from slipstream.event.setup import EventDir


def test_the_settings_are_kept_and_flags_change_them(tmp_path: Path) -> None:
    event = EventDir(tmp_path / "night")
    first = event.settings({"rigs": ("left", "right"), "lan": False})
    assert first.rig_ports() == {"left": 20777, "right": 20778}
    again = EventDir(tmp_path / "night").settings({})
    assert again == first  # run again with no flags: the same event
    moved = event.settings({"udp_port": 30000})
    assert moved.rigs == ("left", "right") and moved.rig_ports()["right"] == 30001


@pytest.mark.parametrize(("changes", "says"), [
    ({"rigs": ("a", "a")}, "a rig is named twice"),
    ({"rigs": ("lap_data",)}, "is a packet's name"),
    ({"standings_port": 8080}, "two services on one port"),
    ({"udp_port": 65535, "rigs": ("a", "b")}, "go past 65535"),
    ({"points": "25,x"}, "is not a comma-separated list"),
])
def test_bad_settings_are_refused_with_the_reason(tmp_path: Path, changes: dict[str, object],
                                                   says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        EventDir(tmp_path).settings(changes)


def test_a_damaged_settings_file_says_which_and_why(tmp_path: Path) -> None:
    (tmp_path / "event.toml").write_text("rigs = ['a']\ncolour = 'red'\n")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        EventDir(tmp_path).settings({})
    (tmp_path / "event.toml").write_text("rigs = [\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        EventDir(tmp_path).settings({})


def test_each_part_may_do_only_its_own_job(tmp_path: Path) -> None:
    event = EventDir(tmp_path)
    settings = event.settings({"rigs": ("rig1", "rig2")})
    secrets, made = event.secrets(settings)
    assert made and stat.S_IMODE(event.secrets_file.stat().st_mode) == 0o600
    event.write_users(settings, secrets)
    users = load_users(event.users_file)  # as the broker reads it
    assert users.anonymous == "screen"
    assert verify_password(secrets.admin, users.users["admin"].password_hash or "")
    rig1 = users.users["rig-rig1"]
    assert verify_password(secrets.rigs["rig1"], rig1.password_hash or "")
    assert rig1.publish.refuse_topic("game.rig1.lap_data") is None
    assert rig1.publish.refuse_topic("laps.game.rig1") is None
    for forged in ("game.rig2.lap_data", "standings.lap", "laps.game.rig2", "game.lap_data"):
        assert rig1.publish.refuse_topic(forged) is not None, forged
    standings = users.users["standings"]
    assert standings.publish.refuse_topic("standings.lap") is None
    assert standings.publish.refuse_topic("game.rig1.lap_data") is not None
    assert standings.subscribe.refuse_pattern("game.*.lap_data") is None
    screen = users.users["screen"]
    assert screen.password_hash is None and screen.publish.refuse_topic("x") is not None
    assert screen.subscribe.refuse_pattern("standings.>") is None
    # Started again: the same passwords; a new rig gets one of its own.
    again, made = event.secrets(event.settings({"rigs": ("rig1", "rig2", "rig3")}))
    assert not made and again.admin == secrets.admin and again.rigs["rig1"] == \
        secrets.rigs["rig1"] and again.rigs["rig3"] not in secrets.rigs.values()
