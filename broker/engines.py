"""Which engine an address names: the factory behind `Client(address)`.

    HOST:PORT, slipstream://HOST:PORT   slipstream's own broker (broker/embedded/)
    tls://HOST:PORT                     the same over TLS
    nats://HOST:PORT[,HOST:PORT...]     a NATS JetStream cluster (broker/jetstream/)

The interface (broker/client.py) imports no engine: `Client.__new__` asks
here, and an engine is imported only when an address names it (so NATS
support stays optional). Options that only one engine has (`stream` and
`max_in_flight` for NATS, `max_buffered_bytes` for the embedded broker) are
that engine's constructor's own; given for the other engine they are a
ConfigError that says whose they are.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from broker.errors import ConfigError

if TYPE_CHECKING:
    from broker.client import Client


def engine_for(address: str, options: dict[str, Any]) -> type[Client]:
    """The client class for `address`; ConfigError if it cannot be used with `options`."""
    from broker.client import is_nats

    engine: type[Client]
    if is_nats(address):
        try:
            from broker.jetstream.client import JetStreamClient
        except ImportError as exc:
            raise ConfigError(f"{address!r} needs NATS support, which is not installed "
                              f"({exc}): pip install 'slipstream[nats]'") from None
        engine, other = JetStreamClient, "the embedded broker's (HOST:PORT)"
    else:
        from broker.embedded.client import EmbeddedClient

        engine, other = EmbeddedClient, "NATS's (nats://...)"
    accepted = inspect.signature(engine.__init__).parameters
    for name in options:
        if name not in accepted:
            raise ConfigError(f"client option {name!r} is not one of {address!r}'s engine "
                              f"({engine.__name__}); it may be {other}")
    return engine
