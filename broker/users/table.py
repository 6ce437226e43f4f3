"""The --users file: who may connect, with what credential, to do what, and how much.

    anonymous = "screen"            # optional: who a HELLO without a user name is

    [defaults]                      # quotas for every user that does not set its own
    max_connections = 8

    [users.standings]
    password = "scrypt$16384$8$1$..."   # from `slipstream passwd standings`
    publish = ["standings.>"]
    subscribe = ["standings.>", "game.>"]

    [users.screen]
    subscribe = { allow = [">"], deny = ["admin.>"] }

    [users.track-cam]
    cert = "track-cam"              # the CN of a client certificate signed by --tls-ca

Read once at start and again on SIGHUP; anything wrong is refused with the
line and what is wrong, and a reload that fails keeps the table it had.
docs/security.md is the reference.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from broker.errors import ConfigError, ProtocolError
from broker.server.routing import validate_pattern
from broker.users.passwords import BadHashError, check_hash
from broker.users.permissions import ALLOW_ALL, Rules

USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_USER_KEYS = {"password", "cert", "publish", "subscribe"}


@dataclass(frozen=True)
class Quotas:
    """A user's share of the broker (None: its fair share of the global cap, see
    broker/users/accounts.py). Rates are per second, over all its connections."""

    max_connections: int | None = None
    max_topics: int | None = None
    max_durables: int | None = None
    max_subscriptions: int | None = None
    max_followed_topics: int | None = None
    max_publish_rate: float | None = None
    max_publish_bytes: float | None = None


_QUOTA_KEYS = {f.name for f in fields(Quotas)}


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str | None = None
    cert_name: str | None = None
    publish: Rules = ALLOW_ALL
    subscribe: Rules = ALLOW_ALL
    quotas: Quotas = Quotas()

    @property
    def credential(self) -> tuple[str | None, str | None]:
        """What a login was checked against: when it changes, its connections go."""
        return self.password_hash, self.cert_name


@dataclass(frozen=True)
class UserTable:
    users: dict[str, User]
    anonymous: str | None = None
    source: str = "(built in)"

    def by_cert(self, common_name: str) -> User | None:
        return next((u for u in self.users.values() if u.cert_name == common_name), None)


class UsersFileError(ConfigError):
    """The users file cannot be used: which file, which line, what is wrong."""


def load_users(path: Path) -> UserTable:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsersFileError(f"--users {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsersFileError(f"--users {path}: not UTF-8 text") from None
    return parse_users(text, str(path))


def parse_users(text: str, source: str) -> UserTable:
    def fail(message: str, section: str | None = None, key: str | None = None) -> ConfigError:
        line = _line_of(text, section, key)
        return UsersFileError(f"--users {source}{f', line {line}' if line else ''}: {message}")

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsersFileError(f"--users {source}: not valid TOML: {exc}") from None
    unknown = set(document) - {"users", "defaults", "anonymous"}
    if unknown:
        key = sorted(unknown)[0]
        raise fail(f"unknown key {key!r} (expected [users.NAME], [defaults], anonymous)",
                   None, key)
    users_doc = document.get("users", {})
    if not isinstance(users_doc, dict) or not users_doc:
        raise fail("no users: add at least one [users.NAME] table")
    defaults = _quotas(document.get("defaults", {}), "defaults",
                       lambda message, key=None: fail(message, "defaults", key))
    users: dict[str, User] = {}
    for name, entry in users_doc.items():
        section = f"users.{name}"

        def user_fail(message: str, key: str | None = None, section: str = section,
                      name: str = name) -> ConfigError:
            return fail(f"user {name!r}: {message}", section, key)

        if not USER_NAME.match(name):
            raise user_fail("a user name is 1 to 64 letters, digits, '_', '.' or '-', "
                            "starting with a letter or digit")
        if not isinstance(entry, dict):
            raise user_fail("must be a table ([users.NAME])")
        users[name] = _user(name, entry, defaults, user_fail)
    anonymous = document.get("anonymous")
    if anonymous is not None and anonymous not in users:
        raise fail(f"anonymous = {anonymous!r} names no user in the file", None, "anonymous")
    for user in users.values():
        if user.password_hash is None and user.cert_name is None and user.name != anonymous:
            raise fail(f"user {user.name!r} has no password and no cert: nobody could log "
                       "in as it (add password = ... from `slipstream passwd`, or cert = "
                       "..., or make it the anonymous user)", f"users.{user.name}")
    certs = [u.cert_name for u in users.values() if u.cert_name]
    twice = {c for c in certs if certs.count(c) > 1}
    if twice:
        raise fail(f"two users have cert = {sorted(twice)[0]!r}: a certificate must say "
                   "who it is")
    return UserTable(users, anonymous, source)


def _user(name: str, entry: dict[str, Any], defaults: Quotas, fail: Any) -> User:
    unknown = set(entry) - _USER_KEYS - _QUOTA_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise fail(f"unknown key {key!r} (expected {', '.join(sorted(_USER_KEYS))} or a "
                   f"quota: {', '.join(sorted(_QUOTA_KEYS))})", key)
    password, cert = entry.get("password"), entry.get("cert")
    for key, value in (("password", password), ("cert", cert)):
        if value is not None and (not isinstance(value, str) or not value):
            raise fail(f"{key} must be a non-empty string", key)
    if password is not None:
        try:
            check_hash(password)
        except BadHashError as exc:
            raise fail(f"password: {exc}", "password") from None
    quotas = _quotas({k: v for k, v in entry.items() if k in _QUOTA_KEYS}, name, fail)
    merged = replace(defaults, **{f.name: getattr(quotas, f.name) for f in fields(Quotas)
                                  if getattr(quotas, f.name) is not None})
    return User(name, password, cert, _rules(entry.get("publish", []), "publish", fail),
                _rules(entry.get("subscribe", []), "subscribe", fail), merged)


def _rules(value: Any, key: str, fail: Any) -> Rules:
    """`["a.>", "b"]` (allowed) or `{allow = [...], deny = [...]}`; nothing when absent."""
    if isinstance(value, list):
        value = {"allow": value}
    if not isinstance(value, dict) or set(value) - {"allow", "deny"}:
        raise fail(f"{key} must be a list of patterns or {{allow = [...], deny = [...]}}", key)
    lists = []
    for part in ("allow", "deny"):
        patterns = value.get(part, [])
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise fail(f"{key}.{part} must be a list of patterns", key)
        for pattern in patterns:
            try:
                validate_pattern(pattern)
            except ProtocolError as exc:
                raise fail(f"{key}: {exc}", key) from None
        lists.append(tuple(patterns))
    return Rules(lists[0], lists[1])


def _quotas(entry: Any, where: str, fail: Any) -> Quotas:
    if not isinstance(entry, dict):
        raise fail(f"[{where}] must be a table")
    unknown = set(entry) - _QUOTA_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise fail(f"unknown quota {key!r} (expected {', '.join(sorted(_QUOTA_KEYS))})", key)
    for key, value in entry.items():
        integral = not key.startswith("max_publish")
        if type(value) not in ((int,) if integral else (int, float)) or value < 0:
            kind = "a whole number" if integral else "a number"
            raise fail(f"{key} must be {kind} >= 0, not {value!r}", key)
    return Quotas(**entry)


def _line_of(text: str, section: str | None, key: str | None) -> int | None:
    """The line where `key` is set in `[section]` (or the section's header), 1-based;
    None when it cannot be found (dotted or inline forms)."""
    in_section = section is None
    header_line = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            name = stripped.strip("[] ").replace('"', "").replace("'", "")
            if in_section and header_line is not None:
                break  # past the section: the key is not in it
            in_section = name == section
            if in_section:
                header_line = number
            continue
        if in_section and key is not None and re.match(rf"{re.escape(key)}\s*=", stripped):
            return number
    return header_line
