"""The slipstream wire protocol, sans-I/O: frame objects <-> bytes.

Broker and clients both speak through this module and nothing else touches
the bytes. It never reads or writes a socket, so every rule in
docs/protocol.md is tested here by feeding bytes in and looking at frames out.

A frame on the wire is a 4-byte big-endian body length, then a msgpack array
body whose first element is the frame type: ``[type, field, field, ...]``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import IntEnum
from typing import Any, NamedTuple

import msgpack

from broker.errors import ProtocolError

PROTOCOL_VERSION = 2  # 2 adds PUBM and MSGM: one frame, several topics
OLDEST_PROTOCOL_VERSION = 1  # a broker still speaks 1 to a client that asks for it
DEFAULT_PORT = 20778
DEFAULT_MAX_FRAME_BYTES = 1024 * 1024
# A payload must fit into a delivery frame together with its topic, sequence
# number and timestamp, so payloads are limited to max-frame minus this room.
FRAME_ROOM_BYTES = 1024
LENGTH_PREFIX_BYTES = 4

_length = struct.Struct(">I")
_pack_length = _length.pack
_unpack_length = _length.unpack_from


class FrameType(IntEnum):
    HELLO = 1
    WELCOME = 2
    PUB = 3
    PUBACK = 4
    SUB = 5
    SUBACK = 6
    UNSUB = 7
    MSG = 8
    GAP = 9
    ACK = 10
    PING = 11
    PONG = 12
    STATS = 13
    STATS_REPLY = 14
    ERROR = 15
    PUBM = 16  # version 2: runs of several topics in one PUB
    MSGM = 17  # version 2: runs of several topics for one subscription in one MSG


# --- Frames: one small immutable tuple per frame type -----------------------
# NamedTuples rather than dataclasses: they are built once per frame on the hot
# path, and a tuple is the cheapest immutable object Python can make.


class Hello(NamedTuple):
    """Client -> broker, first frame: who I am and my token (with `user`, its password)."""

    version: int
    client_name: str
    token: str | None = None
    user: str | None = None  # a later addition: left out when None


class Welcome(NamedTuple):
    """Broker -> client: handshake accepted. `epoch` changes at every broker start."""

    version: int
    server_name: str
    epoch: int
    max_frame_bytes: int


class Publish(NamedTuple):
    """Client -> broker: one or more payloads for one topic, in order."""

    topic: str
    payloads: list[bytes]
    confirm_id: int | None = None


class PublishAck(NamedTuple):
    """Broker -> client: PUB `confirm_id` got seqs first_seq .. first_seq + message_count - 1."""

    confirm_id: int
    first_seq: int
    message_count: int


class Subscribe(NamedTuple):
    """Client -> broker: deliver topics matching `pattern` as subscription `sid`.

    `start` is "new", "earliest" or a sequence number; `durable` names a
    subscription whose position outlives the connection; `window` is how many
    delivered-but-unacknowledged messages the client is willing to hold.
    """

    sid: int
    pattern: str
    start: str | int = "new"
    durable: str | None = None
    window: int = 8192


class Subscribed(NamedTuple):
    """Broker -> client: subscription `sid` is active."""

    sid: int


class Unsubscribe(NamedTuple):
    sid: int


class Deliver(NamedTuple):
    """Broker -> client: consecutive messages first_seq.. of one topic for one subscription."""

    sid: int
    topic: str
    first_seq: int
    timestamps_us: list[int]
    payloads: list[bytes]


class Gap(NamedTuple):
    """Broker -> client: `missed` messages from `first_seq` on will never arrive, and why."""

    sid: int
    topic: str
    first_seq: int
    missed: int
    reason: str


class Ack(NamedTuple):
    """Client -> broker: I have finished `message_count` more messages of subscription `sid`."""

    sid: int
    message_count: int


class Ping(NamedTuple):
    nonce: int


class Pong(NamedTuple):
    nonce: int


class StatsRequest(NamedTuple):
    """Client -> broker. `options` (may be left out on the wire) filters and pages the reply:
    {"topics": pattern, "after_topic": name, "after_connection": id, "limit": n,
    "connections": bool}; see docs/protocol.md."""

    request_id: int
    options: dict[str, Any] | None = None


class StatsReply(NamedTuple):
    request_id: int
    stats: dict[str, Any]


class Error(NamedTuple):
    """Either direction: something went wrong. `ref` names the sid or request it concerns."""

    code: str
    message: str
    ref: int | None = None
    fatal: bool = False


class UnknownFrame(NamedTuple):
    """A well-formed frame of a type this version does not know (not an error by itself)."""

    type_code: int
    fields: list[Any]


Frame = (
    Hello | Welcome | Publish | PublishAck | Subscribe | Subscribed | Unsubscribe | Deliver
    | Gap | Ack | Ping | Pong | StatsRequest | StatsReply | Error
)


# --- Field checks: what each frame type's fields must be --------------------

_Check = Callable[[Any], bool]


def _is(*types: type) -> _Check:
    # Exact types: msgpack's true/false decode to bool, which is an int to isinstance,
    # and a boolean where a sid or seq belongs is a peer's mistake, not a 1 or a 0.
    return lambda value: type(value) in types


def _list_of(kind: type) -> _Check:
    # The types collected at C speed: this runs over every payload of every PUB and MSG.
    allowed = {kind}
    return lambda value: isinstance(value, list) and (not value or set(map(type, value))
                                                      == allowed)


_int = _is(int)
_bytes_list = _list_of(bytes)
_int_list = _list_of(int)
_str = _is(str)
_opt_int = _is(int, type(None))
_opt_str = _is(str, type(None))

_SCHEMA: dict[int, tuple[type[Any], tuple[_Check, ...]]] = {
    FrameType.HELLO: (Hello, (_int, _str, _opt_str, _opt_str)),
    FrameType.WELCOME: (Welcome, (_int, _str, _int, _int)),
    FrameType.PUB: (Publish, (_str, _bytes_list, _opt_int)),
    FrameType.PUBACK: (PublishAck, (_int, _int, _int)),
    FrameType.SUB: (Subscribe, (_int, _str, _is(str, int), _opt_str, _int)),
    FrameType.SUBACK: (Subscribed, (_int,)),
    FrameType.UNSUB: (Unsubscribe, (_int,)),
    FrameType.MSG: (Deliver, (_int, _str, _int, _int_list, _bytes_list)),
    FrameType.GAP: (Gap, (_int, _str, _int, _int, _str)),
    FrameType.ACK: (Ack, (_int, _int)),
    FrameType.PING: (Ping, (_int,)),
    FrameType.PONG: (Pong, (_int,)),
    FrameType.STATS: (StatsRequest, (_int, _is(dict, type(None)))),
    FrameType.STATS_REPLY: (StatsReply, (_int, _is(dict))),
    FrameType.ERROR: (Error, (_str, _str, _opt_int, _is(bool))),
}
_TYPE_OF: dict[type[Any], int] = {cls: code for code, (cls, _) in _SCHEMA.items()}
# Trailing fields a sender may leave out (added in a later revision of version 1).
_OPTIONAL_TAIL: dict[int, int] = {FrameType.STATS: 1, FrameType.HELLO: 1}


# --- Encoding -----------------------------------------------------------------


def encode(frame: Frame) -> bytes:
    """One frame as wire bytes: length prefix and msgpack body."""
    code = _TYPE_OF[type(frame)]
    if code in _OPTIONAL_TAIL and frame[-1] is None:
        frame = frame[:-1]  # type: ignore[assignment]  # left out, as an older peer expects
    body = msgpack.packb((code, *frame))
    return _pack_length(len(body)) + body


def encode_deliver_tail(
    topic: str, first_seq: int, timestamps_us: list[int], payloads: list[bytes]
) -> bytes:
    """The part of a MSG frame that is the same for every subscriber.

    msgpack encodes a 4-tuple as the one-byte header 0x94 followed by the four
    fields back to back; dropping that byte leaves the fields, ready to be
    glued behind each subscriber's own header. The broker encodes a run of
    messages once and shares these bytes across all its subscribers.
    """
    return msgpack.packb((topic, first_seq, timestamps_us, payloads))[1:]


def encode_publish_runs(runs: list[tuple[str, list[bytes]]]) -> bytes:
    """A PUBM frame: runs of (topic, payloads), several topics in one frame (version 2).

    It means exactly what one PUB per run, in the same order, would mean (with no
    confirm_id): the broker splits it back into those.
    """
    body = msgpack.packb((FrameType.PUBM, runs))
    return _pack_length(len(body)) + body


def encode_deliver_runs(sid: int, tails: list[bytes]) -> list[bytes]:
    """A MSGM frame for subscription `sid`: several runs (each a shared tail from
    `encode_deliver_tail`, any topics), as buffers for writelines (version 2)."""
    head = b"\x93" + msgpack.packb((FrameType.MSGM, sid))[1:] + _array_header(len(tails))
    size = len(head) + sum(len(tail) for tail in tails) + len(tails)  # + 0x94 per run
    buffers = [_pack_length(size) + head]
    for tail in tails:
        buffers += (b"\x94", tail)
    return buffers


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def encode_deliver(sid: int, tail: bytes) -> tuple[bytes, bytes]:
    """A MSG frame for subscription `sid` around a shared tail, as two buffers for writelines."""
    # 0x96 is the header of a 6-element array: type, sid, then the 4 tail fields.
    head = b"\x96" + msgpack.packb((FrameType.MSG, sid))[1:]
    return _pack_length(len(head) + len(tail)) + head, tail


# --- Decoding -----------------------------------------------------------------


class FrameDecoder:
    """Turns a byte stream into frames, however the stream was split into reads.

    Feed it whatever the socket returned; it returns every complete frame in
    one pass over the buffer (the hot path: one length read, one C-level
    msgpack call and one tuple per frame) and keeps the incomplete tail.

    A malformed frame does not raise out of `feed`: the frames before it are
    returned, and `error` is set. The stream cannot be trusted past that
    point, so feeding again raises the same error.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.error: ProtocolError | None = None
        self._buffer = bytearray()
        self._offset = 0  # stream offset of _buffer[0], for error messages

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes, max_frames: int = 0) -> list[Frame | UnknownFrame]:
        """Every complete frame so far (at most `max_frames` when that is > 0; the
        rest stays buffered for the next call, which may pass b"")."""
        if self.error is not None:
            raise self.error
        buffer = self._buffer
        buffer += data
        frames: list[Frame | UnknownFrame] = []
        position = 0
        available = len(buffer)
        with memoryview(buffer) as view:
            while available - position >= LENGTH_PREFIX_BYTES:
                if max_frames and len(frames) >= max_frames:
                    break
                (size,) = _unpack_length(buffer, position)
                if not 0 < size <= self.max_frame_bytes:
                    self.error = self._bad_length(size, position)
                    break
                end = position + LENGTH_PREFIX_BYTES + size
                if end > available:
                    break  # incomplete: wait for more bytes
                try:
                    frame = self._frame(view[position + LENGTH_PREFIX_BYTES : end])
                    if type(frame) is list:
                        frames += frame  # PUBM, MSGM: what one frame per run would be
                    else:
                        frames.append(frame)  # type: ignore[arg-type]
                except ProtocolError as exc:
                    exc.args = (f"{exc} (frame at stream offset {self._offset + position:,})",)
                    # Its traceback and context hold views of the buffer, which could then
                    # not be resized: the error keeps its message, not its frames.
                    exc.__context__ = None
                    self.error = exc.with_traceback(None)
                    break
                position = end
        del buffer[:position]
        self._offset += position
        return frames

    def _bad_length(self, size: int, position: int) -> ProtocolError:
        where = f"at stream offset {self._offset + position:,}"
        if size == 0:
            return ProtocolError(f"empty frame (length 0) {where}", code="bad_frame")
        hint = ""
        if self._offset + position == 0:
            hint = " (is the peer speaking the slipstream protocol? see docs/protocol.md)"
        return ProtocolError(
            f"frame of {size:,} bytes {where} exceeds max-frame {self.max_frame_bytes:,}{hint}",
            code="frame_too_large",
        )

    @staticmethod
    def _frame(body: memoryview) -> Frame | UnknownFrame | list[Frame]:
        try:
            fields = msgpack.unpackb(body)
        except Exception as exc:  # msgpack raises several unrelated types
            raise ProtocolError(
                f"frame body of {len(body):,} bytes is not one msgpack value: {exc}",
                code="bad_frame",
            ) from None
        if type(fields) is list and fields and fields[0] in _RUNS:
            return split_runs(fields)
        return parse_fields(fields)


