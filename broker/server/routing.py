"""Topic names, subscription patterns, and which subscriptions want which topic.

Topics are dot-separated tokens (`game.car_telemetry`, `live.TimingData`);
patterns follow NATS: `*` matches exactly one token, `>` (last token only)
matches one or more. The router matches a pattern against a topic once, when
either first appears, so publishing never pays for pattern matching.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from broker.errors import ProtocolError

MAX_TOPIC_BYTES = 255
_FORBIDDEN_IN_TOKEN = frozenset(" \t\r\n*>")
# C0 and C1 control characters, DEL, and the Unicode bidi controls: a topic is
# printed to terminals and logs, where these would rewrite what a reader sees.
_CONTROL = frozenset(
    [chr(c) for c in range(0x20)] + [chr(c) for c in range(0x7F, 0xA0)]
    + [chr(c) for c in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))])
# Topics are echoed in errors and logs cut to this many characters.
ECHO_CHARS = 64


def echo(name: str) -> str:
    """`name` for an error message or a log line: repr'd, and cut if long."""
    if len(name) <= ECHO_CHARS:
        return repr(name)
    return f"{name[:ECHO_CHARS]!r}... ({len(name.encode(errors='replace')):,} bytes)"


def validate_topic(topic: str) -> None:
    """Raise ProtocolError unless `topic` is a publishable topic name."""
    _check_tokens(topic, "topic", wildcards=False)


def validate_pattern(pattern: str) -> None:
    """Raise ProtocolError unless `pattern` is a valid subscription pattern."""
    _check_tokens(pattern, "pattern", wildcards=True)


def _check_tokens(name: str, kind: str, *, wildcards: bool) -> None:
    def bad(reason: str) -> ProtocolError:
        return ProtocolError(f"bad {kind} {echo(name)}: {reason}", code=f"bad_{kind}")

    if not name:
        raise bad("it is empty")
    if len(name.encode(errors="replace")) > MAX_TOPIC_BYTES:
        raise bad(f"longer than {MAX_TOPIC_BYTES} bytes")
    control = _CONTROL.intersection(name)
    if control:
        codes = ", ".join(f"U+{ord(c):04X}" for c in sorted(control))
        raise bad(f"has control or bidi characters ({codes}), which are not allowed")
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
    return covers(pattern, topic)


def covers(outer: str, inner: str) -> bool:
    """Whether every topic pattern `inner` matches is matched by `outer` (a topic is a
    pattern that matches itself): `live.>` covers `live.*` and `live.x`, not `>`."""
    outer_tokens, inner_tokens = outer.split("."), inner.split(".")
    for index, want in enumerate(outer_tokens):
        if want == ">":
            return len(inner_tokens) > index  # '>' takes whatever inner has left, if any
        if index >= len(inner_tokens):
            return False
        have = inner_tokens[index]
        if have == ">":
            return False  # inner goes on to any length; outer stops here
        if want != "*" and want != have:
            return False  # a literal covers only itself (inner's '*' is any token)
    return len(inner_tokens) == len(outer_tokens)


S = TypeVar("S", bound=Hashable)


class _Node:
    """One token level of a trie: children by token, and what ends at this node."""

    __slots__ = ("children", "here")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.here: dict[object, None] = {}  # topics (topic trie) or subscribers (pattern trie)


def _insert(root: _Node, tokens: list[str], item: object) -> None:
    node = root
    for token in tokens:
        node = node.children.setdefault(token, _Node())
    node.here[item] = None


def _discard(root: _Node, tokens: list[str], item: object) -> None:
    """Remove `item` at `tokens`, pruning nodes left empty so the trie does not leak."""
    path = [root]
    for token in tokens:
        child = path[-1].children.get(token)
        if child is None:
            return
        path.append(child)
    path[-1].here.pop(item, None)
    for depth in range(len(tokens), 0, -1):
        node = path[depth]
        if node.here or node.children:
            break
        del path[depth - 1].children[tokens[depth - 1]]


