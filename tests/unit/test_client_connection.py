"""The client's connection core (broker/wire/client_connection.py), driven by bytes alone."""

from __future__ import annotations

import pytest

from broker.errors import ConnectionStateError
from broker.wire import protocol as p
from broker.wire.client_connection import ClientConnection, Opened, Refused
from broker.wire.states import State

WELCOME = p.Welcome(2, "slipstream", 1_764_000_000_000_000, 1 << 20)


def sent(conn: ClientConnection) -> list[p.Frame | p.UnknownFrame]:
    return p.FrameDecoder().feed(b"".join(conn.data_to_send()))


def opened(window: int = 4) -> ClientConnection:
    """A connection past its handshake, subscribed as sid 1 with `window`."""
    conn = ClientConnection("test")
    conn.receive_data(p.encode(WELCOME))
    conn.send(p.Subscribe(1, "t.>", "new", None, window))
    conn.data_to_send()
    return conn


def deliver(count: int, sid: int = 1, first_seq: int = 1) -> bytes:
    return p.encode(p.Deliver(sid, "t.a", first_seq, [0] * count, [b"x"] * count))


def test_hello_is_queued_first_and_frames_may_follow_it_before_welcome() -> None:
    conn = ClientConnection("printer", "s3cret")
    conn.send(p.Subscribe(1, "live.>"))  # pipelined: allowed in HANDSHAKE
    assert sent(conn) == [p.Hello(p.PROTOCOL_VERSION, "printer", "s3cret"),
                          p.Subscribe(1, "live.>")]
    assert conn.state is State.HANDSHAKE


def test_welcome_opens_the_connection_even_split_byte_by_byte() -> None:
    conn = ClientConnection("x")
    data = p.encode(WELCOME) + p.encode(p.Subscribed(1))
    events = [event for i in range(len(data)) for event in conn.receive_data(data[i:i + 1])]
    assert events == [Opened(WELCOME), p.Subscribed(1)]
    assert conn.state is State.OPEN
    assert (conn.epoch, conn.max_payload_bytes, conn.runs_per_frame) == (
        WELCOME.epoch, (1 << 20) - p.FRAME_ROOM_BYTES, True)


def test_a_version_1_broker_gets_no_pubm() -> None:
    conn = ClientConnection("x")
    conn.receive_data(p.encode(WELCOME._replace(version=1)))
    assert conn.runs_per_frame is False


@pytest.mark.parametrize(("code", "retry"), [("auth", False), ("version", False),
                                             ("busy", True), ("too_many_connections", True)])
def test_an_error_for_hello_is_a_refusal_and_only_a_full_broker_is_worth_retrying(
        code: str, retry: bool) -> None:
    conn = ClientConnection("x")
    events = conn.receive_data(p.encode(p.Error(code, "no", None, True)))
    assert events == [Refused(code, "no", retry)]
    assert conn.state is State.CLOSED
    with pytest.raises(ConnectionStateError, match="closed"):
        conn.send(p.Ping(1))


def test_hello_answered_with_anything_else_is_a_protocol_error() -> None:
    conn = ClientConnection("x")
    [event] = conn.receive_data(p.encode(p.Pong(1)) + p.encode(WELCOME))
    assert type(event) is Refused and event.code == "handshake"
    assert conn.state is State.CLOSED
    assert conn.error is not None and "answered HELLO with Pong" in str(conn.error)


def test_ping_is_answered_with_pong() -> None:
    conn = opened()
    assert conn.receive_data(p.encode(p.Ping(77))) == [p.Ping(77)]
    assert sent(conn) == [p.Pong(77)]


def test_acks_return_credit_and_may_not_exceed_what_was_delivered() -> None:
    conn = opened(window=4)
    conn.receive_data(deliver(3))
    assert conn.unacknowledged(1) == 3
    conn.send(p.Ack(1, 2))
    assert sent(conn) == [p.Ack(1, 2)]
    with pytest.raises(ConnectionStateError, match="ACK of 2 for sid 1, which has 1"):
        conn.send(p.Ack(1, 2))
    with pytest.raises(ConnectionStateError, match="ACK of 0"):
        conn.send(p.Ack(1, 0))
    with pytest.raises(ConnectionStateError, match="sid 9, which is not subscribed"):
        conn.send(p.Ack(9, 1))
    assert sent(conn) == []  # nothing refused was queued


def test_a_delivery_beyond_the_window_is_the_brokers_protocol_error() -> None:
    conn = opened(window=4)
    events = conn.receive_data(deliver(3) + deliver(2, first_seq=4) + p.encode(p.Ping(1)))
    assert events == [p.Deliver(1, "t.a", 1, [0] * 3, [b"x"] * 3)]  # what came before
    assert conn.state is State.CLOSED
    assert "5 unacknowledged messages to sid 1, beyond its window of 4" in str(conn.error)


def test_runs_of_one_msgm_count_against_the_window_each() -> None:
    conn = opened(window=4)
    tails = [p.encode_deliver_tail("t.a", 1, [0, 0], [b"a", b"b"]),
             p.encode_deliver_tail("t.b", 7, [0], [b"c"])]
    events = conn.receive_data(b"".join(p.encode_deliver_runs(1, tails)))
    assert [(e.topic, e.first_seq) for e in events if type(e) is p.Deliver] == [
        ("t.a", 1), ("t.b", 7)]
    assert conn.unacknowledged(1) == 3


def test_deliveries_after_unsub_are_passed_on_but_not_counted() -> None:
    conn = opened(window=1)
    conn.send(p.Unsubscribe(1))
    assert len(conn.receive_data(deliver(5))) == 1  # on their way before UNSUB arrived
    assert conn.state is State.OPEN and conn.unacknowledged(1) == 0


def test_a_fatal_error_means_the_broker_closes_next() -> None:
    conn = opened()
    fatal = p.Error("slow_consumer", "took no bytes", None, True)
    assert conn.receive_data(p.encode(fatal)) == [fatal]
    assert (conn.state, conn.fatal) == (State.CLOSING, fatal)
    assert not conn.can_send
    conn.receive_eof()
    assert conn.state is State.CLOSED
    assert conn.receive_data(p.encode(p.Ping(1))) == []


def test_a_bad_frame_ends_the_connection_after_the_good_ones() -> None:
    conn = opened()
    events = conn.receive_data(p.encode(p.Pong(1)) + b"\x00\x00\x00\x01\xc1")
    assert events == [p.Pong(1)]
    assert conn.state is State.CLOSED and conn.error is not None


def test_close_goes_to_closing_when_open_and_straight_to_closed_in_the_handshake() -> None:
    conn = opened()
    conn.close()
    assert conn.state is State.CLOSING
    conn.close()  # twice is fine
    early = ClientConnection("x")
    early.close()
    assert early.state is State.CLOSED
