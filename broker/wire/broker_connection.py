"""The broker's side of one client connection, sans-I/O.

Bytes go in through `receive_data`, which returns what happened: the frames
to act on, in order, and `Broken` where the byte stream broke the protocol
(acting on it fails the connection, after the frames before it). The rules
of the conversation are applied by `handle(...)`, which queues the answers;
`data_to_send()` hands back the bytes to write. The asyncio `Connection` in
broker/server/server.py moves the bytes and does what only the broker can (store a
PUB, find the topics of a SUB); tests/unit/test_broker_connection.py drives
this with bytes alone.

    state      what happened                   next
    HANDSHAKE  a valid HELLO (WELCOME queued)  OPEN
    HANDSHAKE  fail(): a fatal ERROR queued    CLOSING
    OPEN       fail(): a fatal ERROR queued    CLOSING
    CLOSING    fail(): a fatal ERROR queued    CLOSING
    CLOSED     fail(): a fatal ERROR queued    CLOSED
    any        the byte stream ended           CLOSED

fail() is what every fatal reason goes through: no HELLO first, a HELLO too
big or of the wrong version, one `authenticate` refuses (a wrong token or
password), a frame that cannot be parsed, the handshake timeout, a slow
consumer, shutdown. In CLOSING the first reason is the one sent; in CLOSED nothing is sent any more.

The rules it keeps (docs/protocol.md): before HELLO, frames may be at most
MAX_HELLO_BYTES; frames pipelined behind HELLO are acted on in order; PING is
answered with PONG in order with everything else (so a PONG proves the PUBs
before it are stored); per subscription at most `window` messages are
delivered and unacknowledged, and an ACK must be of 1 to that many; a refused
request gets a non-fatal ERROR whose `ref` is the PUB's confirm_id, the sid of
a SUB, UNSUB or ACK, or the STATS request id.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Generic, NamedTuple, Protocol, TypeVar

from broker.errors import ProtocolError
from broker.wire import protocol as p
from broker.wire.states import State, Transitions, advance, every_state


class Happening(Enum):
    """What can happen to the broker's side of a connection (see the docstring's table)."""

    HELLO = "a valid HELLO (WELCOME queued)"
    FAIL = "fail(): a fatal ERROR queued"
    END_OF_STREAM = "the byte stream ended"


TRANSITIONS: Transitions[Happening] = {
    (State.HANDSHAKE, Happening.HELLO): State.OPEN,
    (State.HANDSHAKE, Happening.FAIL): State.CLOSING,
    (State.OPEN, Happening.FAIL): State.CLOSING,
    (State.CLOSING, Happening.FAIL): State.CLOSING,  # the first reason is the one sent
    (State.CLOSED, Happening.FAIL): State.CLOSED,  # too late to say why: nothing is sent
    **every_state(Happening.END_OF_STREAM, State.CLOSED),
}

# A HELLO is a version, a name and a token: frames before it may be no larger.
MAX_HELLO_BYTES = 4096
MAX_CLIENT_NAME_CHARS = 128
# A TLS ClientHello starts with a handshake record (0x16) of version 3.x; a HELLO frame's
# length prefix cannot (it would be a frame of over 369 MB).
TLS_RECORD_START = b"\x16\x03"


class Broken(NamedTuple):
    """The byte stream broke the protocol here (a frame that cannot be parsed, one too
    big): what came before it is acted on first; `handle` of this fails the connection."""

    error: ProtocolError


Received = p.Frame | p.UnknownFrame | Broken  # what receive_data returns, in order


# Who a HELLO is: None to let it in, or the fatal ERROR's (code, message). The broker's
# is broker/users/accounts.py (a users file, a token, or anyone).
Authenticate = Callable[[p.Hello], tuple[str, str] | None]


def _anyone(hello: p.Hello) -> None:
    return None


class Credited(Protocol):
    """What the connection needs of a subscription: its window and what is in flight."""

    window: int
    inflight: int


S = TypeVar("S", bound=Credited)


class BrokerConnection(Generic[S]):
    """One connection's protocol state, broker side: no sockets, no clocks, no tasks.

    `S` is the broker's subscription object; the connection keeps them by sid
    and keeps their credit (`inflight` against `window`).
    """

    def __init__(self, *, server_name: str, epoch: int, max_frame_bytes: int,
                 authenticate: Authenticate = _anyone, max_subscriptions: int = 1000) -> None:
        self.state = State.HANDSHAKE
        self.server_name = server_name
        self.epoch = epoch
        self.max_frame_bytes = max_frame_bytes
        self.authenticate = authenticate
        self.max_subscriptions = max_subscriptions
        self.client_name: str | None = None  # once HELLO is accepted
        self.version = 0  # the protocol version agreed in the handshake
        self.fatal: p.Error | None = None  # why this side is closing, once it is
        self.subscriptions: dict[int, S] = {}
        self._decoder = p.FrameDecoder(MAX_HELLO_BYTES)
        self._out: list[bytes] = []

    @property
    def runs_per_frame(self) -> bool:
        """MSGM to this client: it spoke version 2 or later."""
        return self.version >= 2

    # --- bytes in ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Received]:
        """What `data` completes, to be acted on in order: frames, then `Broken` if the
        stream broke the protocol (refusals in the handshake fail at once instead)."""
        if self.state is State.HANDSHAKE:
            if not self._decoder.buffered_bytes and data.startswith(TLS_RECORD_START):
                self.fail("handshake", "this looks like a TLS handshake, and this broker "
                          "serves plain TCP (start it with --tls-cert and --tls-key)")
                return []
            hello = self._decoder.feed(data, max_frames=1)
            if self._decoder.error is None and not hello:
                return []
            if not self._accept(hello):
                return []
            data = b""  # the rest of this read is in the decoder
        elif self.state is not State.OPEN:
            return []
        received: list[Received] = list(self._decoder.feed(data))
        if self._decoder.error is not None:
            received.append(Broken(self._decoder.error))
        return received

    def _accept(self, frames: list[p.Frame | p.UnknownFrame]) -> bool:
        error = self._decoder.error
        if error is not None:
            message = str(error)
            if error.code == "frame_too_large":
                message += f" (before HELLO, frames may be at most {MAX_HELLO_BYTES:,} bytes)"
            return self._refuse(error.code, message)
        hello = frames[0]
        if type(hello) is not p.Hello:
            return self._refuse("handshake",
                                f"first frame must be HELLO, got {type(hello).__name__}")
        if not p.OLDEST_PROTOCOL_VERSION <= hello.version <= p.PROTOCOL_VERSION:
            return self._refuse("version", f"protocol version {hello.version} is not supported "
                                f"(this broker speaks {p.OLDEST_PROTOCOL_VERSION} to "
                                f"{p.PROTOCOL_VERSION})")
        refusal = self.authenticate(hello)
        if refusal is not None:
            return self._refuse(*refusal)
        self.version = hello.version
        # Cut, so a client cannot fill the broker's log with its name.
        self.client_name = hello.client_name[:MAX_CLIENT_NAME_CHARS]
        self.state = advance(TRANSITIONS, self.state, Happening.HELLO)
        self._out.append(p.encode(p.Welcome(hello.version, self.server_name, self.epoch,
                                            self.max_frame_bytes)))
        self._decoder.max_frame_bytes = self.max_frame_bytes
        return True

    def _refuse(self, code: str, message: str) -> bool:
        self.fail(code, message)
        return False

    def receive_eof(self) -> None:
        """The client closed its side, or the connection failed."""
        self.state = advance(TRANSITIONS, self.state, Happening.END_OF_STREAM)

    # --- the rules, frame by frame -------------------------------------------------

    def handle(self, frame: Received) -> p.Frame | None:
        """Apply the connection's rules to what was received, but a PUB; queue what they
        answer. Returns the frame when the broker has to act on it (SUB, UNSUB, a valid
        ACK, STATS, a client's ERROR to log), else None. A broken rule raises
        ProtocolError: refuse the frame with `reject`, the connection goes on. `Broken`
        fails the connection (its fatal ERROR queued)."""
        match frame:
            case Broken(error):
                if self.state is State.OPEN:
                    self.fail(error.code, str(error))
                return None
            case p.Ack(sid, count):
                sub = self.subscription(sid)
                if not 0 < count <= sub.inflight:
                    raise ProtocolError(f"ACK of {count} for sid {sid}, which has "
                                        f"{sub.inflight} unacknowledged", code="bad_ack")
                sub.inflight -= count
                return frame
            case p.Subscribe(sid):
                if sid in self.subscriptions:
                    raise ProtocolError(f"sid {sid} is already subscribed", code="bad_subscribe")
                if len(self.subscriptions) >= self.max_subscriptions:
                    raise ProtocolError(
                        f"connection has its maximum of {self.max_subscriptions:,} "
                        "subscriptions (--max-subscriptions)", code="too_many_subscriptions")
                return frame
            case p.Unsubscribe(sid):
                self.subscription(sid)
                return frame
            case p.Ping(nonce):
                self._out.append(p.encode(p.Pong(nonce)))
                return None
            case p.Pong():
                return None
            case p.StatsRequest() | p.Error():
                return frame
            case p.UnknownFrame(type_code):
                raise ProtocolError(f"unknown frame type {type_code}", code="unknown_frame")
            case _:
                raise ProtocolError(f"{type(frame).__name__} frames are sent by the broker, "
                                    "not to it", code="unexpected_frame")

    def subscription(self, sid: int) -> S:
        sub = self.subscriptions.get(sid)
        if sub is None:
            raise ProtocolError(f"no subscription with sid {sid}", code="unknown_sid")
        return sub

    def subscribed(self, sid: int, sub: S) -> None:
        """The broker made the subscription a SUB asked for: SUBACK."""
        self.subscriptions[sid] = sub
        self._out.append(p.encode(p.Subscribed(sid)))

    def unsubscribed(self, sid: int) -> S:
        return self.subscriptions.pop(sid)

    def published(self, frame: p.Publish, first_seq: int) -> None:
        """Every payload of `frame` is stored: confirm it if it asked."""
        if frame.confirm_id is not None:
            self._out.append(p.encode(p.PublishAck(frame.confirm_id, first_seq,
                                                   len(frame.payloads))))

    @staticmethod
    def ref_of(frame: Received) -> int | None:
        """Which request an ERROR about `frame` names: a PUB's confirm_id, the sid of a
        SUB, UNSUB or ACK, a STATS request id; nothing for the others."""
        if type(frame) is p.Publish:
            return frame.confirm_id
        if type(frame) in (p.Subscribe, p.Unsubscribe, p.Ack):
            return frame.sid  # type: ignore[union-attr]
        if type(frame) is p.StatsRequest:
            return frame.request_id
        return None

    def reject(self, error: ProtocolError, frame: Received) -> None:
        """A request refused, the connection going on: a non-fatal ERROR naming it."""
        self._out.append(p.encode(p.Error(error.code, str(error), self.ref_of(frame), False)))

    def fail(self, code: str, message: str) -> None:
        """This side ends the connection: a fatal ERROR says why (only the first reason
        is sent), and nothing is read or acted on after it."""
        was_closed = self.state is State.CLOSED
        self.state = advance(TRANSITIONS, self.state, Happening.FAIL)
        if self.fatal is None and not was_closed:
            self.fatal = p.Error(code, message, None, True)
            self._out.append(p.encode(self.fatal))

    # --- bytes out ----------------------------------------------------------------

    def send(self, frame: p.Frame) -> None:
        self._out.append(p.encode(frame))

    def send_encoded(self, buffers: list[bytes] | tuple[bytes, ...]) -> None:
        """Queue bytes already encoded (deliveries: their tails are shared across
        subscribers, so the broker encodes them once)."""
        self._out.extend(buffers)

    def data_to_send(self) -> list[bytes]:
        """The bytes queued since the last call, as buffers for writelines."""
        out, self._out = self._out, []
        return out