class Router(Generic[S]):
    """Which subscribers want each topic, kept up to date as both come and go.

    `subscribers(topic)` is a dict lookup: the matching work happens in
    `add_topic` and `add_subscriber`, never per message. Both walk a token
    trie (topics by token for a new pattern; patterns by token, with `*` and
    `>` as their own branches, for a new topic), so their cost follows what
    matches, not how many topics or subscriptions the broker holds.
    """

    def __init__(self) -> None:
        self._patterns: dict[S, str] = {}
        self._by_topic: dict[str, dict[S, None]] = {}  # dict as an ordered set
        self._topic_trie = _Node()
        self._pattern_trie = _Node()

    def add_topic(self, topic: str, admits: Callable[[S], bool] | None = None) -> list[S]:
        """Register a new topic; return the existing subscribers that match it (and that
        `admits`, when given: a user's denied topics are left out of its wildcards)."""
        matching: dict[S, None] = {}
        self._collect_subscribers(self._pattern_trie, topic.split("."), 0, matching)
        if admits is not None:
            matching = {sub: None for sub in matching if admits(sub)}
        self._by_topic[topic] = matching
        _insert(self._topic_trie, topic.split("."), topic)
        return list(matching)

    def remove_topic(self, topic: str) -> None:
        """Forget a topic (it expired); its subscribers, if any, stay registered."""
        if self._by_topic.pop(topic, None) is not None:
            _discard(self._topic_trie, topic.split("."), topic)

    def add_subscriber(self, subscriber: S, pattern: str,
                       topics: list[str] | None = None) -> list[str]:
        """Register a subscriber; return the existing topics it matches (`topics`, when
        the caller has just asked topics_matching for them)."""
        self._patterns[subscriber] = pattern
        _insert(self._pattern_trie, pattern.split("."), subscriber)
        if topics is None:
            topics = self.topics_matching(pattern)
        for topic in topics:
            self._by_topic[topic][subscriber] = None
        return topics

    def topics_matching(self, pattern: str) -> list[str]:
        """The existing topics `pattern` matches (what add_subscriber would return)."""
        topics: list[str] = []
        self._collect_topics(self._topic_trie, pattern.split("."), 0, topics)
        return topics

    def remove_subscriber(self, subscriber: S) -> None:
        pattern = self._patterns.pop(subscriber, None)
        if pattern is None:
            return
        _discard(self._pattern_trie, pattern.split("."), subscriber)
        for topic in self.topics_matching(pattern):
            self._by_topic[topic].pop(subscriber, None)

    def subscribers(self, topic: str) -> Iterable[S]:
        return self._by_topic.get(topic, {}).keys()

    def __contains__(self, topic: str) -> bool:
        return topic in self._by_topic

    def __len__(self) -> int:
        return len(self._by_topic)

    def _collect_subscribers(self, node: _Node, tokens: list[str], depth: int,
                             out: dict[S, None]) -> None:
        """Subscribers whose pattern matches tokens[depth:], from pattern-trie `node` down."""
        if depth == len(tokens):
            out.update(node.here)  # type: ignore[arg-type]
            return
        rest = node.children.get(">")
        if rest is not None:
            out.update(rest.here)  # type: ignore[arg-type]  # '>' takes one or more tokens
        for key in (tokens[depth], "*"):
            child = node.children.get(key)
            if child is not None:
                self._collect_subscribers(child, tokens, depth + 1, out)

    def _collect_topics(self, node: _Node, tokens: list[str], depth: int,
                        out: list[str]) -> None:
        """Topics matched by pattern tokens[depth:], from topic-trie `node` down."""
        if depth == len(tokens):
            out.extend(node.here)  # type: ignore[arg-type]
            return
        want = tokens[depth]
        if want == ">":
            for child in node.children.values():
                self._all_topics(child, out)
        elif want == "*":
            for child in node.children.values():
                self._collect_topics(child, tokens, depth + 1, out)
        else:
            exact = node.children.get(want)
            if exact is not None:
                self._collect_topics(exact, tokens, depth + 1, out)

    def _all_topics(self, node: _Node, out: list[str]) -> None:
        stack = [node]
        while stack:
            current = stack.pop()
            out.extend(current.here)  # type: ignore[arg-type]
            stack.extend(current.children.values())
