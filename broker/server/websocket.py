"""The broker's protocol over WebSocket (`--ws HOST:PORT`): the same frames, one per binary
message, for browsers, which cannot open a TCP socket.

A `WebSocketGate` sits between an accepted socket (or its TLS, for wss://) and
the broker's usual protocol, as `TlsGate` does for TLS: the `websockets`
library's sans-I/O `ServerProtocol` does the WebSocket part (the HTTP upgrade,
framing, masking, ping, close), and the broker's own `Connection` and
`Session` run on top unchanged, so credit, acknowledgement, limits, users and
permissions are exactly those of TCP. What is WebSocket's own:

- The upgrade is counted from accept, under --max-connections and a handshake
  slot, and must finish within --handshake-timeout.
- A page from another site may not connect: a request with an `Origin` header
  (every browser sends one) is refused with 403 unless --ws-allow-origin names
  that origin (or is `*`). Programs that send no Origin (Node, scripts) are not
  browsers, and are let through to the broker's own checks.
- Broker to client: one protocol frame per binary message. Client to broker:
  the bytes of binary messages, in order, are the frame stream (a message may
  hold several frames, and a frame may span messages, as on TCP). A message is
  at most --max-frame-bytes + 4 (the largest frame and its length); a larger one
  closes the connection with 1009. A text message closes it with 1003: frames are
  bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol, cast

from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from broker.wire import protocol as p

log = logging.getLogger("slipstream.broker")
# The library's own log: its per-connection INFO lines ("connection open") say nothing the
# broker's do not, so only its warnings and errors are kept.
_library_log = logging.getLogger("slipstream.broker.websocket")
_library_log.setLevel(logging.WARNING)
_ORIGINS_SAID: set[str] = set()  # refused origins logged once each (bounded below)


class Gatekeeper(Protocol):
    """What a gate needs of the broker (broker/server/server.py's Broker)."""

    def gate_started(self, gate: Any) -> bool: ...  # False: refused, close it at once
    def gate_ended(self, gate: Any) -> None: ...  # handshake done, failed, or dropped


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """May a request with this Origin header connect? None (not a browser) may."""
    if origin is None:
        return True
    return "*" in allowed or origin.lower().rstrip("/") in allowed


class WebSocketGate(asyncio.Protocol):
    """One accepted socket: its WebSocket upgrade, counted from the start; then `app`'s
    connection, which reads and writes the protocol's byte stream as on TCP."""

    def __init__(self, keeper: Gatekeeper, app: asyncio.Protocol, allowed: tuple[str, ...],
                 max_frame_bytes: int, timeout_s: float) -> None:
        self.keeper = keeper
        self.app = app
        self.allowed = tuple(origin.lower().rstrip("/") for origin in allowed)
        self.timeout_s = timeout_s
        self.ws = ServerProtocol(max_size=max_frame_bytes + p.LENGTH_PREFIX_BYTES,
                                 logger=_library_log)
        self.address = "(gone)"
        self.peer = "(gone)"
        self._raw: asyncio.Transport | None = None
        self._counted = False
        self._spoke = False
        self._open = False  # upgraded: the app is connected
        self._text = False  # the message in progress is a text one
        self._timer: asyncio.TimerHandle | None = None
        self.transport = WebSocketTransport(self)
        self.on_connected: Callable[[], None] | None = None  # wss: the TLS handshake is done

    # --- the handshake table's view (as TlsGate's) -------------------------------------

    def said_something(self) -> bool:
        return self._spoke

    def drop(self) -> None:
        if self._raw is not None:
            self._raw.abort()

    # --- from the socket ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.on_connected is not None:
            self.on_connected()  # under TLS: its slot is free, the upgrade takes one now
        self._raw = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.address, self.peer = str(peer[0]), f"{peer[0]}:{peer[1]}"
        if not self.keeper.gate_started(self):
            self._raw.abort()  # over --max-connections
            return
        self._counted = True
        self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self._late)

    def data_received(self, data: bytes) -> None:
        self._spoke = True
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Request):
                self._upgrade(event)
            elif not isinstance(event, Frame):
                continue
            elif event.opcode is Opcode.TEXT or (event.opcode is Opcode.CONT and self._text):
                self._text = True
                self.ws.fail(CloseCode.UNSUPPORTED_DATA, "text messages are not slipstream "
                             "frames: send each frame as a binary message")
            elif event.opcode in (Opcode.BINARY, Opcode.CONT) and self._open:
                self.app.data_received(bytes(event.data))
        self._send_pending()
        if self.ws.close_expected() and self._raw is not None and not self._raw.is_closing():
            # A close frame went either way (a client's close, a text frame, a message over
            # the limit): the protocol's stream ended.
            self._raw.close()

    def _upgrade(self, request: Request) -> None:
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, self.allowed):
            if origin not in _ORIGINS_SAID and len(_ORIGINS_SAID) < 100:
                _ORIGINS_SAID.add(str(origin))
                log.warning("refusing WebSockets from pages of %r (from %s on): not in "
                            "--ws-allow-origin", origin, self.peer)
            response = self.ws.reject(403, f"Origin {origin!r} may not connect: start the "
                                           f"broker with --ws-allow-origin {origin} to let "
                                           "its pages in\n")
        else:
            response = self.ws.accept(request)
        self.ws.send_response(response)
        self._send_pending()
        if response.status_code != 101:
            self._end()
            if self._raw is not None:
                self._raw.close()
            return
        self._open = True
        self._end()  # the slot is free: the broker's HELLO handshake is next, counted there
        self.app.connection_made(self.transport)

    def _late(self) -> None:
        if not self._open and self._raw is not None:
            self._raw.abort()  # the upgrade did not finish in time

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._send_pending()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        if self._open:
            self._open = False
            self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._open:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self._open:
            self.app.resume_writing()

    # --- to the socket -----------------------------------------------------------------

    def _send_pending(self) -> None:
        out = self.ws.data_to_send()
        if out and self._raw is not None and not self._raw.is_closing():
            self._raw.writelines([chunk for chunk in out if chunk])

    def _end(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted:
            self._counted = False
            self.keeper.gate_ended(self)


class WebSocketTransport(asyncio.Transport):
    """What the broker's connection writes to: each protocol frame becomes one binary
    message; the rest (buffer size, flow control, peer) is the socket's."""

    def __init__(self, gate: WebSocketGate) -> None:
        super().__init__()
        self.gate = gate
        self._partial = b""  # the start of a frame whose end has not been written yet

    def write(self, data: bytes | bytearray | memoryview) -> None:
        buffer = self._partial + bytes(data)
        offset = 0
        ws = self.gate.ws
        while len(buffer) - offset >= p.LENGTH_PREFIX_BYTES:
            end = offset + p.LENGTH_PREFIX_BYTES + int.from_bytes(
                buffer[offset:offset + p.LENGTH_PREFIX_BYTES], "big")
            if end > len(buffer):
                break
            ws.send_binary(buffer[offset:end])
            offset = end
        self._partial = buffer[offset:]
        self.gate._send_pending()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def get_write_buffer_size(self) -> int:
        raw = self.gate._raw
        return raw.get_write_buffer_size() if raw is not None else 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        raw = self.gate._raw
        return raw.get_extra_info(name, default) if raw is not None else default

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.gate.app

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.gate.app = cast(asyncio.Protocol, protocol)

    def is_closing(self) -> bool:
        raw = self.gate._raw
        return raw is None or raw.is_closing()

    def close(self) -> None:
        """A normal close: the close frame, then the socket (once it is written)."""
        ws, raw = self.gate.ws, self.gate._raw
        if raw is None or raw.is_closing():
            return
        if not ws.close_expected():
            ws.send_close(CloseCode.NORMAL_CLOSURE)
            self.gate._send_pending()
        raw.close()

    def abort(self) -> None:
        if self.gate._raw is not None:
            self.gate._raw.abort()

    def can_write_eof(self) -> bool:
        return False  # a WebSocket has no half-close: the close frame ends it

    def pause_reading(self) -> None:
        if self.gate._raw is not None:
            self.gate._raw.pause_reading()

    def resume_reading(self) -> None:
        if self.gate._raw is not None:
            self.gate._raw.resume_reading()

    def is_reading(self) -> bool:
        raw = self.gate._raw
        return raw is not None and raw.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self.gate._raw is not None:
            self.gate._raw.set_write_buffer_limits(high, low)

