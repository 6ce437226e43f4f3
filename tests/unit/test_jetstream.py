"""The NATS engine's rules without a server: addresses, stream subjects, config checks,
raw headers, message ids, consumer names."""

from __future__ import annotations

from typing import Any

import pytest
from nats.js.api import DiscardPolicy, RetentionPolicy, StreamConfig

from broker.client import Client, is_nats, parse_address, uses_tls
from broker.errors import ConfigError
from broker.jetstream.address import display, parse_servers
from broker.jetstream.connection import header_value, msg_id_of, status_of
from broker.jetstream.publisher import hpub
from broker.jetstream.stream import StreamSpec, covered, family, incompatibilities, within
from broker.jetstream.subscription import deliver_policy, durable_name


def test_the_scheme_picks_the_engine() -> None:
    assert is_nats("nats://a:4222") and is_nats(" NATS://a:4222")
    assert not is_nats("127.0.0.1:20778") and not is_nats("slipstream://h:1")
    assert not is_nats("tls://h:1")  # the embedded broker over TLS
    assert parse_address("slipstream://h:7") == ("h", 7)
    assert parse_address("tls://h:8") == ("h", 8) and uses_tls(" TLS://h:8")
    with pytest.raises(ConfigError, match="NATS address"):
        parse_address("nats://h:1")


def test_the_factory_gives_each_address_its_engine_and_names_whose_option_is_whose() -> None:
    from broker.embedded.client import EmbeddedClient
    from broker.engines import engine_for
    from broker.jetstream.client import JetStreamClient

    assert engine_for("127.0.0.1:1", {}) is EmbeddedClient
    assert engine_for("nats://a:1", {"stream": "S", "max_in_flight": 4}) is JetStreamClient
    # Typed callers are stopped by mypy already; an untyped one gets a clear ConfigError.
    nats_only: dict[str, Any] = {"stream": "S"}
    embedded_only: dict[str, Any] = {"max_buffered_bytes": 1}
    with pytest.raises(ConfigError, match=r"'stream' is not one of '127\.0\.0\.1:1'.*NATS's"):
        Client("127.0.0.1:1", **nats_only)
    with pytest.raises(ConfigError, match=r"'max_buffered_bytes'.*embedded broker's"):
        Client("nats://a:1", **embedded_only)


def test_seeds_inherit_the_scheme_and_get_the_default_port() -> None:
    assert parse_servers("nats://a:1, b:2,c") == ["nats://a:1", "nats://b:2", "nats://c:4222"]
    assert parse_servers("nats://u:p@a:1") == ["nats://u:p@a:1"]
    assert display(["nats://u:secret@a:1"]) == "nats://a:1"  # credentials never logged


@pytest.mark.parametrize(("text", "message"), [
    ("a:1", "no nats:// scheme"), ("nats://a:1,http://b:2", "not a nats:// address"),
    ("nats://", "names no host"), ("nats://a:99999", "is not nats://HOST:PORT"),
    ("nats://a:1/S", "--stream"), (",", "names no NATS server")])
def test_bad_addresses_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_servers(text)


@pytest.mark.parametrize(("topic", "expected"), [
    ("live.TimingData", "live.>"), ("t", "t"), ("t.a.b", "t.>"), ("*.x", None), (">", None)])
def test_a_topic_or_pattern_belongs_to_its_first_token(topic: str, expected: str | None) -> None:
    assert family(topic) == expected


@pytest.mark.parametrize(("pattern", "subject", "inside"), [
    ("live.TimingData", "live.>", True), ("live.*", "live.>", True), ("live.>", "live.>", True),
    ("live", "live.>", False), (">", "live.>", False), ("live.a.b", "live.*", False),
    ("live.*", "live.*", True), ("live.>", "live.*", False), ("a.b", "a.b", True),
    ("a.*", "a.b", False)])
def test_within_means_every_match_of_the_pattern_is_in_the_subject(
        pattern: str, subject: str, inside: bool) -> None:
    assert within(pattern, subject) is inside


def test_covered_by_any_stream_subject() -> None:
    assert covered("game.lap", ["live.>", "game.>"]) and not covered("x.y", ["live.>"])


def test_an_incompatible_stream_is_described_not_changed() -> None:
    config = StreamConfig(name="S", retention=RetentionPolicy.WORK_QUEUE,
                          discard=DiscardPolicy.NEW, max_msgs_per_subject=10, num_replicas=1)
    problems = incompatibilities(config, StreamSpec(max_msgs_per_subject=500, replicas=3,
                                                    explicit=frozenset({"retain-messages"})))
    assert problems == [
        "retention is workqueue, slipstream needs limits (every consumer reads at its own pace)",
        "discard is new, slipstream needs old (a full topic drops its oldest, never refuses "
        "the newest)",
        "--retain-messages is 500 but the stream has 10"]  # replicas not given: not checked
    assert incompatibilities(StreamConfig(name="S", max_msgs_per_subject=10), StreamSpec()) == []


def test_raw_headers_are_read_without_nats_py() -> None:
    only_id = b"NATS/1.0\r\nNats-Msg-Id: abc.1.7\r\n\r\n"
    assert msg_id_of(only_id) == "abc.1.7"
    assert msg_id_of(b"NATS/1.0\r\nX: 1\r\nnats-msg-id:  q.2.3 \r\n\r\n") == "q.2.3"
    assert msg_id_of(None) is None and msg_id_of(b"NATS/1.0\r\nX: 1\r\n\r\n") is None
    assert status_of(b"NATS/1.0 503\r\n\r\n") == 503 and status_of(only_id) is None
    heartbeat = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 42\r\n\r\n"
    assert status_of(heartbeat) == 100
    assert header_value(heartbeat, "nats-last-consumer") == "42"


def test_an_hpub_is_the_nats_wire_format() -> None:
    command = hpub("t.a", "_INBOX.x.9", "p.1.2", b"hello")
    headers = b"NATS/1.0\r\nNats-Msg-Id: p.1.2\r\n\r\n"
    assert command == (b"HPUB t.a _INBOX.x.9 %d %d\r\n" % (len(headers), len(headers) + 5)
                       + headers + b"hello\r\n")


def test_durable_names_are_made_jetstream_safe_and_stay_distinct() -> None:
    assert durable_name("audit") == "audit"
    safe = durable_name("sqlite:live.>")
    assert safe.startswith("sqlite_live__-") and "." not in safe and ">" not in safe
    assert durable_name("sqlite:live.*") != safe


def test_start_positions_map_to_deliver_policies() -> None:
    assert [deliver_policy(start)[0].value for start in ("new", "earliest", 5)] == [
        "new", "all", "by_start_sequence"]
    assert deliver_policy(5)[1] == 5
