"""The broker's connection core (broker/wire/broker_connection.py), driven by bytes alone, and
the two cores talking to each other with no socket between them."""

from __future__ import annotations

import msgpack
import pytest

from broker.errors import ProtocolError
from broker.wire import protocol as p
from broker.wire.broker_connection import MAX_HELLO_BYTES, Broken, BrokerConnection, Received
from broker.wire.client_connection import ClientConnection, Opened
from broker.wire.states import State

EPOCH = 1_764_000_000_000_000


class Sub:
    """The least a broker subscription is: a window and what is in flight."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.inflight = 0


def broker(token: str | None = None, max_subscriptions: int = 1000) -> BrokerConnection[Sub]:
    def authenticate(hello: p.Hello) -> tuple[str, str] | None:
        # The broker's own check is broker/users/accounts.py; this one stands in for it.
        if token is None or hello.token == token:
            return None
        return "auth", "token missing or wrong" if hello.token else "token required"

    return BrokerConnection(server_name="test", epoch=EPOCH, max_frame_bytes=1 << 20,
                            authenticate=authenticate, max_subscriptions=max_subscriptions)


def sent(conn: BrokerConnection[Sub]) -> list[p.Frame | p.UnknownFrame]:
    return p.FrameDecoder(1 << 21).feed(b"".join(conn.data_to_send()))


def opened() -> BrokerConnection[Sub]:
    conn = broker()
    conn.receive_data(p.encode(p.Hello(2, "client")))
    conn.data_to_send()
    return conn


def raw(*fields: object) -> bytes:
    body = msgpack.packb(list(fields))
    return len(body).to_bytes(4, "big") + body


def test_hello_is_welcomed_and_frames_pipelined_behind_it_come_out_in_order() -> None:
    conn = broker()
    data = p.encode(p.Hello(2, "n" * 500)) + p.encode(p.Ping(1)) + p.encode(p.Subscribe(3, "a"))
    assert conn.receive_data(data[:10]) == []  # HELLO incomplete
    assert conn.receive_data(data[10:]) == [p.Ping(1), p.Subscribe(3, "a")]
    assert conn.state is State.OPEN
    assert sent(conn) == [p.Welcome(2, "test", EPOCH, 1 << 20)]
    assert conn.client_name == "n" * 128 and conn.runs_per_frame


def test_a_version_1_client_is_welcomed_with_version_1_and_gets_no_msgm() -> None:
    conn = broker()
    conn.receive_data(p.encode(p.Hello(1, "old")))
    assert sent(conn) == [p.Welcome(1, "test", EPOCH, 1 << 20)]
    assert not conn.runs_per_frame


@pytest.mark.parametrize(("first", "code", "words"), [
    (p.encode(p.Ping(1)), "handshake", "first frame must be HELLO, got Ping"),
    (p.encode(p.Hello(3, "x")), "version", "protocol version 3 is not supported"),
    (p.encode(p.Hello(2, "x")), "auth", "token required"),
    (p.encode(p.Hello(2, "x", "wrong")), "auth", "token missing or wrong"),
    (raw(1, 2, "x" * MAX_HELLO_BYTES, None), "frame_too_large",
     "before HELLO, frames may be at most 4,096 bytes"),
])
def test_a_bad_hello_gets_a_fatal_error_and_nothing_after_it_is_acted_on(
        first: bytes, code: str, words: str) -> None:
    conn = broker(token="s3cret")
    assert conn.receive_data(first + p.encode(p.Ping(2))) == []
    [error] = sent(conn)
    assert type(error) is p.Error and (error.code, error.fatal, error.ref) == (code, True, None)
    assert words in error.message
    assert conn.state is State.CLOSING
    assert conn.receive_data(p.encode(p.Ping(3))) == []


def test_the_right_token_is_welcomed() -> None:
    conn = broker(token="s3cret")
    conn.receive_data(p.encode(p.Hello(2, "x", "s3cret")))
    assert conn.state is State.OPEN


def test_ping_is_answered_in_order_with_the_other_answers() -> None:
    conn = opened()
    publish = p.Publish("t", [b"a"], 5)
    for frame in conn.receive_data(p.encode(publish) + p.encode(p.Ping(9))):
        if type(frame) is p.Publish:
            conn.published(frame, 41)  # stored: the PUBACK owed
        else:
            assert conn.handle(frame) is None
    assert sent(conn) == [p.PublishAck(5, 41, 1), p.Pong(9)]


def test_credit_an_ack_must_be_1_to_what_is_in_flight() -> None:
    conn = opened()
    assert conn.handle(p.Subscribe(1, "t", "new", None, 10)) == p.Subscribe(1, "t", "new", None, 10)
    sub = Sub(10)
    conn.subscribed(1, sub)
    assert sent(conn) == [p.Subscribed(1)]
    sub.inflight = 4  # the sender delivered four
    assert conn.handle(p.Ack(1, 3)) == p.Ack(1, 3)
    assert sub.inflight == 1
    for ack, words in ((p.Ack(1, 2), "ACK of 2 for sid 1, which has 1 unacknowledged"),
                       (p.Ack(1, 0), "ACK of 0"), (p.Ack(7, 1), "no subscription with sid 7")):
        with pytest.raises(ProtocolError, match=words):
            conn.handle(ack)
    assert sub.inflight == 1


def test_subscribe_refuses_a_sid_in_use_and_more_than_the_maximum() -> None:
    conn = broker(max_subscriptions=1)
    conn.receive_data(p.encode(p.Hello(2, "x")))
    conn.subscribed(1, Sub(1))
    with pytest.raises(ProtocolError, match="sid 1 is already subscribed") as in_use:
        conn.handle(p.Subscribe(1, "t"))
    assert in_use.value.code == "bad_subscribe"
    with pytest.raises(ProtocolError, match="maximum of 1 subscriptions") as full:
        conn.handle(p.Subscribe(2, "t"))
    assert full.value.code == "too_many_subscriptions"


def test_unsub_of_an_unknown_sid_is_refused_and_a_known_one_is_forgotten() -> None:
    conn = opened()
    with pytest.raises(ProtocolError) as unknown:
        conn.handle(p.Unsubscribe(4))
    assert unknown.value.code == "unknown_sid"
    sub = Sub(1)
    conn.subscribed(4, sub)
    assert conn.handle(p.Unsubscribe(4)) == p.Unsubscribe(4)
    assert conn.unsubscribed(4) is sub and conn.subscriptions == {}


@pytest.mark.parametrize(("data", "code"), [
    (raw(0), "unknown_frame"), (raw(-3, 1), "unknown_frame"), (raw(99, "x"), "unknown_frame"),
    (p.encode(p.Welcome(2, "x", 1, 1)), "unexpected_frame"),
    (p.encode(p.Deliver(1, "t", 1, [0], [b""])), "unexpected_frame"),
])
def test_frames_of_unknown_types_or_only_the_broker_sends_are_refused_not_fatal(
        data: bytes, code: str) -> None:
    conn = opened()
    [frame] = conn.receive_data(data)
    with pytest.raises(ProtocolError) as refused:
        conn.handle(frame)
    assert refused.value.code == code
    conn.reject(refused.value, frame)
    [error] = sent(conn)
    assert type(error) is p.Error and (error.code, error.ref, error.fatal) == (code, None, False)
    assert conn.state is State.OPEN


@pytest.mark.parametrize(("frame", "ref"), [
    (p.Publish("t", [b""], 12), 12), (p.Publish("t", [b""], None), None),
    (p.Subscribe(13, "t"), 13), (p.Unsubscribe(14), 14), (p.Ack(15, 1), 15),
    (p.StatsRequest(16, None), 16), (p.Ping(17), None),
])
def test_a_refusal_names_the_request_it_refuses(frame: p.Frame, ref: int | None) -> None:
    conn = opened()
    conn.reject(ProtocolError("no", code="x"), frame)
    assert sent(conn) == [p.Error("x", "no", ref, False)]


def test_bytes_that_break_the_protocol_fail_the_connection_after_the_good_frames() -> None:
    conn = opened()
    ping, broken = conn.receive_data(p.encode(p.Ping(1)) + b"\x00\x00\x00\x00")
    assert ping == p.Ping(1) and type(broken) is Broken
    assert conn.state is State.OPEN  # the ping is acted on first, then:
    assert conn.handle(broken) is None
    [error] = sent(conn)
    assert type(error) is p.Error and (error.code, error.fatal) == ("bad_frame", True)
    assert conn.state.value == "closing"


def test_only_the_first_fatal_reason_is_sent_and_none_once_closed() -> None:
    conn = opened()
    conn.fail("slow_consumer", "took no bytes")
    conn.fail("shutdown", "broker is shutting down")
    assert [f.code for f in sent(conn) if type(f) is p.Error] == ["slow_consumer"]
    conn.receive_eof()
    assert conn.state is State.CLOSED
    closed = broker()
    closed.receive_eof()
    closed.fail("shutdown", "late")
    assert sent(closed) == []


def test_the_two_cores_hold_a_whole_conversation_with_no_socket() -> None:
    client = ClientConnection("c")
    server = broker()

    def to_broker() -> list[Received]:
        return server.receive_data(b"".join(client.data_to_send()))

    def to_client() -> list[object]:
        return list(client.receive_data(b"".join(server.data_to_send())))

    client.send(p.Subscribe(1, "t.>", "earliest", None, 2))  # pipelined behind HELLO
    [subscribe] = to_broker()
    assert server.handle(subscribe) == subscribe
    sub = Sub(2)
    server.subscribed(1, sub)
    tail = p.encode_deliver_tail("t.a", 1, [10, 11], [b"a", b"b"])
    server.send_encoded(p.encode_deliver(1, tail))
    sub.inflight += 2
    events = to_client()
    assert events[:2] == [Opened(p.Welcome(2, "test", EPOCH, 1 << 20)), p.Subscribed(1)]
    assert events[2] == p.Deliver(1, "t.a", 1, [10, 11], [b"a", b"b"])
    assert client.unacknowledged(1) == 2
    client.send(p.Ack(1, 2))
    [ack] = to_broker()
    assert server.handle(ack) == p.Ack(1, 2) and sub.inflight == 0


def test_a_tls_client_at_a_plain_broker_is_told_so() -> None:
    conn = broker()
    assert conn.receive_data(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") == []
    [error] = sent(conn)
    assert type(error) is p.Error and error.code == "handshake" and error.fatal
    assert "looks like a TLS handshake" in error.message and "--tls-cert" in error.message
