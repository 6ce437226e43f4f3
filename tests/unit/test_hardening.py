"""Small pieces of issue 12's hardening, without sockets: names, frames, limits, warnings."""

from __future__ import annotations

import logging

import msgpack
import pytest

from broker.__main__ import exposure_warning
from broker.errors import ProtocolError
from broker.limits import LogThrottle, TokenBucket
from broker.server.routing import echo, validate_pattern, validate_topic
from broker.server.server import BrokerConfig
from broker.wire import protocol as p


@pytest.mark.parametrize("name", ["live.\x00x", "a.\x1b[31mred", "a.\x7f", "a.\x85",
                                  "a.\u202eevil", "a.\u2066x", "a.\u200fx"])
def test_topics_and_patterns_refuse_control_and_bidi_characters(name: str) -> None:
    with pytest.raises(ProtocolError, match="control or bidi characters"):
        validate_topic(name)
    with pytest.raises(ProtocolError, match="control or bidi characters"):
        validate_pattern(name + ".>")


def test_ordinary_unicode_topics_are_still_fine() -> None:
    validate_topic("live.Météo.Silverstone")
    validate_pattern("game.*.données")


def test_long_names_are_echoed_cut() -> None:
    assert echo("x" * 900_000).endswith("... (900,000 bytes)")
    assert len(echo("x" * 900_000)) < 100
    with pytest.raises(ProtocolError) as refused:
        validate_topic("y" * 900_000)
    assert len(str(refused.value)) < 200


@pytest.mark.parametrize("fields", [
    [p.FrameType.ACK, True, 1],  # sid as a boolean
    [p.FrameType.PUB, "t", [b"x"], False],  # confirm_id as a boolean
    [p.FrameType.SUB, 1, "t", True, None, 10],  # start as a boolean
])
def test_booleans_are_not_integers_in_frames(fields: list[object]) -> None:
    decoder = p.FrameDecoder()
    body = msgpack.packb(fields)
    assert decoder.feed(len(body).to_bytes(4, "big") + body) == []
    assert decoder.error is not None and decoder.error.code == "bad_frame"


def test_stats_may_carry_options_or_leave_them_out() -> None:
    decoder = p.FrameDecoder()
    old = msgpack.packb([p.FrameType.STATS, 7])
    new = p.encode(p.StatsRequest(8, {"topics": "live.>"}))
    frames = decoder.feed(len(old).to_bytes(4, "big") + old + new)
    assert frames == [p.StatsRequest(7, None), p.StatsRequest(8, {"topics": "live.>"})]


def test_the_decoder_can_stop_after_one_frame_and_keep_the_rest() -> None:
    decoder = p.FrameDecoder()
    data = p.encode(p.Ping(1)) + p.encode(p.Ping(2)) + p.encode(p.Ping(3))
    assert decoder.feed(data, max_frames=1) == [p.Ping(1)]
    assert decoder.feed(b"") == [p.Ping(2), p.Ping(3)]


def test_token_bucket_allows_a_burst_then_asks_for_the_rate() -> None:
    bucket = TokenBucket(1000)
    assert bucket.take(1000) == 0.0  # one second's worth at once
    assert bucket.take(500) == pytest.approx(0.5, abs=0.01)  # then it is owed


def test_log_throttle_writes_once_then_a_count(caplog: pytest.LogCaptureFixture) -> None:
    throttle = LogThrottle(logging.getLogger("t"), interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="t"):
        for n in range(1000):
            throttle.warning("same", "failure %d", n)
        throttle.warning("other", "another failure")
        throttle.flush()
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["failure 0", "another failure", "... and 999 more like 'same' not logged"]


def test_log_throttle_remembers_a_bounded_number_of_keys() -> None:
    throttle = LogThrottle(logging.getLogger("t"), max_keys=10)
    for n in range(10_000):
        throttle.warning(f"key {n}", "x")
    assert len(throttle._next) <= 10


def test_listening_beyond_loopback_without_a_token_warns() -> None:
    assert exposure_warning(BrokerConfig(host="127.0.0.1")) is None
    assert exposure_warning(BrokerConfig(host="::1")) is None
    # A token alone still crosses the network in clear (TLS: tests/integration/test_tls.py).
    assert "in clear" in (exposure_warning(BrokerConfig(host="0.0.0.0", token="s")) or "")
    warning = exposure_warning(BrokerConfig(host="0.0.0.0"))
    assert warning is not None and "without --users (or --token)" in warning


def test_stats_without_options_is_encoded_as_before() -> None:
    """An older broker takes STATS with exactly one field: options left out stay out."""
    assert p.encode(p.StatsRequest(5)) == b"\x00\x00\x00\x03\x92\x0d\x05"
    assert p.encode(p.StatsRequest(5, {"topic_limit": 1}))[4:] == msgpack.packb(
        [13, 5, {"topic_limit": 1}])
