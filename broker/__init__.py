"""slipstream's broker, and the protocol and client that every part shares."""

from broker.client import Batch, Client, Message, Subscription
from broker.errors import (
    BrokerError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    HandshakeRefusedError,
    ProtocolError,
    SlipstreamError,
)
from broker.wire.protocol import Gap

__all__ = [
    "Batch", "BrokerError", "Client", "ConfigError", "ConnectError", "ConnectionLostError", "Gap",
    "HandshakeRefusedError", "Message", "ProtocolError", "SlipstreamError", "Subscription",
]
