"""What the broker keeps per user while it runs: logins, quotas in use, counters. Sans-I/O.

An `Account` is one user's share of the broker: how many connections,
topics, durables, subscriptions and followed topics it holds against its
quotas, its publish-rate buckets (shared by all its connections) and what it
was refused. `Accounts.login` turns a HELLO into an account or a refusal.
Without a users file everyone is one account (named "anonymous", or "token"
when the broker has a --token) whose quotas are the global caps.

A quota a user does not set is its fair share of the global cap (the cap
divided by the number of users), so no one user's junk can take what the
others need; the global caps stay the ceiling. Password checks cost tens of
milliseconds on purpose (broker/users/passwords.py): a user and password
checked once is remembered (as an HMAC under a key that lives only in this
process), and failed checks are rationed per source address and in all, so
wrong passwords cannot keep the broker's loop busy.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from broker.limits import TokenBucket
from broker.users.passwords import verify_password
from broker.users.table import User, UserTable
from broker.wire import protocol as p

if TYPE_CHECKING:
    from broker.server.config import BrokerConfig

log = logging.getLogger("slipstream.broker")

# Failed password checks: per source address, and over the whole broker (each ~35 ms).
FAILED_LOGINS_PER_ADDRESS = (1.0, 10.0)  # per second, burst
FAILED_LOGINS_IN_ALL = (5.0, 30.0)
_MAX_ADDRESSES = 4096  # remembered failing addresses; the oldest is forgotten first
_MAX_VERIFIED = 10_000  # remembered good (user, password) pairs; all forgotten when full


class Refusal(NamedTuple):
    """A HELLO refused: the fatal ERROR's code and message."""

    code: str
    message: str


