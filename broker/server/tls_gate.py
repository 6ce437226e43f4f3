"""TLS under the broker's caps: a connection counts from `accept`, not from the end of its
TLS handshake.

With `create_server(ssl=...)` the TLS handshake runs before the broker hears
of the connection, so stalled handshakes escaped --max-connections and
--max-handshakes (12,000 of them held 600 MB). The broker now listens in
plain TCP and gives each accepted socket a `TlsGate`: the standard library's
TLS protocol (asyncio.sslproto, what `create_server(ssl=...)` itself uses),
which first takes a connection and a handshake slot (the oldest silent
handshake is dropped when the slots are full, as for HELLO:
broker/server/core.py). The handshake runs under --handshake-timeout; once it
is done the broker's own protocol is connected, and HELLO is next.

Why not `loop.start_tls` on an accepted socket: uvloop starts reading right
after `connection_made`, so a ClientHello could reach the socket before the
TLS protocol took it over, and the handshake stalled (about 1 in 3 here).
"""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto
from typing import Any, Protocol, cast


class Gatekeeper(Protocol):
    """What a gate needs of the broker (broker/server/server.py's Broker)."""

    def gate_started(self, gate: Any) -> bool: ...  # False: refused, close it at once
    def gate_ended(self, gate: Any) -> None: ...  # handshake done, failed, or dropped


class TlsGate(sslproto.SSLProtocol):
    """One accepted socket: its TLS, counted from the start; then `app`'s connection."""

    def __init__(self, keeper: Gatekeeper, context: ssl.SSLContext, timeout_s: float,
                 app: asyncio.BaseProtocol) -> None:
        super().__init__(asyncio.get_running_loop(), app, context,
                         None,  # type: ignore[arg-type]  # no waiter: none is needed
                         server_side=True,
                         ssl_handshake_timeout=timeout_s)  # type: ignore[arg-type]  # a float
        self.keeper = keeper
        self.address = "(gone)"
        self.peer = "(gone)"
        self._raw: asyncio.Transport | None = None
        self._counted = False
        self._spoke = False  # a ClientHello (any byte) came

    def said_something(self) -> bool:
        """In the handshake table's terms: a socket that has sent no byte of TLS is the
        first to go when the slots are full; one whose ClientHello came is a client
        mid-handshake, kept over the silent ones however many arrive after it."""
        return self._spoke

    def buffer_updated(self, nbytes: int) -> None:
        if nbytes:
            self._spoke = True
        super().buffer_updated(nbytes)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        if peer:
            self.address, self.peer = str(peer[0]), f"{peer[0]}:{peer[1]}"
        if not self.keeper.gate_started(self):
            self._raw.abort()  # over --max-connections: a TLS client cannot read an ERROR
            return
        self._counted = True
        super().connection_made(transport)

    def handshake_done(self) -> None:
        """The broker's protocol is connected: the slot is free (called by it)."""
        self._end()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._end()  # failed, timed out, dropped, or a connection that ran and ended
        super().connection_lost(exc)

    def drop(self) -> None:
        """Make room: close at once."""
        if self._raw is not None:
            self._raw.abort()

    def _end(self) -> None:
        if self._counted:
            self._counted = False
            self.keeper.gate_ended(self)
