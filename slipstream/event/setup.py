"""An event's directory: its settings, its secrets and the broker's users, sans-I/O but for
the files themselves.

    EVENT/event.toml     the settings: rigs, ports, LAN or this machine only, points;
                         written at the first start, read at every next (edit, run again)
    EVENT/secrets.toml   the passwords the processes log in with (mode 0600)
    EVENT/users.toml     the broker's --users file, made again at every start from the
                         two above (so it always matches them)
    EVENT/broker/        the broker's --data-dir: the standings, laps and telemetry
    EVENT/exports/       the standings' CSV exports
    EVENT/logs/          each process's log

Who may do what (the broker enforces it, docs/security.md): the standings
service writes standings.* and reads everything; each rig's bridge writes
only its own game.RIG.* and laps.game.RIG; the screens (anyone without a
password) only read; `admin` (the organiser, with the admin password) may do
anything, for `slipstream stats` or a consumer of their own.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from broker.errors import ConfigError
from broker.users.passwords import hash_password, new_password
from consumer.standings.table import DEFAULT_POINTS, StandingsError, parse_points
from f1vocab.game.topics import RigNameError, check_rig
from f1vocab.laps import game_laps_topic

SETTINGS_FILE = "event.toml"
SECRETS_FILE = "secrets.toml"
USERS_FILE = "users.toml"
GAME_PORT = 20777  # what the F1 games send to unless told otherwise
READ = ["standings.>", "laps.>", "game.>", "live.>", "alerts.>"]  # what the screens see


@dataclass(frozen=True)
class Settings:
    rigs: tuple[str, ...] = ("rig1",)
    lan: bool = True  # serve the rigs and screens on every interface; False: loopback
    broker_port: int = 20778
    udp_port: int = GAME_PORT  # rig i listens on udp_port + i
    standings_port: int = 8081
    dashboard_port: int = 8080
    points: str = ",".join(map(str, DEFAULT_POINTS))

    def rig_ports(self) -> dict[str, int]:
        return {rig: self.udp_port + index for index, rig in enumerate(self.rigs)}

    def check(self) -> Settings:
        if not self.rigs:
            raise ConfigError("an event needs at least one rig (--rigs N or --rig NAME)")
        for rig in self.rigs:
            try:
                check_rig(rig)
            except RigNameError as exc:
                raise ConfigError(str(exc)) from None
        if len(set(self.rigs)) != len(self.rigs):
            raise ConfigError(f"a rig is named twice: {', '.join(self.rigs)}")
        ports = {"broker_port": self.broker_port, "standings_port": self.standings_port,
                 "dashboard_port": self.dashboard_port}
        for name, port in {**ports, "udp_port": self.udp_port}.items():
            if not 1 <= port <= 65535:
                raise ConfigError(f"{name} {port} is not a port (1-65535)")
        if self.udp_port + len(self.rigs) - 1 > 65535:
            raise ConfigError(f"{len(self.rigs)} rigs from UDP port {self.udp_port} go past "
                              "65535")
        if len(set(ports.values())) != len(ports):
            raise ConfigError(f"two services on one port: {ports}")
        try:
            parse_points(self.points)
        except StandingsError as exc:
            raise ConfigError(str(exc)) from None
        return self


@dataclass
class Secrets:
    admin: str = field(default_factory=new_password)
    standings: str = field(default_factory=new_password)
    rigs: dict[str, str] = field(default_factory=dict)

    def rig(self, name: str) -> str:
        return self.rigs.setdefault(name, new_password())


class EventDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.settings_file = path / SETTINGS_FILE
        self.secrets_file = path / SECRETS_FILE
        self.users_file = path / USERS_FILE
        self.broker_data = path / "broker"
        self.exports = path / "exports"
        self.logs = path / "logs"

    @property
    def exists(self) -> bool:
        return self.settings_file.is_file()

    # --- settings ----------------------------------------------------------------------

    def settings(self, changes: dict[str, Any]) -> Settings:
        """The event's settings: the file's (if any), with `changes` (the flags given)
        applied; checked, and written back so the next start is the same event."""
        settings = replace(self._read_settings(), **changes).check()
        self.path.mkdir(parents=True, exist_ok=True)
        self.settings_file.write_text(_settings_text(settings), encoding="utf-8")
        return settings

    def _read_settings(self) -> Settings:
        if not self.exists:
            return Settings()
        data = _read_toml(self.settings_file)
        known = set(Settings.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{self.settings_file}: unknown setting {unknown[0]!r} (known: "
                              f"{', '.join(sorted(known))})")
        try:
            return Settings(**{**data, "rigs": tuple(data.get("rigs", Settings.rigs))})
        except TypeError as exc:
            raise ConfigError(f"{self.settings_file}: {exc}") from None

    # --- secrets and users -------------------------------------------------------------

    def secrets(self, settings: Settings) -> tuple[Secrets, bool]:
        """The passwords (made at the first start, kept after); True if made just now."""
        made = not self.secrets_file.exists()
        secrets = Secrets()
        if not made:
            data = _read_toml(self.secrets_file)
            try:
                secrets = Secrets(str(data["admin"]), str(data["standings"]),
                                  {str(k): str(v) for k, v in data.get("rigs", {}).items()})
            except (KeyError, AttributeError) as exc:
                raise ConfigError(f"{self.secrets_file} is damaged ({exc}): remove it to make "
                                  "new passwords") from None
        for rig in settings.rigs:
            secrets.rig(rig)
        text = _toml({"admin": secrets.admin, "standings": secrets.standings},
                     {"rigs": secrets.rigs},
                     "# The passwords slipstream event's processes log in with. Keep it "
                     "private.\n")
        # Written with no access for others from the first byte.
        descriptor = os.open(self.secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        return secrets, made

    def write_users(self, settings: Settings, secrets: Secrets) -> None:
        """The broker's users file, made from the settings and secrets at every start."""
        users: dict[str, dict[str, Any]] = {
            "users.admin": {"password": hash_password(secrets.admin),
                            "publish": [">"], "subscribe": [">"]},
            "users.standings": {"password": hash_password(secrets.standings),
                                "publish": ["standings.>"], "subscribe": READ},
            "users.screen": {"subscribe": READ},
        }
        for rig in settings.rigs:
            users[f"users.{rig_user(rig)}"] = {
                "password": hash_password(secrets.rig(rig)),
                "publish": [f"game.{rig}.>", game_laps_topic(rig)]}
        text = _toml({"anonymous": "screen"}, users,
                     "# Made by `slipstream event` at every start, from event.toml and "
                     "secrets.toml: edits here are replaced.\n")
        self.users_file.write_text(text, encoding="utf-8")


def rig_user(rig: str) -> str:
    return f"rig-{rig}"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def _settings_text(settings: Settings) -> str:
    return _toml({
        "rigs": list(settings.rigs), "lan": settings.lan,
        "broker_port": settings.broker_port, "udp_port": settings.udp_port,
        "standings_port": settings.standings_port,
        "dashboard_port": settings.dashboard_port, "points": settings.points},
        {}, "# slipstream event: this event's settings (edit them, or give flags, and run "
            "`slipstream event` again).\n# Rig i listens for its game on udp_port + i; lan = "
            "false serves this machine only.\n")


def _toml(top: dict[str, Any], tables: dict[str, dict[str, Any]], header: str) -> str:
    """The few TOML shapes these files need: strings, numbers, booleans, string lists."""
    lines = [header.rstrip("\n")]
    lines += [f"{key} = {_value(value)}" for key, value in top.items()]
    for name, table in tables.items():
        lines += ["", f"[{name}]"]
        lines += [f"{_key(key)} = {_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return key if key.replace("-", "").replace("_", "").isalnum() else _value(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