def parse_fields(fields: Any) -> Frame | UnknownFrame:
    """Check a decoded body against the schema and build its frame tuple."""
    if not isinstance(fields, list) or not fields or type(fields[0]) is not int:
        raise ProtocolError(
            f"frame body must be an array starting with an integer type, got {_describe(fields)}",
            code="bad_frame",
        )
    type_code = fields[0]
    schema = _SCHEMA.get(type_code)
    if schema is None:
        return UnknownFrame(type_code, fields[1:])
    cls, checks = schema
    values = fields[1:]
    optional = _OPTIONAL_TAIL.get(type_code, 0)
    if optional and len(checks) - optional <= len(values) < len(checks):
        values = values + [None] * (len(checks) - len(values))
    if len(values) != len(checks):
        raise ProtocolError(
            f"{cls.__name__} frame needs {len(checks)} fields "
            f"({', '.join(cls._fields)}), got {len(values)}",
            code="bad_frame",
        )
    for name, check, value in zip(cls._fields, checks, values, strict=True):
        if not check(value):
            raise ProtocolError(
                f"{cls.__name__} field {name!r} has a bad value: {_describe(value)}",
                code="bad_frame",
            )
    frame: Frame = cls(*values)
    if type(frame) is Deliver and len(frame.timestamps_us) != len(frame.payloads):
        raise ProtocolError("MSG frame has a different number of timestamps and payloads",
                            code="bad_frame")
    return frame


