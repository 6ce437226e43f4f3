"""The client's side of one connection to the embedded broker, sans-I/O.

Bytes go in through `receive_data`, events come out; methods queue frames and
`data_to_send()` hands back the bytes to write. Nothing here touches a socket:
broker/embedded/client.py is the asyncio loop that moves the bytes, and
tests/unit/test_client_connection.py drives this with bytes alone. One object
is one TCP connection; what outlives a reconnect (unsent publishes, each
subscription's position) lives in broker/embedded/outbox.py and
broker/embedded/subscription.py.

    state      what happened                     next
    HANDSHAKE  WELCOME received                  OPEN
    HANDSHAKE  ERROR received in the handshake   CLOSED
    HANDSHAKE  close(): this side is done        CLOSED
    OPEN       fatal ERROR received              CLOSING
    OPEN       close(): this side is done        CLOSING
    CLOSING    fatal ERROR received              CLOSING
    CLOSING    close(): this side is done        CLOSING
    CLOSED     close(): this side is done        CLOSED
    any        the byte stream ended             CLOSED
    any        a frame that breaks the protocol  CLOSED

In CLOSING the broker closes next (after a fatal ERROR), or the bytes this side
queued still go out (after close()). A refusal of `busy` or
`too_many_connections` is worth trying again later (RETRYABLE_REFUSALS).

The rules it keeps (docs/protocol.md): HELLO goes first, and frames may follow
it before WELCOME (they are acted on in order); PING is answered with PONG;
per subscription the broker may have at most `window` messages delivered and
unacknowledged, so a delivery beyond that is the broker's protocol error and an
ACK of more than was delivered on this connection is this side's bug.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from broker.errors import ConnectionStateError, ProtocolError
from broker.wire import protocol as p
from broker.wire.states import State, Transitions, advance, every_state


class Happening(Enum):
    """What can happen to a client connection (its docstring's table says when)."""

    WELCOME = "WELCOME received"
    REFUSED = "ERROR received in the handshake"
    FATAL_ERROR = "fatal ERROR received"
    CLOSE = "close(): this side is done"
    END_OF_STREAM = "the byte stream ended"
    BAD_FRAME = "a frame that breaks the protocol"


TRANSITIONS: Transitions[Happening] = {
    (State.HANDSHAKE, Happening.WELCOME): State.OPEN,
    (State.HANDSHAKE, Happening.REFUSED): State.CLOSED,
    (State.HANDSHAKE, Happening.CLOSE): State.CLOSED,
    (State.OPEN, Happening.FATAL_ERROR): State.CLOSING,
    (State.OPEN, Happening.CLOSE): State.CLOSING,
    (State.CLOSING, Happening.FATAL_ERROR): State.CLOSING,
    (State.CLOSING, Happening.CLOSE): State.CLOSING,
    (State.CLOSED, Happening.CLOSE): State.CLOSED,
    **every_state(Happening.END_OF_STREAM, State.CLOSED),
    **every_state(Happening.BAD_FRAME, State.CLOSED),
}

# A full broker is worth trying again later, like one that is not up yet.
RETRYABLE_REFUSALS = frozenset({"busy", "too_many_connections"})


class Opened(NamedTuple):
    """The handshake is done: what the broker said about itself."""

    welcome: p.Welcome


class Refused(NamedTuple):
    """The broker answered HELLO with an ERROR; `retry` when it was only full for now."""

    code: str
    message: str
    retry: bool


Event = p.Frame | p.UnknownFrame | Opened | Refused


class ClientConnection:
    """One connection's protocol state, client side: no sockets, no clocks, no tasks."""

    def __init__(self, client_name: str, token: str | None = None,
                 version: int = p.PROTOCOL_VERSION, user: str | None = None) -> None:
        self.state = State.HANDSHAKE
        self.welcome: p.Welcome | None = None
        self.fatal: p.Error | None = None  # the broker's reason for closing, if it gave one
        self.error: ProtocolError | None = None  # what the broker broke, if it did
        self._decoder = p.FrameDecoder()
        self._out: list[bytes] = [p.encode(p.Hello(version, client_name, token, user))]
        self._windows: dict[int, int] = {}  # per live sid: its window
        self._unacked: dict[int, int] = {}  # per live sid: delivered, not yet acknowledged

    def _move(self, happened: Happening) -> None:
        self.state = advance(TRANSITIONS, self.state, happened)

    # --- what the handshake settled ----------------------------------------------

    @property
    def epoch(self) -> int:
        return self.welcome.epoch if self.welcome else 0

    @property
    def max_frame_bytes(self) -> int:
        return self.welcome.max_frame_bytes if self.welcome else p.DEFAULT_MAX_FRAME_BYTES

    @property
    def max_payload_bytes(self) -> int:
        return self.max_frame_bytes - p.FRAME_ROOM_BYTES

    @property
    def runs_per_frame(self) -> bool:
        """The broker takes PUBM and sends MSGM (version 2 and later)."""
        return self.welcome is not None and self.welcome.version >= 2

    @property
    def can_send(self) -> bool:
        return self.state in (State.HANDSHAKE, State.OPEN)

    # --- bytes in ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Everything `data` completes, in order. A frame that breaks the protocol ends
        the list and the connection (state CLOSED, `error` says what)."""
        if self.state is State.CLOSED:
            return []
        frames: list[Event] = list(self._decoder.feed(data))
        if self.state is State.HANDSHAKE and frames:
            frames[0] = self._handshake(frames[0])
            if type(frames[0]) is Refused:
                return frames[:1]
        # The hot path: deliveries are passed on as they are, their credit counted.
        unacked, windows = self._unacked, self._windows
        for index, frame in enumerate(frames):
            kind = type(frame)
            if kind is p.Deliver:
                sid = frame.sid  # type: ignore[union-attr]
                held = unacked.get(sid)
                if held is not None:
                    held += len(frame.payloads)  # type: ignore[union-attr]
                    unacked[sid] = held
                    if held > windows[sid]:
                        self._broken(ProtocolError(
                            f"broker delivered {held:,} unacknowledged messages to sid {sid}, "
                            f"beyond its window of {windows[sid]:,}"))
                        return frames[:index]
            elif kind is p.Ping:
                self._out.append(p.encode(p.Pong(frame.nonce)))  # type: ignore[union-attr]
            elif kind is p.Error and frame.fatal:  # type: ignore[union-attr]
                self.fatal = frame  # type: ignore[assignment]
                self._move(Happening.FATAL_ERROR)
        if self._decoder.error is not None:
            self._broken(self._decoder.error)
        return frames

    def _handshake(self, first: Event) -> Event:
        if type(first) is p.Welcome:
            self.welcome = first
            # Deliveries may carry a full-size payload plus their header.
            self._decoder.max_frame_bytes = first.max_frame_bytes + p.FRAME_ROOM_BYTES
            self._move(Happening.WELCOME)
            return Opened(first)
        if type(first) is p.Error:
            self._move(Happening.REFUSED)
            return Refused(first.code, first.message, first.code in RETRYABLE_REFUSALS)
        self._broken(ProtocolError(f"broker answered HELLO with {type(first).__name__}",
                                   code="handshake"))
        return Refused("handshake", str(self.error), False)

    def _broken(self, error: ProtocolError) -> None:
        self.error = error
        self._move(Happening.BAD_FRAME)

    def receive_eof(self) -> None:
        """The broker closed its side (or the connection failed): nothing more comes."""
        self._move(Happening.END_OF_STREAM)

    # --- frames out --------------------------------------------------------------

    def send(self, frame: p.Frame) -> None:
        """Queue one frame. SUB, UNSUB and ACK keep the credit books as they go."""
        if not self.can_send:
            raise ConnectionStateError(
                f"cannot send {type(frame).__name__}: the connection is {self.state.value}")
        kind = type(frame)
        if kind is p.Ack:
            self._check_ack(frame)  # type: ignore[arg-type]
        elif kind is p.Subscribe:
            self._windows[frame.sid] = frame.window  # type: ignore[union-attr]
            self._unacked[frame.sid] = 0  # type: ignore[union-attr]
        elif kind is p.Unsubscribe:
            # Deliveries already on the way are no longer counted: nothing acknowledges them.
            self._windows.pop(frame.sid, None)  # type: ignore[union-attr]
            self._unacked.pop(frame.sid, None)  # type: ignore[union-attr]
        self._out.append(p.encode(frame))

    def _check_ack(self, ack: p.Ack) -> None:
        held = self._unacked.get(ack.sid)
        if held is None:
            raise ConnectionStateError(f"ACK for sid {ack.sid}, which is not subscribed")
        if not 0 < ack.message_count <= held:
            raise ConnectionStateError(
                f"ACK of {ack.message_count} for sid {ack.sid}, which has {held} "
                "delivered and unacknowledged on this connection")
        self._unacked[ack.sid] = held - ack.message_count

    def send_encoded(self, frames: list[bytes]) -> None:
        """Queue frames already encoded (the outbox's PUB and PUBM frames)."""
        if not self.can_send:
            raise ConnectionStateError(f"cannot publish: the connection is {self.state.value}")
        self._out.extend(frames)

    def unacknowledged(self, sid: int) -> int:
        """Messages of `sid` delivered on this connection and not yet acknowledged."""
        return self._unacked.get(sid, 0)

    def close(self) -> None:
        """This side is done: what is queued still goes out, then the socket closes."""
        self._move(Happening.CLOSE)

    def data_to_send(self) -> list[bytes]:
        """The bytes queued since the last call, as buffers for writelines."""
        out, self._out = self._out, []
        return out
