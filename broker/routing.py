"""Topic names, subscription patterns, and which subscriptions want which topic.

Topics are dot-separated tokens (`game.car_telemetry`, `live.TimingData`);
patterns follow NATS: `*` matches exactly one token, `>` (last token only)
matches one or more. The router matches a pattern against a topic once, when
either first appears, so publishing never pays for pattern matching.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from broker.errors import ProtocolError

MAX_TOPIC_BYTES = 255
_FORBIDDEN_IN_TOKEN = frozenset(" \t\r\n*>")


def validate_topic(topic: str) -> None:
    """Raise ProtocolError unless `topic` is a publishable topic name."""
    _check_tokens(topic, "topic", wildcards=False)


def validate_pattern(pattern: str) -> None:
    """Raise ProtocolError unless `pattern` is a valid subscription pattern."""
    _check_tokens(pattern, "pattern", wildcards=True)


def _check_tokens(name: str, kind: str, *, wildcards: bool) -> None:
    def bad(reason: str) -> ProtocolError:
        return ProtocolError(f"bad {kind} {name!r}: {reason}", code=f"bad_{kind}")

    if not name:
        raise bad("it is empty")
    if len(name.encode()) > MAX_TOPIC_BYTES:
        raise bad(f"longer than {MAX_TOPIC_BYTES} bytes")
    tokens = name.split(".")
    for index, token in enumerate(tokens):
        if not token:
            raise bad("empty token (two dots, or a dot at an end)")
        if wildcards and token == "*":
            continue
        if wildcards and token == ">":
            if index != len(tokens) - 1:
                raise bad("'>' may only be the last token")
            continue
        if _FORBIDDEN_IN_TOKEN.intersection(token):
            allowed = "'*' and '>' only as whole tokens" if wildcards else "no '*' or '>'"
            raise bad(f"token {token!r} has whitespace or a wildcard ({allowed})")


def pattern_matches(pattern: str, topic: str) -> bool:
    """Whether `topic` is matched by `pattern` (both already validated)."""
    wanted = pattern.split(".")
    tokens = topic.split(".")
    for index, want in enumerate(wanted):
        if want == ">":
            return len(tokens) > index
        if index >= len(tokens) or (want != "*" and want != tokens[index]):
            return False
    return len(tokens) == len(wanted)


S = TypeVar("S", bound=Hashable)


class Router(Generic[S]):
    """Which subscribers want each topic, kept up to date as both come and go.

    `subscribers(topic)` is a dict lookup: the matching work happens in
    `add_topic` and `add_subscriber`, never per message.
    """

    def __init__(self) -> None:
        self._patterns: dict[S, str] = {}
        self._by_topic: dict[str, dict[S, None]] = {}  # dict as an ordered set

    def add_topic(self, topic: str) -> list[S]:
        """Register a new topic; return the existing subscribers that match it."""
        matching = {sub: None for sub, pattern in self._patterns.items()
                    if pattern_matches(pattern, topic)}
        self._by_topic[topic] = matching
        return list(matching)

    def add_subscriber(self, subscriber: S, pattern: str) -> list[str]:
        """Register a subscriber; return the existing topics it matches."""
        self._patterns[subscriber] = pattern
        topics = [topic for topic in self._by_topic if pattern_matches(pattern, topic)]
        for topic in topics:
            self._by_topic[topic][subscriber] = None
        return topics

    def remove_subscriber(self, subscriber: S) -> None:
        pattern = self._patterns.pop(subscriber, None)
        if pattern is None:
            return
        for subscribers in self._by_topic.values():
            subscribers.pop(subscriber, None)

    def subscribers(self, topic: str) -> Iterable[S]:
        return self._by_topic.get(topic, {}).keys()

    def __contains__(self, topic: str) -> bool:
        return topic in self._by_topic
