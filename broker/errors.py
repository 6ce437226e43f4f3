"""The exceptions slipstream raises: one hierarchy shared by broker and clients.

Every message says what went wrong, where, and what was expected, so that a
user reading a log line knows what to change.
"""

from __future__ import annotations


class SlipstreamError(Exception):
    """Base class of every error slipstream raises on purpose."""


class ProtocolError(SlipstreamError):
    """The peer sent bytes that break docs/protocol.md.

    `code` is the machine-readable error code that goes into an ERROR frame.
    """

    def __init__(self, message: str, code: str = "protocol") -> None:
        super().__init__(message)
        self.code = code


class ConfigError(SlipstreamError):
    """A command-line flag, environment variable or file has a bad value."""


class ConnectError(SlipstreamError):
    """The broker could not be reached at all."""


class HandshakeRefusedError(SlipstreamError):
    """The broker answered, but refused our HELLO (bad token, wrong version)."""


class ConnectionLostError(SlipstreamError):
    """The connection to the broker ended while something was waiting on it."""


class ConnectionStateError(SlipstreamError):
    """This side asked its connection for something its state forbids (sending once it
    is closed, acknowledging more than was delivered): a bug in the caller, not the peer."""


class BrokerError(SlipstreamError):
    """The broker answered a request with an ERROR frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"broker error [{code}]: {message}")
        self.code = code
        self.text = message


class StorageError(SlipstreamError):
    """A topic's files on disk cannot be read or written as docs/storage.md describes."""