@dataclass(frozen=True)
class Limits:
    """A user's quotas with the fair shares filled in (0 rates: no limit)."""

    connections: int
    topics: int
    durables: int
    subscriptions: int
    followed_topics: int
    publish_rate: float
    publish_bytes: float

    @classmethod
    def of(cls, user: User, config: BrokerConfig, users: int) -> Limits:
        q = user.quotas

        def share(mine: int | None, cap: int) -> int:
            return mine if mine is not None else max(1, cap // max(1, users))

        connections = share(q.max_connections, config.max_connections)
        return cls(connections, share(q.max_topics, config.max_topics),
                   share(q.max_durables, config.max_durables),
                   q.max_subscriptions if q.max_subscriptions is not None
                   else connections * config.max_subscriptions,
                   share(q.max_followed_topics, config.max_followed_topics_total),
                   q.max_publish_rate or 0.0, q.max_publish_bytes or 0.0)


class Account:
    """One user's standing in the broker: what it holds, what it may, what it was refused."""

    def __init__(self, user: User, limits: Limits, clock: Callable[[], float],
                 durable_prefix: str) -> None:
        self.name = user.name
        self.durable_prefix = durable_prefix  # durables are the user's own: "name:" + durable
        self.connections = 0
        self.topics = 0  # topics it created that still exist
        self.subscriptions = 0
        self.followed = 0  # (subscription, topic) pairs over its connections
        self.published = 0
        self.refused: Counter[str] = Counter()  # by error code
        self.failed_logins = 0
        self._clock = clock
        self.assign(user, limits)

    def assign(self, user: User, limits: Limits) -> None:
        """(Re)load the user's entry: rules, limits, rate buckets (kept when unchanged)."""
        old = getattr(self, "limits", None)
        self.user = user
        self.limits = limits
        self.publish = user.publish
        self.subscribe = user.subscribe
        self.publish_checked = not user.publish.everything  # False: skip the check per PUB
        if old is None or (old.publish_rate, old.publish_bytes) != (
                limits.publish_rate, limits.publish_bytes):
            self.message_rate = (TokenBucket(limits.publish_rate, clock=self._clock)
                                 if limits.publish_rate else None)
            self.byte_rate = (TokenBucket(limits.publish_bytes, clock=self._clock)
                              if limits.publish_bytes else None)
        self.rated = bool(self.message_rate or self.byte_rate)

    def durable_key(self, durable: str) -> str:
        return self.durable_prefix + durable

    def share_note(self, what: str) -> str:
        return f"user {self.name!r} holds its quota of {what}"


class Accounts:
    """Every user's account, and the login that picks one for a HELLO."""

    def __init__(self, config: BrokerConfig, clock: Callable[[], float],
                 table: UserTable | None = None) -> None:
        self.config = config
        self._clock = clock
        self.token = config.token
        self._key = os.urandom(32)  # for remembering checked passwords; never leaves here
        self._verified: dict[bytes, str] = {}  # HMAC(user, password) -> the hash it matched
        self._failures: dict[str, TokenBucket] = {}
        self._all_failures = TokenBucket(*FAILED_LOGINS_IN_ALL, clock=clock)
        self.unknown_user_logins = 0  # failed logins naming no user (not labelled by name)
        self.table: UserTable | None = None
        self.by_name: dict[str, Account] = {}
        if table is None:
            everyone = User("token" if config.token else "anonymous")
            self.everyone: Account | None = Account(
                everyone, Limits.of(everyone, config, 1), clock, "")
            self.by_name[everyone.name] = self.everyone
        else:
            self.everyone = None
            self.load(table)

    @property
    def has_users(self) -> bool:
        return self.table is not None

    def load(self, table: UserTable) -> list[tuple[Account, str]]:
        """Take `table` (at start, or on SIGHUP); the accounts whose logins no longer hold,
        with why: their connections are to be closed."""
        self.table = table
        count = len(table.users)
        gone: list[tuple[Account, str]] = []
        for name, account in list(self.by_name.items()):
            user = table.users.get(name)
            if user is None:
                gone.append((account, f"user {name!r} is no longer in {table.source}"))
                del self.by_name[name]
            elif user.credential != account.user.credential:
                gone.append((account, f"user {name!r}'s credential changed in {table.source}"))
        for name, user in table.users.items():
            limits = Limits.of(user, self.config, count)
            current = self.by_name.get(name)
            if current is None:
                self.by_name[name] = Account(user, limits, self._clock, name + ":")
            else:
                current.assign(user, limits)
        self._verified.clear()
        return gone

    def oversubscribed(self) -> list[str]:
        """Quotas that promise more than the global cap holds, said at load."""
        config, notes = self.config, []
        for what, cap, flag in (("connections", config.max_connections, "--max-connections"),
                                ("topics", config.max_topics, "--max-topics"),
                                ("durables", config.max_durables, "--max-durables"),
                                ("followed_topics", config.max_followed_topics_total,
                                 "--max-followed-topics-total")):
            promised = sum(getattr(a.limits, what) for a in self.by_name.values())
            if promised > cap:
                notes.append(f"the users' {what} quotas add up to {promised:,}, over {flag} "
                             f"{cap:,}: a user may find the broker full before its own quota")
        return notes

    # --- login -------------------------------------------------------------------

    def login(self, hello: p.Hello, address: str, cert_name: str | None) -> Account | Refusal:
        """The account a HELLO logs in as, or why not."""
        if self.table is None:
            assert self.everyone is not None
            if self.token is not None and not hmac.compare_digest(
                    (hello.token or "").encode(), self.token.encode()):
                return Refusal("auth", "token missing or wrong" if hello.token
                               else "token required")
            return self._admit(self.everyone)
        user = self._who(hello, cert_name)
        if isinstance(user, Refusal):
            return user
        if hello.user is not None:
            if hello.token is None and user.cert_name is not None \
                    and user.cert_name == cert_name:
                pass  # the client certificate, checked by TLS, is the credential
            elif hello.token is not None and user.password_hash is not None:
                refusal = self._check_password(user, hello.token, address)
                if refusal is not None:
                    return refusal
            else:
                return self._failed(user.name, address, "user or password wrong")
        return self._admit(self.by_name[user.name])

    def _who(self, hello: p.Hello, cert_name: str | None) -> User | Refusal:
        table = self.table
        assert table is not None
        if hello.user is not None:
            user = table.users.get(hello.user)
            if user is None:
                self.unknown_user_logins += 1
                return Refusal("auth", "user or password wrong")
            return user
        if cert_name is not None:
            by_cert = table.by_cert(cert_name)
            if by_cert is not None:
                return by_cert
        if table.anonymous is not None:
            return table.users[table.anonymous]
        return Refusal("auth", "this broker has users: HELLO must name one, with its "
                       "password (--user and --password, or SLIPSTREAM_USER and "
                       "SLIPSTREAM_PASSWORD)")

    def _check_password(self, user: User, password: str, address: str) -> Refusal | None:
        assert user.password_hash is not None
        key = hmac.digest(self._key, f"{user.name}\0{password}".encode(), "sha256")
        if self._verified.get(key) == user.password_hash:
            return None  # checked before, against this very hash
        bucket = self._failures.get(address)
        if not self._all_failures.has(1) or (bucket is not None and not bucket.has(1)):
            return Refusal("busy", f"too many failed logins from {address} (or in all): "
                           "passwords are not checked for a few seconds; try again")
        if verify_password(password, user.password_hash):
            if len(self._verified) >= _MAX_VERIFIED:
                self._verified.clear()
            self._verified[key] = user.password_hash
            return None
        return self._failed(user.name, address, "user or password wrong")

    def _failed(self, name: str, address: str, message: str) -> Refusal:
        self.by_name[name].failed_logins += 1
        bucket = self._failures.pop(address, None)
        if bucket is None:
            if len(self._failures) >= _MAX_ADDRESSES:
                self._failures.pop(next(iter(self._failures)))
            bucket = TokenBucket(*FAILED_LOGINS_PER_ADDRESS, clock=self._clock)
        self._failures[address] = bucket  # most recent last
        bucket.take(1)
        self._all_failures.take(1)
        log.warning("failed login as %r from %s", name, address)
        return Refusal("auth", message)

    def _admit(self, account: Account) -> Account | Refusal:
        limit = account.limits.connections
        if account.connections >= limit:
            account.refused["too_many_connections"] += 1
            return Refusal("too_many_connections",
                           f"{account.share_note(f'{limit:,} connections')}; try again later")
        account.connections += 1
        return account

    def logout(self, account: Account) -> None:
        account.connections -= 1