_RUNS = (FrameType.PUBM, FrameType.MSGM)


def split_runs(fields: list[Any]) -> list[Frame]:
    """PUBM -> one Publish per run; MSGM -> one Deliver per run (each checked as if it had
    come in a frame of its own)."""
    type_code = fields[0]
    name, wanted = ("PUBM", 1) if type_code == FrameType.PUBM else ("MSGM", 2)
    if len(fields) != wanted + 1 or type(fields[-1]) is not list or not fields[-1]:
        raise ProtocolError(f"{name} frame needs {wanted} fields ending in a non-empty array "
                            f"of runs, got {_describe(fields[1:])}", code="bad_frame")
    runs = fields[-1]
    frames: list[Frame] = []
    sid = fields[1]
    for number, run in enumerate(runs, 1):
        if type(run) is not list:
            raise ProtocolError(f"{name} run {number} of {len(runs)} must be an array, got "
                                f"{_describe(run)}", code="bad_frame")
        # The hot path (with many topics a run may hold a few messages): the checks of
        # the schema inline; anything off goes through parse_fields, which says what.
        if type_code == FrameType.PUBM:
            if len(run) == 2 and type(run[0]) is str and _bytes_list(run[1]):
                frames.append(Publish(run[0], run[1], None))
                continue
            frame = _parse_run(name, number, len(runs), "topic str, payloads array of bin",
                               run, [int(FrameType.PUB), *run, None], 2)
        else:
            if (len(run) == 4 and type(run[0]) is str and type(run[1]) is int
                    and type(sid) is int and _int_list(run[2]) and _bytes_list(run[3])
                    and len(run[2]) == len(run[3])):
                frames.append(Deliver(sid, run[0], run[1], run[2], run[3]))
                continue
            frame = _parse_run(name, number, len(runs), "topic str, first_seq int, "
                               "timestamps_us array of int, payloads array of bin",
                               run, [int(FrameType.MSG), sid, *run], 4)
        frames.append(frame)  # type: ignore[arg-type]  # known types: never UnknownFrame
    return frames


def _parse_run(name: str, number: int, runs: int, shape: str, run: list[Any],
               fields: list[Any], wanted: int) -> Frame | UnknownFrame:
    """A run off the fast path: checked by the schema of the frame it stands for, and
    any error said in the run's own terms."""
    if len(run) != wanted:
        raise ProtocolError(f"{name} run {number} of {runs} needs {wanted} fields ({shape}), "
                            f"got {len(run)}", code="bad_frame")
    try:
        return parse_fields(fields)
    except ProtocolError as exc:
        message = str(exc)
        detail = ("field " + message.split(" field ", 1)[1] if " field " in message
                  else message.replace("MSG frame has", "it has"))
        raise ProtocolError(f"{name} run {number} of {runs}: {detail}",
                            code="bad_frame") from None


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
