"""The asyncio client every producer and consumer uses, whichever engine is behind it.

    async with Client("127.0.0.1:20778", name="my-tool") as client:
        await client.publish("demo.hello", {"n": 1})
        async for message in await client.subscribe("demo.>"):
            print(message.topic, message.seq, message.data)

The address picks the engine: `HOST:PORT` or `slipstream://HOST:PORT` is
slipstream's own broker (broker/embedded/client.py), `tls://HOST:PORT` the
same over TLS (broker/tls.py); `nats://HOST:PORT`, or
several of them comma-separated, is a NATS JetStream cluster
(broker/jetstream/). `Client(address)` returns the right one (the factory is
broker/engines.py: this module imports no engine); both keep this interface,
so producers and consumers never ask which it is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import msgpack

from broker.errors import BrokerError, ConfigError
from broker.subscription import Batch, Message, Start, Subscription
from broker.tls import TlsFiles
from broker.wire import protocol as p

__all__ = ["BROKER_ENV", "DEFAULT_BROKER", "DEFAULT_STREAM", "PASSWORD_ENV", "STREAM_ENV",
           "TOKEN_ENV", "USER_ENV", "Batch",
           "Client", "Message", "Subscription", "check_address", "is_nats", "parse_address"]

DEFAULT_BROKER = f"127.0.0.1:{p.DEFAULT_PORT}"
BROKER_ENV = "SLIPSTREAM_BROKER"
TOKEN_ENV = "SLIPSTREAM_TOKEN"
USER_ENV, PASSWORD_ENV = "SLIPSTREAM_USER", "SLIPSTREAM_PASSWORD"
STREAM_ENV = "SLIPSTREAM_STREAM"
DEFAULT_STREAM = "SLIPSTREAM"  # the JetStream stream that holds the topics
EMBEDDED_SCHEME = "slipstream://"
TLS_SCHEME = "tls://"  # the embedded broker over TLS (broker/tls.py)
NATS_SCHEMES = ("nats://",)


def is_nats(address: str) -> bool:
    """Whether `address` names a NATS server or cluster rather than the embedded broker."""
    return address.strip().lower().startswith(NATS_SCHEMES)


def uses_tls(address: str) -> bool:
    """Whether `address` is the embedded broker over TLS (tls://HOST:PORT)."""
    return address.strip().lower().startswith(TLS_SCHEME)


def parse_address(text: str) -> tuple[str, int]:
    """Embedded broker: 'HOST:PORT' (or 'slipstream://HOST:PORT', 'tls://HOST:PORT',
    ':PORT', 'PORT' or 'HOST') -> (host, port); ConfigError if malformed."""
    if is_nats(text):
        raise ConfigError(f"{text!r} is a NATS address, not the embedded broker's HOST:PORT")
    for scheme in (EMBEDDED_SCHEME, TLS_SCHEME):
        if text.lower().startswith(scheme):
            text = text[len(scheme):]
    if "," in text or "://" in text:
        raise ConfigError(f"address {text!r} is not HOST:PORT (a list of seeds, or a scheme "
                          "other than slipstream:// or tls://, is for NATS: "
                          "nats://HOST:PORT,...)")
    host, sep, port_text = text.rpartition(":")
    if not sep:
        # A bare number is a port on this machine (no host name is all digits).
        host, port_text = ("", text) if text.strip().isdigit() else (text, str(p.DEFAULT_PORT))
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"address {text!r} is not HOST:PORT") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} in {text!r} is outside 0..65535")
    return host, port


def check_address(text: str) -> None:
    """ConfigError unless `text` is a usable address for one of the engines."""
    if is_nats(text):
        from broker.jetstream.address import parse_servers

        parse_servers(text)
    else:
        parse_address(text)


