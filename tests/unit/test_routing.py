"""Topic and pattern rules (NATS conventions) and the router's cached matching."""

from __future__ import annotations

import pytest

from broker.errors import ProtocolError
from broker.server.routing import Router, pattern_matches, validate_pattern, validate_topic


@pytest.mark.parametrize(("pattern", "topic", "expected"), [
    ("game.car_telemetry", "game.car_telemetry", True),
    ("game.car_telemetry", "game.lap_data", False),
    ("game.*", "game.lap_data", True),
    ("game.*", "game", False),
    ("game.*", "game.lap_data.extra", False),
    ("*.TimingData", "live.TimingData", True),
    ("game.>", "game.lap_data", True),
    ("game.>", "game.a.b.c", True),
    ("game.>", "game", False),
    (">", "anything.at.all", True),
    ("live.*.x", "live.a.x", True),
    ("live.*.x", "live.a.y", False),
])
def test_pattern_matching_follows_nats_rules(pattern: str, topic: str, expected: bool) -> None:
    validate_pattern(pattern)
    validate_topic(topic)
    assert pattern_matches(pattern, topic) is expected


@pytest.mark.parametrize(("topic", "reason"), [
    ("", "empty"), ("a..b", "empty token"), (".a", "empty token"), ("a.", "empty token"),
    ("game.*", "wildcard"), ("game.>", "wildcard"), ("has space", "whitespace"),
    ("x" * 256, "longer than 255 bytes"),
])
def test_bad_topics_are_refused_with_the_reason(topic: str, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason) as caught:
        validate_topic(topic)
    assert caught.value.code == "bad_topic"


@pytest.mark.parametrize("pattern", ["a.>.b", "a.b*", "", "a..b"])
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        validate_pattern(pattern)
    assert caught.value.code == "bad_pattern"


def test_router_matches_topics_and_subscribers_in_either_order() -> None:
    router: Router[str] = Router()
    router.add_topic("game.lap_data")
    assert router.add_subscriber("all-game", "game.>") == ["game.lap_data"]
    assert router.add_topic("game.event") == ["all-game"]
    router.add_subscriber("events", "*.event")
    assert list(router.subscribers("game.event")) == ["all-game", "events"]
    assert list(router.subscribers("game.lap_data")) == ["all-game"]
    router.remove_subscriber("all-game")
    assert list(router.subscribers("game.event")) == ["events"]
    assert list(router.subscribers("never.seen")) == []