class Client:
    """A connection to a broker that survives the broker going away and coming back.

    `Client(address, ...)` returns the engine's own client (a subclass of this);
    what follows is the interface they share.
    """

    def __new__(cls, broker: str | None = None, **options: Any) -> Client:
        if cls is Client:  # the factory picks the engine (and imports only that one)
            from broker.engines import engine_for

            cls = engine_for(broker or os.environ.get(BROKER_ENV) or DEFAULT_BROKER, options)
        return super().__new__(cls)

    def __init__(self, broker: str | None = None, *, name: str = "slipstream-client",
                 token: str | None = None, reconnect: bool = True,
                 connect_timeout_s: float = 5.0, reconnect_max_delay_s: float = 2.0,
                 tls: TlsFiles | None = None, user: str | None = None,
                 password: str | None = None) -> None:
        self.address = broker or os.environ.get(BROKER_ENV) or DEFAULT_BROKER
        self.name = name
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        # A user of the broker's --users file (docs/security.md), and its password.
        self.user = user if user is not None else os.environ.get(USER_ENV) or None
        self.password = password if password is not None else os.environ.get(PASSWORD_ENV)
        self.tls = tls if tls is not None else TlsFiles.from_env()  # CA, client cert, key
        self.reconnect = reconnect
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_max_delay_s = reconnect_max_delay_s
        self.epoch = 0  # identifies what numbers the messages: a broker run, a JetStream stream
        self.generation = 0  # changes when earlier deliveries can no longer be acknowledged
        self.max_payload_bytes = p.DEFAULT_MAX_FRAME_BYTES - p.FRAME_ROOM_BYTES
        self.published = 0
        self.reconnects = 0
        self.errors: list[BrokerError] = []  # non-fatal errors the broker reported

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """Whether a connection to the broker is up right now."""
        raise NotImplementedError

    async def connect(self, wait: bool = False) -> None:
        """Connect: once, failing fast, or with `wait` until the broker is up (backing off).

        After that, losses are handled by reconnecting.
        """
        raise NotImplementedError

    async def close(self) -> None:
        """Send what is queued, acknowledge what was finished, and disconnect."""
        raise NotImplementedError

    async def publish(self, topic: str, data: Any, *, confirm: bool = False) -> int | None:
        """Publish `data` (anything msgpack can encode) to `topic`.

        Returns at once (the message is queued and sent soon), waiting only
        when too much is in flight. With `confirm=True` it waits until the
        broker has stored the message and returns its seq.
        """
        return await self.publish_bytes(topic, msgpack.packb(data), confirm=confirm)

    async def publish_bytes(self, topic: str, payload: bytes, *,
                            confirm: bool = False) -> int | None:
        """Publish an already-encoded payload; the broker forwards these exact bytes."""
        raise NotImplementedError

    async def publish_batch(self, topic: str, payloads: Sequence[bytes]) -> None:
        """Publish already-encoded payloads to one topic, in order, without confirmation:
        for a producer that has several at once (an engine may make it cheaper than
        one `publish_bytes` each; the embedded client does)."""
        for payload in payloads:
            await self.publish_bytes(topic, payload)

    async def flush(self) -> None:
        """Wait until the broker has stored everything published so far, on either engine
        (embedded: a PING behind the PUBs, answered once they are stored; NATS: until
        JetStream confirmed each). Publishing does not wait for this; call it before
        stopping, or before telling someone else the messages are there."""
        raise NotImplementedError

    async def subscribe(self, pattern: str, *, start: Start = "new", durable: str | None = None,
                        window: int = 8192, auto_ack: bool = True) -> Subscription:
        """Subscribe and wait until the broker confirms; iterate the result for messages.

        With auto_ack (the default) a message is acknowledged once the next one
        is asked for; without, call `Subscription.ack` when it is safe to.
        """
        raise NotImplementedError

    async def stats(self, **options: Any) -> dict[str, Any]:
        """One page of the broker's statistics."""
        raise NotImplementedError

    async def stats_all(self, topics: str | None = None,
                        connections: bool = True) -> dict[str, Any]:
        """Every page of the statistics, merged."""
        raise NotImplementedError

    async def ping(self) -> float:
        """Round-trip time to the broker, in seconds."""
        raise NotImplementedError
